"""`unet-dist predict`: masks (and overlays) for a folder or s3:// prefix of new images.

Segments every image under IMAGES (folder, s3:// prefix or one file; PNG/JPEG/TIFF, 8/16-bit, gray/RGB, any size)
with MODEL (a checkpoint, an exported model folder or STORE/champion) and writes OUT/<same relative name>.png: 0/255
for two-class models, class ids (palette PNG) for more. Large images are cut into overlapping tiles blended with a
smooth window; a tile at least as large as the image gives exactly evaluate's prediction. Unreadable or unusable
images are skipped and named; exit 1 if any was.
"""

from __future__ import annotations

import argparse
from typing import Any

from unet_dist.cli.common import (ADDRESS_HELP, add_command, config_flags, console, emit, err_console, flag_overrides,
                                  json_flag, print_fields, warn)
from unet_dist.config import load_config


def add_parser(sub: Any) -> None:
    p = add_command(sub, "predict", run, __doc__)
    p.add_argument("model", metavar="CHECKPOINT_OR_MODEL", help="checkpoint folder/state file, exported model or STORE/champion")
    p.add_argument("images", help="folder, s3:// prefix or single image file")
    p.add_argument("out", help="where masks go (local path or s3://)")
    p.add_argument("--tile", type=int, help="tile side in pixels (default 256; >= the image: one whole-image pass)")
    p.add_argument("--overlap", type=float, help="fraction of a tile shared with each neighbour (default 0.25)")
    p.add_argument("--tta", action="store_true", help="average the identity, h-, v- and hv-flipped predictions")
    p.add_argument("--overlay", action="store_true", help="also write OUT/overlays/<name>.png: the image with classes tinted")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default 4)")
    p.add_argument("--ray", action="store_true", help="run as a Ray Data job: one model per actor, GPUs when present")
    p.add_argument("--workers", type=int, help="with --ray: most actors (default one per GPU, else per --threads CPUs)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own), or CPUs and threads per actor with --ray (default 1)")
    p.add_argument("--address", help=f"with --ray: {ADDRESS_HELP}")
    json_flag(p)
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from unet_dist.collect.predict import predict
    from unet_dist.inference.tiles import Tiling

    cfg = load_config(args.config, [*args.overrides, *flag_overrides(args, {"address": "resources.address"})])
    tiling = Tiling(**{k: v for k, v in (("tile", args.tile), ("overlap", args.overlap), ("batch_size", args.batch_size))
                       if v is not None}, tta=args.tta)
    summary = predict(args.model, args.images, args.out, tiling=tiling, overlay=args.overlay, use_ray=args.ray,
                      workers=args.workers, threads=args.threads, storage=cfg.storage, resources=cfg.resources,
                      progress=not args.json, console=err_console)
    if args.json:
        emit(summary.to_json())
    else:
        console.print(summary.headline(), highlight=False, soft_wrap=True)
        print_fields(summary.fields())
    warn([f"{item['image']}: {item['reason']}" for item in summary.skipped], "[yellow]skipped[/]")
    return 1 if summary.skipped else 0
