import sys

from unet_dist.cli import main

sys.exit(main())
