"""What every command shares: the consoles, the flag groups (defined once), loading a config, printing fields."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, Iterator, Sequence

from rich.console import Console

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
VERBOSE_HELP = "show Ray's own log lines (kept in Ray's log files otherwise)"


# --- flag groups

def overrides_flag(p: argparse.ArgumentParser, example: str = "--set model.depth=5") -> None:
    p.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config value, e.g. {example} (repeatable)")


def config_flags(p: argparse.ArgumentParser) -> None:
    """--config YAML and any number of --set KEY=VALUE."""
    p.add_argument("--config", "-c", metavar="YAML", help="config file (examples in jobs/configs/)")
    overrides_flag(p)


def json_flag(p: argparse.ArgumentParser, help_: str = "one JSON line") -> None:
    p.add_argument("--json", action="store_true", help=help_)


def storage_root(p: argparse.ArgumentParser, help_: str = "storage root: local path or s3://bucket/prefix") -> None:
    p.add_argument("storage", help=help_)


def campaign_filter(p: argparse.ArgumentParser) -> None:
    p.add_argument("--campaign", action="append", metavar="NAME", help="only this campaign or single run (repeatable)")


def ray_run_flags(p: argparse.ArgumentParser, storage_help: str, name_help: str) -> None:
    """What a command that runs on Ray takes: --storage, --address, --name, --json, --verbose and the config."""
    p.add_argument("--storage", help=storage_help)
    p.add_argument("--address", help=ADDRESS_HELP)
    p.add_argument("--name", help=name_help)
    json_flag(p, "print a one-line JSON summary at the end")
    p.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    config_flags(p)


def train_flags(p: argparse.ArgumentParser) -> None:
    """A training run's flags (train and demo)."""
    p.add_argument("--workers", help="training workers, or MIN-MAX for elastic training (default 2)")
    p.add_argument("--epochs", type=int, help="epochs (default from config)")
    p.add_argument("--resume-from", help="start from this checkpoint URI")
    ray_run_flags(p, "where runs go: local path (default ./runs) or s3://bucket/prefix",
                  "run name; re-using one resumes that run")


# --- configs

def load(args: argparse.Namespace, extra: Sequence[str] = (), base: dict[str, Any] | None = None) -> Config:
    """Config from --config and --set, with command-line flags applied last (validation includes the registries)."""
    return load_config(args.config, [*args.overrides, *extra], base=base)


def flag_overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """``KEY=VALUE`` overrides from the flags that were given (``{attribute: config key}``)."""
    return [f"{key}={json.dumps(v) if isinstance(v, (list, tuple)) else v}"
            for attr, key in mapping.items() if (v := getattr(args, attr, None)) is not None]


def train_overrides(args: argparse.Namespace) -> list[str]:
    return flag_overrides(args, {
        "data": "data.dataset", "storage": "storage.uri", "address": "resources.address",
        "workers": "resources.num_workers", "epochs": "train.epochs", "resume_from": "train.resume_from",
        "name": "train.name",
    })


def require_dataset(cfg: Config) -> None:
    """A run needs data: said before torch or Ray is imported, so the error answers at once."""
    if not cfg.data.dataset:
        raise UserError("data.dataset is empty: pass --data URI of an ingested dataset (see `unet-dist ingest`), "
                        "or run `unet-dist demo` for the synthetic demo")


def storage_config(args: argparse.Namespace) -> Any:
    """Only the storage section of --config/--set: a command that just reads storage validates no model."""
    from unet_dist.config import StorageConfig, parse_overrides, read_yaml, validate_section

    data = read_yaml(args.config).get("storage") if args.config else None
    return validate_section(StorageConfig, {**(data or {}), **parse_overrides(args.overrides).get("storage", {})},
                            "storage")


# --- output

def print_fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """``label value`` lines, floats to 4 digits, paths printed whole."""
    for label, value in pairs:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        console.print(f"  [bold]{label:<18}[/] {shown}", highlight=False, soft_wrap=True)


def print_wide(renderable: Any) -> None:
    """A table on the terminal at its width; a pipe or file gets every column whole."""
    (console if console.is_terminal else Console(width=200)).print(renderable)


def warn(lines: Sequence[str], label: str = "[yellow]warning:[/]") -> None:
    for line in lines:
        err_console.print(f"{label} {line}", highlight=False, soft_wrap=True)


def add_command(sub: Any, name: str, run: Any, doc: str) -> argparse.ArgumentParser:
    """A subcommand parser whose ``args.run`` is ``run``. ``doc`` is the command module's docstring: after the
    ``unet-dist NAME`` label its first line is the one-line help, the rest (one paragraph) the description."""
    head, _, body = doc.partition("\n")
    help_ = head.split(":", 1)[1].strip().rstrip(".")
    p = sub.add_parser(name, help=help_, description=" ".join(body.split()) or help_, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)
    return p


_json_out: Any = None
"""Where :func:`emit` writes while :func:`json_only_stdout` holds stdout for the command's JSON line."""


@contextlib.contextmanager
def json_only_stdout(args: argparse.Namespace) -> Iterator[None]:
    """With ``--json``, stdout carries the command's JSON line alone: anything else printed to stdout while the
    command runs goes to stderr. Ray's driver prints raylet warnings to stdout whatever ``log_to_driver`` says
    (e.g. "N PYTHON worker processes have been started" when trials run concurrently on a small node)."""
    global _json_out
    if not getattr(args, "json", False):
        yield
        return
    _json_out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_out = None


def emit(line: str) -> None:
    """The command's machine-readable output (one JSON line): to stdout, also under :func:`json_only_stdout`."""
    print(line, file=_json_out or sys.stdout, flush=True)
