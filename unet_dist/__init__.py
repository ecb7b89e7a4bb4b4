"""unet-dist: distributed U-Net segmentation training on Ray."""

__version__ = "0.1.0"
