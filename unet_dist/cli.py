"""`unet-dist` command line: parse, build a Config, call one function, print.

Every subcommand is a thin wrapper; the behaviour lives in models/, data/, train/ so the same
function serves the CLI, ``jobs/`` and tests. User errors print as one line (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from rich.console import Console
from rich.table import Table

from unet_dist.config import Config, load_config
from unet_dist.errors import UserError

console = Console(stderr=False)
err_console = Console(stderr=True)

EPILOG = """\
Configs: every command that takes --config also takes any number of --set KEY=VALUE overrides
(e.g. --set model.backbone=resnet34 --set train.epochs=30). `unet-dist config` prints the result.
Storage URIs: a local path, file://PATH or s3://BUCKET/PREFIX (endpoint and credentials from
AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the storage section, never the URI).
"""


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="YAML", help="config file (examples in jobs/configs/)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set model.depth=5 (repeatable)")


def _load(args: argparse.Namespace, extra: Sequence[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Config from --config and --set, with command-line flags applied last (validation includes the registries)."""
    return load_config(args.config, [*args.overrides, *extra], base=base)


def _flag_overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    return [f"{key}={json.dumps(v) if isinstance(v, (list, tuple)) else v}"
            for attr, key in mapping.items() if (v := getattr(args, attr, None)) is not None]


def cmd_models(args: argparse.Namespace) -> int:
    from unet_dist.models import registry_info, smoke_variants

    info = registry_info()
    if args.smoke:
        rows = smoke_variants()
        if args.json:
            print(json.dumps([dict(r) if not hasattr(r, "_asdict") else r._asdict() for r in rows], default=str))
            return 0
        table = Table(title="U-Net variants: one forward/backward pass on CPU")
        for col in ("backbone", "pooling", "unpooling", "params", "output", "seconds"):
            table.add_column(col, justify="right" if col in ("params", "seconds") else "left")
        for r in rows:
            r = r._asdict() if hasattr(r, "_asdict") else dict(r)
            table.add_row(str(r["backbone"]), str(r["pooling"]), str(r["unpooling"]), f"{r['params']:,}",
                          "×".join(str(s) for s in r["output_shape"]), f"{r['seconds']:.2f}")
        console.print(table)
        console.print(f"[green]{len(rows)} variants built and ran forward + backward.[/]")
        return 0
    if args.json:
        print(json.dumps(info))
        return 0
    table = Table(title="unet-dist model registry")
    table.add_column("option")
    table.add_column("choices")
    for key, values in info.items():
        table.add_row(key, ", ".join(values))
    console.print(table)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    if args.reference:
        from unet_dist.config import config_reference

        print(config_reference())
        return 0
    cfg = _load(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_synthetic(args: argparse.Namespace) -> int:
    from unet_dist.data.synthetic import generate

    generate(args.dest, n=args.n, size=args.size, mode=args.mode, seed=args.seed, channels=args.channels)
    console.print(f"[green]wrote {args.n} synthetic {args.mode} image/mask pairs to {args.dest}[/]")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from unet_dist.data.ingest import ingest

    cfg = load_config(args.config, [*args.overrides, *_flag_overrides(args, {
        "mask_mode": "ingest.mask_mode", "classes": "ingest.class_names", "split": "ingest.split",
        "split_column": "ingest.split_column", "seed": "ingest.seed", "rows_per_shard": "ingest.rows_per_shard",
    }), *(["ingest.skip_invalid=true"] if args.skip_invalid else [])])
    manifest = ingest(args.src, args.dest, cfg.ingest, cfg.storage, progress=not args.json, console=err_console, results=console)
    if args.json:
        print(json.dumps({"dataset": args.dest, "counts": manifest.get("counts"), "fingerprint": manifest.get("fingerprint")}))
    return 0


def _train_overrides(args: argparse.Namespace) -> list[str]:
    return _flag_overrides(args, {
        "data": "data.dataset", "storage": "storage.uri", "address": "resources.address",
        "workers": "resources.num_workers", "epochs": "train.epochs", "resume_from": "train.resume_from",
        "name": "train.name",
    })


def cmd_train(args: argparse.Namespace) -> int:
    from unet_dist.train import fit

    cfg = _load(args, _train_overrides(args))
    if not cfg.data.dataset:
        raise UserError("data.dataset is empty: pass --data URI of an ingested dataset (see `unet-dist ingest`), "
                        "or run `unet-dist demo` for the synthetic demo")
    summary = fit(cfg, progress=not args.json, verbose=args.verbose)
    _print_summary(summary, args.json)
    return 0


SUMMARY_FIELDS = ("run_dir", "epochs", "best_metric", "best_val_iou", "best_epoch", "best_checkpoint", "metrics_file",
                  "tensorboard_dir", "duration_s")


def _print_summary(summary: Any, as_json: bool) -> None:
    """One JSON line with --json; otherwise the fields a user looks for, paths printed whole."""
    if as_json:
        print(summary.to_json())
        return
    data = json.loads(summary.to_json())
    console.print()
    console.rule(f"[bold green]training finished[/]: {data['name']}")
    for key in SUMMARY_FIELDS:
        value = data.get(key)
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        label = f"best {data['monitor']}" if key == "best_metric" else key
        console.print(f"  [bold]{label:<18}[/] {shown}", highlight=False, soft_wrap=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from unet_dist.train.evaluate import evaluate

    cfg = load_config(args.config, [*args.overrides, *_flag_overrides(args, {"address": "resources.address"})])
    out = evaluate(args.checkpoint, split=args.split, dataset=args.data, storage=cfg.storage, address=cfg.resources.address)
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    console.print(f"[bold]{args.checkpoint}[/] (epoch {out.get('epoch')}) on the {args.split} split", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Dice", justify="right")
    for name, iou in out["per_class_iou"].items():
        dice = out["per_class_dice"][name]
        table.add_row(name, "-" if iou is None else f"{iou:.4f}", "-" if dice is None else f"{dice:.4f}")
    table.add_row("[bold]mean[/]", f"{out['mean_iou']:.4f}", f"{out['mean_dice']:.4f}")
    console.print(table)
    console.print(f"foreground IoU {out['iou']:.4f} · pixel accuracy {out['pixel_acc']:.4f} · loss {out['loss']:.4f}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from unet_dist.tune import run_campaign

    cfg = _load(args, _flag_overrides(args, {"data": "data.dataset", "storage": "storage.uri", "address": "resources.address",
                                             "name": "tune.name"}))
    summary = run_campaign(cfg, resume=args.resume, progress=not args.json, verbose=args.verbose)
    print_campaign(summary, cfg, args.json)
    return 0


def print_campaign(summary: Any, cfg: Config, as_json: bool) -> None:
    """The top-N trials, the best trial and its best checkpoint; one JSON line with --json."""
    from unet_dist.tune.campaign import trials_table

    if as_json:
        print(summary.to_json())
        return
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    console.print()
    console.print(trials_table(summary.trials, list(cfg.tune.search_space), summary.metric,
                               title=f"top {cfg.tune.top} of {len(summary.trials)} trials ({counts})", limit=cfg.tune.top))
    console.rule(f"[bold green]campaign {summary.status}[/]: {summary.name}")
    best = summary.best or {}
    for label, value in (("campaign", summary.uri), ("best trial", best.get("trial_id")), ("searched", best.get("params")),
                         (f"best {summary.metric}", best.get("best_value")), ("best checkpoint", best.get("best_checkpoint")),
                         ("skipped points", len(summary.skipped)), ("duration_s", summary.duration_s)):
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        console.print(f"  [bold]{label:<18}[/] {shown}", highlight=False, soft_wrap=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from unet_dist.demo import DEMO_PROFILE, run_demo

    cfg = _load(args, _train_overrides(args), base=DEMO_PROFILE)
    summary = run_demo(cfg, data=args.data_folder, workdir=args.workdir, console=err_console if args.json else console)
    print_campaign(summary, cfg, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-dist",
        description="Distributed U-Net segmentation on Ray: ingest image/mask folders, train data-parallel "
                    "with Ray Train, inspect the model registry.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('unet_dist').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str, description: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=description or help_, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(fn=fn)
        return p

    p = add("models", cmd_models, "list backbones, pooling, unpooling, activations and norms",
            "Print the model registry. --smoke builds every backbone x unpooling (x pooling) variant and runs one "
            "forward/backward pass on CPU.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--smoke", action="store_true", help="build and run every variant (a few minutes on CPU)")

    p = add("config", cmd_config, "print the resolved config (defaults <- YAML <- --set) as YAML")
    p.add_argument("--reference", action="store_true", help="print every key with type, default and meaning (Markdown)")
    _config_args(p)

    p = add("synthetic", cmd_synthetic, "write a deterministic SYNTHETIC image/mask folder (images/, masks/)")
    p.add_argument("dest", help="output folder or s3:// prefix")
    p.add_argument("--n", type=int, default=32, help="number of pairs (default 32)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--mode", choices=["binary", "multiclass"], default="binary")
    p.add_argument("--channels", type=int, choices=[1, 3], default=1)
    p.add_argument("--seed", type=int, default=0)

    p = add("ingest", cmd_ingest, "validate a folder/bucket of images+masks and write a sharded Parquet dataset",
            "SRC holds images/ and masks/ paired by file stem (or is a CSV with image,mask[,split] columns). "
            "Every pair is validated; problems are listed together and nothing is written unless --skip-invalid. "
            "The dataset appears at DEST only when complete (dataset.json is written last).")
    p.add_argument("src", help="folder, s3:// prefix or CSV manifest")
    p.add_argument("dest", help="output dataset location (local path or s3://)")
    p.add_argument("--mask-mode", choices=["binary", "multiclass", "instance"],
                   help="binary: 0/1 or 0/255; multiclass: ids 0..C-1 (palette ok); instance: id>0 is foreground")
    p.add_argument("--classes", type=lambda s: s.split(","), help="comma-separated class names, e.g. background,cell")
    p.add_argument("--split", type=lambda s: [float(x) for x in s.split(",")], help="train,val,test ratios (default 0.8,0.1,0.1)")
    p.add_argument("--split-column", help="take the split from this CSV column")
    p.add_argument("--seed", type=int, help="split seed")
    p.add_argument("--rows-per-shard", type=int, help="rows per Parquet file")
    p.add_argument("--skip-invalid", action="store_true", help="write the valid pairs, list the skipped ones in the manifest")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary instead of tables")
    _config_args(p)

    def train_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", help="where runs go: local path (default ./runs) or s3://bucket/prefix")
        p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
        p.add_argument("--workers", help="training workers, or MIN-MAX for elastic training (default 2)")
        p.add_argument("--epochs", type=int, help="epochs (default from config)")
        p.add_argument("--name", help="run name; re-using one resumes that run")
        p.add_argument("--resume-from", help="start from this checkpoint URI")
        p.add_argument("--json", action="store_true", help="print a one-line JSON summary at the end")
        p.add_argument("--verbose", action="store_true", help="show Ray's own log lines (kept in Ray's log files otherwise)")
        _config_args(p)

    p = add("train", cmd_train, "train a U-Net data-parallel with Ray Train",
            "Trains on an ingested dataset with DDP across Ray workers (GPU + NCCL when present, else CPU + gloo), "
            "writes per-epoch metrics, TensorBoard logs and checkpoints to storage, and resumes after failures.")
    p.add_argument("--data", help="URI of an ingested dataset (from `unet-dist ingest`)")
    train_flags(p)

    p = add("evaluate", cmd_evaluate, "evaluate a checkpoint on a split of an ingested dataset",
            "Recomputes per-class IoU, Dice, pixel accuracy and loss of CHECKPOINT (local or s3://) on one split, "
            "with the model and data settings stored in the checkpoint.")
    p.add_argument("checkpoint", help="checkpoint folder or state file of any name (local path or s3://)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--data", help="dataset URI (default: the one the checkpoint was trained on); images are normalised "
                                  "with the checkpoint's training statistics either way")
    p.add_argument("--address", help="Ray cluster address for reading the data (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", action="store_true", help="one JSON line")
    _config_args(p)

    p = add("tune", cmd_tune, "run (or --resume) a Ray Tune campaign over the U-Net design space",
            "Runs the campaign in --config (a base run config plus its tune: section: search_space, scheduler, "
            "num_samples, ...). Every trial is a data-parallel Ray Train run; ASHA stops poor trials early; every "
            "trial's record, metrics and checkpoints land under STORAGE/<tune.name>/trials/. A name that exists "
            "needs --resume, which continues a killed campaign: finished trials are kept, unfinished ones continue "
            "from their newest checkpoint, errored ones are retried once.")
    p.add_argument("--data", help="URI of an ingested dataset (default: data.dataset of the config)")
    p.add_argument("--storage", help="where campaigns go: local path (default ./runs) or s3://bucket/prefix")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--name", help="campaign name (tune.name)")
    p.add_argument("--resume", action="store_true", help="continue the campaign of this name from storage")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary at the end")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines (kept in Ray's log files otherwise)")
    _config_args(p)

    p = add("demo", cmd_demo, "end-to-end demo: synthetic (or --data) images -> ingest -> a small tuning campaign",
            "Runs the whole product on a local Ray: generates a SYNTHETIC data set (or uses --data FOLDER with "
            "images/ and masks/), ingests it, runs a small ASHA campaign of 2-worker Ray Train trials over "
            "backbones x unpooling methods, and prints the ranking and the best checkpoint.")
    p.add_argument("--data", dest="data_folder", help="folder with images/ and masks/ instead of synthetic data")
    p.add_argument("--workdir", default="demo-runs", help="where the demo writes data, dataset and runs (default demo-runs/)")
    train_flags(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as err:
        label = "[yellow]stopped:[/]" if err.exit_code == 130 else "[bold red]error:[/]"
        err_console.print(f"{label} {err}", highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
