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


ADDRESS_HELP = ("Ray cluster address: host:port, ray://host:10001, or auto (the Ray started on this machine with "
                "`ray start`); default: RAY_ADDRESS (set by `ray job submit`), else a local Ray of this command's own")


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
    cfg = _load(args, _train_overrides(args))  # before torch is imported: a config error answers in a fraction of a second
    if not cfg.data.dataset:
        raise UserError("data.dataset is empty: pass --data URI of an ingested dataset (see `unet-dist ingest`), "
                        "or run `unet-dist demo` for the synthetic demo")
    from unet_dist.train import fit

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
    print_fields([(f"best {data['monitor']}" if key == "best_metric" else key, data.get(key)) for key in SUMMARY_FIELDS])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from unet_dist.inference.evaluate import evaluate

    cfg = load_config(args.config, args.overrides)
    out = evaluate(args.checkpoint, split=args.split, dataset=args.data, storage=cfg.storage, progress=not args.json)
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
    if args.per_image:
        print_per_image(out["per_image"], args.per_image, len(out["per_class_iou"]) == 2)
    return 0


def print_per_image(rows: list[dict[str, Any]], limit: int, binary: bool) -> None:
    """The worst ``limit`` images of evaluate's per-image table."""
    table = Table(title=f"worst {min(limit, len(rows))} of {len(rows)} images by {'foreground' if binary else 'mean'} IoU")
    for col in ("image", "IoU", "Dice", "pixel acc", "pixels"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for r in rows[:limit]:
        table.add_row(str(r["id"]), f"{r['iou']:.4f}", f"{r['dice']:.4f}", f"{r['pixel_acc']:.4f}", f"{r['pixels']:,}")
    console.print(table)


def cmd_tune(args: argparse.Namespace) -> int:
    cfg = _load(args, _flag_overrides(args, {"data": "data.dataset", "storage": "storage.uri", "address": "resources.address",
                                             "name": "tune.name"}))
    from unet_dist.tune import run_campaign

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
    print_fields([("campaign", summary.uri), ("best trial", best.get("trial_id")), ("searched", best.get("params")),
                  (f"best {summary.metric}", best.get("best_value")), ("best checkpoint", best.get("best_checkpoint")),
                  ("skipped points", len(summary.skipped)), ("duration_s", summary.duration_s)])


def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``label value`` lines, floats to 4 digits, paths printed whole."""
    for label, value in pairs:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        console.print(f"  [bold]{label:<18}[/] {shown}", highlight=False, soft_wrap=True)


def cmd_collect(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from unet_dist.collect.leaderboard import collect

    with Progress(console=err_console, transient=True, disable=args.format != "table") as bar:
        task = bar.add_task("reading run records", total=None)
        board = collect(args.storage, storage_cfg=storage_config(args), campaigns=args.campaign, statuses=args.status,
                        write=not args.no_write, metric=args.metric, progress=lambda done, n: bar.update(task, completed=done, total=n))
    for line in board.warnings():
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    if args.format == "json":
        print(board.to_json(limit=args.top))
        return 0
    if args.format in ("csv", "parquet"):
        _write_rows(board, args.format, args.out, args.top)
        err_console.print(board.summary(), highlight=False)
        return 0
    wide = console if console.is_terminal else Console(width=200)  # a pipe or file gets every column whole
    wide.print(board.to_table(limit=args.top))
    written = f" -> {board.uri}" if not args.no_write else ""
    console.print(f"{board.summary()}{written}", highlight=False, soft_wrap=True)
    return 0


def storage_config(args: argparse.Namespace) -> Any:
    """Only the storage section of --config/--set: a command that just reads storage validates no model (the model
    registry imports torch)."""
    from unet_dist.config import StorageConfig, parse_overrides, read_yaml, validate_section

    data = read_yaml(args.config).get("storage") if args.config else None
    return validate_section(StorageConfig, {**(data or {}), **parse_overrides(args.overrides).get("storage", {})},
                            "storage")


def _write_rows(board: Any, fmt: str, out: str | None, top: int | None) -> None:
    """The leaderboard rows as CSV or Parquet, to --out or stdout."""
    import io

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from unet_dist.collect.leaderboard import to_arrow

    table, buf = to_arrow(board.rows[:top]), io.BytesIO()
    pq.write_table(table, buf) if fmt == "parquet" else pcsv.write_csv(table, buf)
    if out:
        from unet_dist.storage import resolve

        resolve(out).write_bytes(buf.getvalue())
    else:
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n:,} B"


def cmd_export(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from unet_dist.collect.export import export, remove_export

    storage_cfg = storage_config(args)
    if args.remove:
        for name in args.remove:
            gone = remove_export(args.storage, args.dest, name, storage_cfg)
            if args.json:
                print(json.dumps(gone))
                continue
            alias = " and the champion alias" if gone["champion_removed"] else ""
            console.print(f"removed {gone['model']}{alias} and its pin: gc may now delete "
                          f"{gone['source'] or 'its source'}", highlight=False, soft_wrap=True)
        return 0
    with Progress(TextColumn("copying checkpoints"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=True, disable=args.json) as bar:
        task = bar.add_task("copy", total=None)
        result = export(args.storage, args.dest, top=args.top, campaigns=args.campaign, storage_cfg=storage_cfg,
                        on_bytes=lambda done, total: bar.update(task, completed=done, total=total))
    for line in result.warnings:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    if args.json:
        print(result.to_json())
        return 0
    table = Table(title=f"exported to {result.dest} by {result.metric} ({result.mode})")
    for col in ("#", "model", result.metric, "searched", "status", "size", ""):
        table.add_column(col, justify="right" if col in ("#", result.metric, "size") else "left")
    for m in result.models:
        searched = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in m.params.items())
        table.add_row(str(m.rank), m.name, "-" if m.value is None else f"{m.value:.4f}", searched, m.status,
                      _size(m.bytes), "copied" if m.copied else "unchanged")
    (console if console.is_terminal else Console(width=200)).print(table)  # a pipe gets model names whole
    copied = sum(m.copied for m in result.models)
    console.print(f"champion -> {result.champion}  ({result.dest.rstrip('/')}/champion); {copied} copied "
                  f"({_size(result.bytes_copied)}), {len(result.models) - copied} unchanged", highlight=False, soft_wrap=True)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from unet_dist.collect.gc import collect_garbage, plan, verified_plan, write_plan

    storage_cfg = storage_config(args)
    if args.yes and args.plan:
        todo = verified_plan(args.storage, args.plan, storage_cfg)
    else:
        todo = plan(args.storage, keep_best=args.keep_best, keep_trial_best=args.keep_trial_best,
                    keep_latest=args.keep_latest, campaigns=args.campaign, storage_cfg=storage_cfg)
    if args.plan and not args.yes:
        write_plan(todo, args.plan)
    for note in todo.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if args.yes:
        with Progress(TextColumn("deleting checkpoints"), BarColumn(), MofNCompleteColumn(), console=err_console,
                      transient=True, disable=args.json) as bar:
            task = bar.add_task("delete", total=len(todo.delete))
            collect_garbage(todo, storage_cfg, on_item=lambda _: bar.advance(task), purge_versions=args.purge_versions)
    for fail in todo.failed:
        err_console.print(f"[bold red]not deleted:[/] {fail['uri']}: {fail['why']}", highlight=False, soft_wrap=True)
    if args.json:
        print(todo.to_json())
        return 1 if todo.failed else 0
    _print_gc(todo, args.plan)
    return 1 if todo.failed else 0


def _print_gc(todo: Any, plan_file: str | None) -> None:
    from collections import Counter

    verb = "deleted" if todo.deleted else "would delete"
    count = len(todo.removed) if todo.deleted else len(todo.delete)
    if todo.delete:
        table = Table(title=f"{verb} {count} checkpoints under {todo.storage}")
        for col in ("run", "checkpoint", "size", "why"):
            table.add_column(col, justify="right" if col == "size" else "left")
        failed = {f["uri"] for f in todo.failed}
        for item in todo.delete:
            why = f"NOT DELETED ({item.reason})" if item.uri in failed else item.reason
            table.add_row(item.run, item.uri.rsplit("/", 1)[-1], _size(item.bytes), why)
        (console if console.is_terminal else Console(width=200)).print(table)
    kept = ", ".join(f"{n} {why}" for why, n in Counter(i.reason.split(" to ")[0] for i in todo.keep).most_common())
    console.print(f"{verb} {count} checkpoints, {_size(todo.bytes_freed)} freed; kept {len(todo.keep)} "
                  f"({_size(todo.bytes_kept)}: {kept or 'none'}); plan digest {todo.digest}", highlight=False, soft_wrap=True)
    if todo.failed:
        console.print(f"{len(todo.failed)} checkpoints could not be deleted (named above)", highlight=False)
    if not todo.deleted and todo.delete:
        then = (f"plan written to {plan_file}; `unet-dist gc {todo.storage} --yes --plan {plan_file}` deletes exactly "
                "it (or refuses if storage changed)") if plan_file else "run again with --yes to delete these"
        console.print(f"dry run: nothing was deleted; {then}", highlight=False, soft_wrap=True)


def cmd_report(args: argparse.Namespace) -> int:
    from unet_dist.collect.report import write_report

    report = write_report(args.uri, args.output, split=args.split, dataset=args.data, storage=storage_config(args),
                          val_images=args.images, progress=not args.json)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    if args.json:
        print(json.dumps({"report": args.output, "bytes": len(report.html.encode()), "kind": report.subject.kind,
                          "name": report.subject.name, "best": report.best_run, "checkpoint": report.checkpoint,
                          "split": report.split, "notes": report.notes}))
        return 0
    best = f" · best {report.best_run} ({report.checkpoint})" if report.best_run else ""
    console.print(f"report of {report.subject.kind} [bold]{report.subject.name}[/]{best} · test view on "
                  f"{report.split or '-'} -> [bold]{args.output}[/] ({len(report.html.encode()) / 1e6:.1f} MB)",
                  highlight=False, soft_wrap=True)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from unet_dist.collect.predict import predict
    from unet_dist.inference.tiles import Tiling

    cfg = load_config(args.config, [*args.overrides, *_flag_overrides(args, {"address": "resources.address"})])
    tiling = Tiling(**{k: v for k, v in (("tile", args.tile), ("overlap", args.overlap), ("batch_size", args.batch_size))
                       if v is not None}, tta=args.tta)
    summary = predict(args.model, args.images, args.out, tiling=tiling, overlay=args.overlay, use_ray=args.ray,
                      workers=args.workers, threads=args.threads, storage=cfg.storage, resources=cfg.resources,
                      progress=not args.json,
                      console=err_console)
    if args.json:
        print(summary.to_json())
    else:
        values = ", ".join(f"{name} {value}" for name, value in summary.mask_values.items())
        console.print(f"[green]wrote {summary.predicted} masks[/] to [bold]{summary.out}[/] ({values})",
                      highlight=False, soft_wrap=True)
        print_fields([("overlays", summary.overlays or "-"), ("tiles", f"{summary.tiles} of {summary.tile} px, overlap "
                      f"{summary.overlap:g}{', flip TTA' if summary.tta else ''}"),
                      ("images/s", f"{summary.predicted / max(summary.duration_s, 1e-9):.2f} on {summary.device}"
                                   f"{' (Ray)' if summary.ray else ''}"), ("duration_s", f"{summary.duration_s:.1f}")])
    for item in summary.skipped:
        err_console.print(f"[yellow]skipped[/] {item['image']}: {item['reason']}", highlight=False, soft_wrap=True)
    return 1 if summary.skipped else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unet_dist.demo import DEMO_PROFILE, run_demo

    cfg = _load(args, _train_overrides(args), base=DEMO_PROFILE)
    summary, published = run_demo(cfg, data=args.data_folder, workdir=args.workdir, console=err_console if args.json else console)
    if args.json:
        print(json.dumps({"campaign": json.loads(summary.to_json()), "collect": json.loads(published.to_json())}))
        return 0
    from unet_dist.collect.publish import summary_lines

    console.print()
    console.print(published.leaderboard.to_table())
    console.rule(f"[bold green]demo finished[/]: campaign {summary.name} {summary.status}")
    print_fields([("campaign", summary.uri), *summary_lines(published)])
    console.print(f"\nOpen the report: [bold]{published.report}[/]", highlight=False, soft_wrap=True)
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from unet_dist.cluster import plan, render

    result = plan(args.campaign, args.cluster, args.overrides)
    if args.json:
        print(result.to_json())
    else:
        render(result, console)
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
        p.add_argument("--address", help=ADDRESS_HELP)
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
    p.add_argument("--per-image", type=int, default=10, metavar="N",
                   help="show the N worst images by IoU (default 10, 0: none); --json always holds every image")
    p.add_argument("--address", help=argparse.SUPPRESS)  # evaluate reads the shards itself and starts no Ray
    p.add_argument("--json", action="store_true", help="one JSON line (aggregate metrics and per_image, worst first)")
    _config_args(p)

    p = add("tune", cmd_tune, "run (or --resume) a Ray Tune campaign over the U-Net design space",
            "Runs the campaign in --config (a base run config plus its tune: section: search_space, scheduler, "
            "num_samples, ...). Every trial is a data-parallel Ray Train run; ASHA stops poor trials early; every "
            "trial's record, metrics and checkpoints land under STORAGE/<tune.name>/trials/. A name that exists "
            "needs --resume, which continues a killed campaign: finished trials are kept, unfinished ones continue "
            "from their newest checkpoint, errored ones are retried once.")
    p.add_argument("--data", help="URI of an ingested dataset (default: data.dataset of the config)")
    p.add_argument("--storage", help="where campaigns go: local path (default ./runs) or s3://bucket/prefix")
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--name", help="campaign name (tune.name)")
    p.add_argument("--resume", action="store_true", help="continue the campaign of this name from storage")
    p.add_argument("--json", action="store_true", help="print a one-line JSON summary at the end")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines (kept in Ray's log files otherwise)")
    _config_args(p)

    p = add("collect", cmd_collect, "rank every run and trial under a storage URI into a Parquet leaderboard",
            "Reads every campaign (STORAGE/<name>/campaign.json + trials/<id>/run.json) and every single run "
            "(STORAGE/<name>/run.json) from their records, never their checkpoints; prints them best first by the "
            "monitored metric and writes STORAGE/leaderboard/leaderboard.parquet (readable by pandas, pyarrow, DuckDB). "
            "A re-run reads only the records that changed. Folders that are not runs are skipped with one warning each.")
    p.add_argument("storage", help="storage root: local path or s3://bucket/prefix")
    p.add_argument("--campaign", action="append", metavar="NAME", help="only this campaign or single run (repeatable)")
    p.add_argument("--status", action="append", metavar="STATUS",
                   help="only runs with this status: finished, early_stopped, running, error, invalid, stopped, failed (repeatable)")
    p.add_argument("--top", type=int, metavar="N", help="show the best N rows")
    p.add_argument("--metric", help="rank by this metric (default: the runs' monitored metric, else val_mean_iou)")
    p.add_argument("--format", choices=["table", "json", "csv", "parquet"], default="table",
                   help="table (default), json (one line), csv or parquet (to --out or stdout)")
    p.add_argument("--out", metavar="PATH", help="file for --format csv/parquet (local path or s3://)")
    p.add_argument("--no-write", action="store_true", help="do not write the leaderboard and its index to storage")
    _config_args(p)

    p = add("export", cmd_export, "copy the best checkpoints to a model store, each with a model card",
            "Copies the best K checkpoints under STORAGE (ranked like `unet-dist collect`) to DEST (local or s3://), "
            "each as DEST/<campaign>-<trial>-epoch_NNNN/ with state.pt and COMPLETE copied byte for byte and a "
            "model.json card (config without credentials, searched values, metrics with per-class IoU, dataset URI "
            "and fingerprint, code version, source checkpoint), and points DEST/champion (alias.json) at the best. "
            "Exporting again copies nothing twice. DEST/<model> and DEST/champion work wherever a checkpoint does "
            "(evaluate, predict, --resume-from, model.weights).")
    p.add_argument("storage", help="storage root the runs are under: local path or s3://bucket/prefix")
    p.add_argument("dest", help="model store: local folder or s3://bucket/prefix, outside STORAGE")
    p.add_argument("--top", type=int, default=1, metavar="K", help="export the best K runs/trials (default 1)")
    p.add_argument("--remove", action="append", metavar="NAME", help="remove the exported model DEST/NAME and its "
                   "pin in STORAGE/exports/ instead of exporting (gc keeps a pinned source until then; repeatable)")
    p.add_argument("--campaign", action="append", metavar="NAME", help="only this campaign or single run (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON line")
    _config_args(p)

    p = add("gc", cmd_gc, "delete checkpoints not worth keeping (dry run unless --yes)",
            "Keeps, under STORAGE, every checkpoint Ray's snapshot references in a run or trial that can still resume "
            "(status running, stopped, failed or error: `train --name` / `tune --resume` need them), the best "
            "checkpoint of the --keep-best best runs/trials (default 3), each run's best (--keep-trial-best) and "
            "newest (--keep-latest: both on by default; extending a finished run starts from its newest), every "
            "exported checkpoint (pinned in STORAGE/exports/ by `unet-dist export` until `export --remove`) and a "
            "running run's newest checkpoints; deletes every other checkpoint folder, including orphans (no COMPLETE "
            "marker, or epochs after a stopped trial's last recorded one). A finished run's Ray snapshot is rewritten "
            "first so it no longer lists what goes. Without --yes it only prints what would go, the bytes freed and a "
            "plan digest; --plan FILE saves that plan, and --yes --plan FILE deletes exactly it (refusing, with "
            "nothing deleted, if storage changed since). Each deletion is checked: refused objects and delete markers "
            "of a versioned S3 bucket are named, not counted as freed, and the exit status is 1. Records, metrics, "
            "logs and model stores are never deleted.")
    p.add_argument("storage", help="storage root: local path or s3://bucket/prefix")
    p.add_argument("--keep-best", type=int, default=3, metavar="N", help="keep the best checkpoint of the N best runs (default 3)")
    p.add_argument("--keep-trial-best", action=argparse.BooleanOptionalAction, default=True,
                   help="keep each run's and trial's best checkpoint (default: on)")
    p.add_argument("--keep-latest", action=argparse.BooleanOptionalAction, default=True,
                   help="keep each run's and trial's newest complete checkpoint (default: on; a resume or an extension "
                        "with more epochs starts from it)")
    p.add_argument("--campaign", action="append", metavar="NAME", help="only this campaign or single run (repeatable)")
    p.add_argument("--yes", action="store_true", help="delete (default: dry run, nothing deleted)")
    p.add_argument("--plan", metavar="FILE", help="dry run: save the plan to FILE; with --yes: delete exactly the plan "
                   "in FILE (its keep options apply), or refuse if storage changed since it was made")
    p.add_argument("--purge-versions", action="store_true",
                   help="versioned S3 bucket: delete every version of each deleted file (else only delete markers are "
                        "added and no bytes are freed)")
    p.add_argument("--json", action="store_true", help="one JSON line: keep and delete lists with reasons, bytes freed")
    _config_args(p)

    p = add("report", cmd_report, "write one self-contained HTML report of a run or campaign",
            "Renders RUN_OR_CAMPAIGN_URI (a folder written by train or tune, local or s3://, copied trees too) as one "
            "HTML file that loads nothing from the network: train/val IoU and loss per epoch, the leaderboard with "
            "searched values, the best checkpoint's predictions on validation images (TP green, FP red, FN blue) and "
            "a test view (per-class IoU and Dice, pixel accuracy, confusion matrix, 5 best and 5 worst test images). "
            "Reads the dataset's Parquet shards directly: no Ray.")
    p.add_argument("uri", metavar="RUN_OR_CAMPAIGN_URI", help="run or campaign folder: STORAGE/<name>")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write, local or s3:// (default report.html)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="split of the test view (default test; val if the dataset has none)")
    p.add_argument("--data", help="dataset URI (default: the one the best checkpoint was trained on)")
    p.add_argument("--images", type=int, default=4, metavar="N", help="validation images with overlays (default 4)")
    p.add_argument("--json", action="store_true", help="one JSON line")
    _config_args(p)

    p = add("predict", cmd_predict, "masks (and overlays) for a folder or s3:// prefix of new images",
            "Segments every image under IMAGES (folder, s3:// prefix or one file; PNG/JPEG/TIFF, 8/16-bit, gray/RGB, "
            "any size) with MODEL (a checkpoint, an exported model folder or STORE/champion) and writes OUT/<same "
            "relative name>.png: 0/255 for two-class models, class ids (palette PNG) for more. Large images are cut "
            "into overlapping tiles blended with a smooth window; a tile at least as large as the image gives "
            "exactly evaluate's prediction. Unreadable or unusable images are skipped and named; exit 1 if any was.")
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
    p.add_argument("--json", action="store_true", help="one JSON line")
    _config_args(p)

    p = add("demo", cmd_demo, "end-to-end demo: synthetic (or --data) images -> ingest -> a small tuning campaign",
            "Runs the whole product on a local Ray: generates a SYNTHETIC data set (or uses --data FOLDER with "
            "images/ and masks/), ingests it, runs a small ASHA campaign of 2-worker Ray Train trials over "
            "backbones x unpooling methods, and prints the ranking and the best checkpoint.")
    p.add_argument("--data", dest="data_folder", help="folder with images/ and masks/ instead of synthetic data")
    p.add_argument("--workdir", default="demo-runs", help="where the demo writes data, dataset and runs (default demo-runs/)")
    train_flags(p)

    p = add("cluster", cmd_cluster, "plan a campaign on a Ray cluster-launcher config (no cluster needed)",
            "`cluster plan CAMPAIGN.yaml CLUSTER.yaml` prints, per worker node type of CLUSTER (cluster/*.yaml), how "
            "many workers and trials fit a node and run at once over its max_workers nodes, how many nodes the "
            "autoscaler will ask for, and the GPU-hours at the campaign's time budget; exit 2 when no node type "
            "fits a trial, naming the short resource.")
    p.add_argument("action", choices=["plan"], help="plan: fit the campaign to the cluster's node types")
    p.add_argument("campaign", help="campaign or training config (e.g. jobs/configs/backbones.yaml)")
    p.add_argument("cluster", help="Ray cluster-launcher YAML (e.g. cluster/aws-gpu.yaml)")
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one campaign config value, e.g. --set resources.num_workers=4 (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON line")
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
