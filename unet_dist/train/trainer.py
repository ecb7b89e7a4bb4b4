"""``fit(cfg)``: build a Ray Train ``TorchTrainer`` for the U-Net, run it, show progress, summarise.

The CLI, ``jobs/train.py``, Tune and tests all call this one function. Behaviour lives in
:mod:`unet_dist.train.loop` (workers) and here (driver): cluster connection, datasets, scaling,
storage, fault tolerance, the live view and the :class:`TrainSummary`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from unet_dist.config import Config
from unet_dist.errors import ConfigError, UserError
from unet_dist.storage import Location, check_writable, ray_storage, resolve, with_env_settings
from unet_dist.train.loop import (FAULT_ENV, METRICS_FILE, PROGRESS_FILE, RunFiles, quiet_ray_logs, scalar_metrics,
                                  train_loop_per_worker)


class TrainingFailed(UserError):
    """The run ended in failure after its retries; the message names the run and how to resume it.

    A user-facing error (one line, no traceback): the cause is the cluster or the data, and the run's
    checkpoints on storage are intact for a resume.
    """

    exit_code = 1


@dataclass
class TrainSummary:
    """What a finished run produced; ``to_json()`` is the CLI's ``--json`` line."""

    name: str
    run_dir: str
    epochs: int
    best_val_iou: float | None
    best_epoch: int | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    final_metrics: dict[str, Any] = field(default_factory=dict)
    metrics_file: str = ""
    tensorboard_dir: str = ""
    num_workers: int | tuple[int, int] = 1
    use_gpu: bool = False
    duration_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


def new_run_name(prefix: str = "train") -> str:
    return f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S-%f')[:-3]}"


def _connect(cfg: Config, quiet: bool = False) -> bool:
    """Attach to ``resources.address`` / ``RAY_ADDRESS`` or start a local Ray; True if we started it.

    ``quiet`` keeps a local Ray's worker output out of the console (the live view shows progress;
    worker errors still surface as exceptions and full logs stay under Ray's session log dir).
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    address = cfg.resources.address or os.environ.get("RAY_ADDRESS")
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(address=address or None, configure_logging=False, log_to_driver=not (quiet and not address))
    except ConnectionError as err:
        raise UserError(f"cannot connect to the Ray cluster at {address!r} (resources.address / RAY_ADDRESS): {err}") from None
    return True


def _use_gpu(cfg: Config) -> bool:
    import ray

    if cfg.resources.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(cfg.resources.use_gpu)


def check_dataset(cfg: Config) -> dict[str, Any]:
    """The manifest of ``cfg.data.dataset``, checked against the model head; no Ray needed."""
    from unet_dist.data.ingest import read_manifest

    if not cfg.data.dataset:
        raise ConfigError("data.dataset is empty: set it to an ingested dataset URI (run `unet-dist ingest` first), or use `unet-dist demo`")
    manifest = read_manifest(cfg.data.dataset, cfg.storage)
    n = int(manifest.get("num_classes", 2))
    if n != max(2, cfg.model.num_classes):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} does not fit the dataset's {n} classes "
                          f"({cfg.data.dataset}); set model.num_classes={n}" + (" (or 1 for a single-logit head)" if n == 2 else ""))
    return manifest


def prepare_data(cfg: Config, manifest: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The Ray Datasets and the workers' PipelineSpec for ``cfg.data.dataset``."""
    from unet_dist.data.pipeline import build_datasets, pipeline_spec

    datasets = build_datasets(cfg.data, cfg.storage, cfg.model.in_channels)
    spec = pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, pad_multiple=2 ** cfg.model.depth, manifest=manifest)
    return datasets, spec


def fit(cfg: Config, *, console: Any = None, progress: bool = True) -> TrainSummary:
    """Train ``cfg.model`` on ``cfg.data`` with Ray Train; returns a :class:`TrainSummary`."""
    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t_start = time.time()
    manifest = check_dataset(cfg)
    storage = resolve(cfg.storage.uri, cfg.storage)
    check_writable(storage)
    name = cfg.train.name or new_run_name()
    run = storage / name
    # Ray Train propagates this from the driver to its controller at fit() time, on any cluster.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.train.worker_start_timeout_s)
    started = _connect(cfg, quiet=progress)
    quiet_ray_logs()
    try:
        from unet_dist.data.pipeline import dataset_config

        datasets, spec = prepare_data(cfg, manifest)
        use_gpu = _use_gpu(cfg)
        nw = cfg.resources.num_workers
        resources: dict[str, float] = {"CPU": cfg.resources.cpus_per_worker}
        if use_gpu:
            resources["GPU"] = cfg.resources.gpus_per_worker
        train_rows = datasets["train"].count()
        loop_config = {
            "cfg": cfg.model_copy(update={"storage": with_env_settings(cfg.storage)}),
            "spec": spec,
            "run_uri": run.uri,
            "train_rows": train_rows,
            "class_names": list(manifest.get("class_names") or cfg.ingest.class_names),
            "fingerprint": manifest.get("fingerprint"),
            "fault": os.environ.get(FAULT_ENV),
        }
        storage_path, storage_fs = ray_storage(storage)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=nw, use_gpu=use_gpu, resources_per_worker=resources,
                                         placement_strategy=cfg.resources.placement_strategy),
            run_config=RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                failure_config=FailureConfig(max_failures=cfg.train.max_failures,
                                             controller_failure_limit=cfg.train.controller_failure_limit),
                logging_config=LoggingConfig(log_level="WARNING"),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep, checkpoint_score_attribute="val_iou",
                                                   checkpoint_score_order="max"),
            ),
            datasets=datasets,
            dataset_config=dataset_config(),
        )
        view = _LiveView(run, cfg, console) if progress else None
        if view:
            view.start()
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as err:
            raise TrainingFailed(
                f"training run {run.uri} failed after {cfg.train.max_failures} worker-group restarts "
                f"(train.max_failures) or {cfg.train.controller_failure_limit} controller retries: {str(err).splitlines()[0]}; "
                f"fix the cause and re-run with --set train.name={name} to resume from its newest checkpoint"
            ) from err
        finally:
            if view:
                view.stop()
        if result.error is not None:
            raise TrainingFailed(f"training run {run.uri} failed: {result.error}") from result.error
        return _summary(run, cfg, name, nw, use_gpu, time.time() - t_start)
    finally:
        if started:
            ray.shutdown()


def _summary(run: Location, cfg: Config, name: str, nw: Any, use_gpu: bool, duration: float) -> TrainSummary:
    from unet_dist.train import checkpoint as ckpt

    rows = RunFiles(run).read_lines(METRICS_FILE)
    complete = {e: loc for e, loc in ckpt.complete_checkpoints(run)}
    best_row = max((r for r in rows if r["epoch"] in complete), key=lambda r: r["val_iou"], default=None)
    last = max(complete) if complete else None
    final = scalar_metrics(rows[-1]) if rows else {}
    return TrainSummary(
        name=name, run_dir=run.uri, epochs=len(rows),
        best_val_iou=best_row["val_iou"] if best_row else None,
        best_epoch=best_row["epoch"] if best_row else None,
        best_checkpoint=complete[best_row["epoch"]].uri if best_row else None,
        last_checkpoint=complete[last].uri if last is not None else None,
        final_metrics=final, metrics_file=(run / METRICS_FILE).uri, tensorboard_dir=(run / "tensorboard").uri,
        num_workers=nw, use_gpu=use_gpu, duration_s=round(duration, 2),
    )


class _LiveView:
    """A driver thread polling ``progress.json`` / ``metrics.jsonl`` into a rich live panel."""

    def __init__(self, run: Location, cfg: Config, console: Any = None, interval: float = 1.0) -> None:
        from rich.console import Console

        self.run, self.cfg, self.interval = run, cfg, interval
        self.console = console or Console(stderr=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unet-dist-progress", daemon=True)
        self._t0 = time.time()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            prog = json.loads((self.run / PROGRESS_FILE).read_text()) if (self.run / PROGRESS_FILE).exists() else {}
            rows = RunFiles(self.run).read_lines(METRICS_FILE)
        except Exception:  # storage hiccups must never kill the run's driver
            return {}, []
        return prog, rows

    def render(self) -> Any:
        from rich.table import Table

        prog, rows = self._read()
        epochs = self.cfg.train.epochs
        epoch = prog.get("epoch", 0)
        t = Table(title=f"unet-dist train · {self.run.uri}", show_header=True, expand=False)
        for col in ("epoch", "step", "loss", "val IoU", "best IoU", "img/s", "elapsed", "ETA"):
            t.add_column(col, justify="right")
        done = len(rows)
        elapsed = time.time() - self._t0
        per_epoch = sum(r["epoch_time_s"] for r in rows) / done if done else None
        eta = f"{per_epoch * (epochs - done):.0f}s" if per_epoch else "-"
        best = max((r["val_iou"] for r in rows), default=None)
        last = rows[-1] if rows else {}
        t.add_row(
            f"{min(epoch + 1, epochs)}/{epochs}",
            f"{prog.get('step', 0)}/{prog.get('steps_per_epoch', '?')}",
            f"{prog['loss']:.4f}" if "loss" in prog else "-",
            f"{last['val_iou']:.4f}" if last else "-",
            f"{best:.4f}" if best is not None else "-",
            f"{prog.get('images_per_s', 0):.1f}",
            f"{elapsed:.0f}s",
            eta,
        )
        return t

    def _loop(self) -> None:
        from rich.live import Live

        with Live(self.render(), console=self.console, refresh_per_second=2, transient=False) as live:
            while not self._stop.wait(self.interval):
                live.update(self.render())
            live.update(self.render())


__all__ = ["fit", "TrainSummary", "TrainingFailed", "new_run_name", "check_dataset", "prepare_data"]
