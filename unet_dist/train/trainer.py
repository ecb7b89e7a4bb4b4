"""The driver: ``build_trainer`` (a Ray Train ``TorchTrainer`` for one run) and ``fit(cfg)`` around it.

``fit`` is what the CLI, ``jobs/train.py`` and tests call: it checks everything that can be checked before
Ray starts (config, dataset, weights, resume checkpoint, storage), connects, writes the run record, runs the
trainer with a live view, and closes the record as finished, failed or stopped. A Tune trial calls
:func:`build_trainer` itself, adding Ray Train's Tune callback and sharing already materialised datasets.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Sequence

from unet_dist.config import Config
from unet_dist.errors import ConfigError, DataError, StorageError, UserError
from unet_dist.runs import METRICS_FILE, TENSORBOARD_DIR, RunDir, Status, finish_record, new_record, start_record
from unet_dist.session import GpuDecision, decide_gpu, ray_session
from unet_dist.storage import Location, check_writable, public_config, ray_storage, resolve
from unet_dist.tracking import Tracker, require_client
from unet_dist.train import collectives
from unet_dist.train.live import LiveView
from unet_dist.train.fault import Fault
from unet_dist.train.loop import train_loop_per_worker
from unet_dist.train.recorder import MlflowRecorder, RecorderSpec, RunRecorder, TensorBoardRecorder


class TrainingFailed(UserError):
    """The run ended in failure after its retries; the message names the cause, the run and how to resume it."""

    exit_code = 1


class RunInterrupted(UserError):
    """The user interrupted a run (Ctrl-C); its checkpoints are intact and the message says how to resume."""

    exit_code = 130


@dataclass
class TrainSummary:
    """What a finished run produced; ``to_json()`` is the CLI's ``--json`` line."""

    name: str
    run_dir: str
    epochs: int
    monitor: str
    best_metric: float | None
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


@dataclass
class PreparedData:
    """A run's datasets, read once: the manifest, the Ray Datasets and the workers' PipelineSpec."""

    manifest: dict[str, Any]
    datasets: dict[str, Any]
    spec: Any
    train_rows: int


def new_run_name(prefix: str = "train") -> str:
    return f"{prefix}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S-%f')[:-3]}"


def check_dataset(cfg: Config) -> dict[str, Any]:
    """The manifest of ``cfg.data.dataset``, checked against the model head; no Ray needed."""
    from unet_dist.data.manifest import read_manifest

    if not cfg.data.dataset:
        raise ConfigError("data.dataset is empty: set it to an ingested dataset URI (run `unet-dist ingest` first), or use `unet-dist demo`")
    manifest = read_manifest(cfg.data.dataset, cfg.storage)
    n = int(manifest.get("num_classes", 2))
    if n != max(2, cfg.model.num_classes):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} does not fit the dataset's {n} classes "
                          f"({cfg.data.dataset}); set model.num_classes={n}" + (" (or 1 for a single-logit head)" if n == 2 else ""))
    return manifest


def check_resume_from(cfg: Config) -> None:
    """``train.resume_from`` loads safely and fits the configured model (checked before Ray starts)."""
    if not cfg.train.resume_from:
        return
    from unet_dist.models import create_unet
    from unet_dist.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(cfg.train.resume_from, cfg.storage)
        create_unet(cfg.model.model_copy(update={"weights": None})).load_state_dict(state["model"])
    except RuntimeError as err:
        raise ConfigError(f"train.resume_from: {cfg.train.resume_from} does not fit the configured model "
                          f"({str(err).splitlines()[0]}); use a checkpoint of the same model settings") from None
    except UserError as err:
        raise ConfigError(f"train.resume_from: {err}") from None


def preflight(cfg: Config) -> dict[str, Any]:
    """Everything checkable before Ray starts (so a file or config error is never retried on workers); the manifest."""
    from unet_dist.models.weights import check_weights

    manifest = check_dataset(cfg)
    check_weights(cfg.model, cfg.storage)
    check_resume_from(cfg)
    check_writable(resolve(cfg.storage.uri, cfg.storage))
    if cfg.tracking.mlflow_uri:
        require_client()
    return manifest


def prepare_data(cfg: Config, manifest: dict[str, Any], datasets: dict[str, Any] | None = None) -> PreparedData:
    """Ray Datasets (``datasets`` when already built, e.g. once per campaign) and the workers' PipelineSpec; refuses
    a train split too small for every worker to get a row."""
    from unet_dist.data.pipeline import build_datasets, pipeline_spec

    datasets = datasets or build_datasets(cfg.data, cfg.storage, cfg.model.in_channels, manifest)
    rows = datasets["train"].count()
    spec = replace(pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, manifest, pad_multiple=2 ** cfg.model.depth),
                   train_rows=rows)
    nw = cfg.resources.num_workers
    most = nw[1] if isinstance(nw, tuple) else nw
    if rows < most:
        raise DataError(f"the train split of {manifest['uri']} has {rows} image(s) for {most} workers: each worker would get "
                        f"{rows // most} or {-(-rows // most)} row(s) and some none; use resources.num_workers<={max(rows, 1)} "
                        "or re-ingest with a larger train share (ingest.split)")
    return PreparedData(manifest, datasets, spec, rows)


def shared_datasets(cfg: Config, manifest: dict[str, Any]) -> dict[str, Any]:
    """The Ray Datasets of ``manifest``'s splits, built once for many runs (a campaign's trials) and handed to
    :func:`prepare_data` of each."""
    from unet_dist.data.pipeline import build_datasets

    return build_datasets(cfg.data, cfg.storage, cfg.model.in_channels, manifest)


def default_recorders(extra: Sequence[RecorderSpec] = ()) -> list[RecorderSpec]:
    """The worker recorders of every run: the run record, TensorBoard, MLflow (when ``tracking.mlflow_uri`` is set),
    ``extra``, and the test-only fault hook when ``UNET_DIST_FAULT`` is set here, on the driver (workers need not share
    its environment)."""
    fault = Fault.from_env()
    return [RunRecorder, TensorBoardRecorder, MlflowRecorder, *extra, *([fault] if fault else [])]


def loop_config(cfg: Config, run: Location, data: PreparedData, recorders: Sequence[RecorderSpec]) -> dict[str, Any]:
    """What every worker receives: the config without credentials (workers read them from their environment,
    :func:`~unet_dist.session.with_credentials`), data spec, run, recorder specs."""
    manifest = data.manifest
    class_names = list(manifest.get("class_names") or cfg.ingest.class_names)
    return {
        "cfg": public_config(cfg),
        "spec": data.spec,
        "run_uri": run.uri,
        "train_rows": data.train_rows,
        "extra_state": {
            "fingerprint": manifest.get("fingerprint"),
            "class_names": class_names,
            "inference": inference_block(cfg, data.spec, class_names, manifest),
        },
        "recorders": list(recorders),
    }


def dataset_ref(manifest: dict[str, Any]) -> dict[str, Any]:
    """How a run record names its dataset: URI and fingerprint."""
    return {"uri": manifest.get("uri"), "fingerprint": manifest.get("fingerprint")}


def inference_block(cfg: Config, spec: Any, class_names: list[str], manifest: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint needs to run on new images with no dataset reachable: channels, classes, normalisation."""
    return {
        "in_channels": cfg.model.in_channels,
        "num_classes": cfg.model.num_classes,
        "class_names": class_names,
        "image_stats": spec.stats,
        "pad_multiple": spec.pad_multiple,
        "dataset": manifest.get("uri"),
        "fingerprint": manifest.get("fingerprint"),
    }


class NotRetryable(Exception):
    """A worker raised an error a retry cannot fix; raised in Ray Train's controller so the run ends at once.
    ``storage``: the error was storage failing (an outage longer than ``storage.retry_s``)."""

    def __init__(self, message: str, storage: bool = False) -> None:
        super().__init__(message)
        self.storage = storage


def stop_on_user_errors() -> Any:
    """A Ray Train callback that ends the run on the first worker error that is a user error (config, data,
    checkpoint, storage settings): retrying would fail the same way, only later."""
    import ray.train

    class StopOnUserErrors(ray.train.UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
            for rank, err in sorted(worker_exceptions.items()):
                base = getattr(err, "_base_exc", err)
                if isinstance(base, UserError):
                    raise NotRetryable(f"rank {rank}: {type(base).__name__}: {base}", storage=isinstance(base, StorageError))

    return StopOnUserErrors()


def build_trainer(cfg: Config, run: Location, *, callbacks: Sequence[Any] = (), recorders: Sequence[RecorderSpec] | None = None,
                  datasets: PreparedData | None = None, gpu: GpuDecision | None = None) -> Any:
    """The ``TorchTrainer`` for one run at ``run`` (needs a connected Ray). ``callbacks``: Ray Train
    ``UserCallback``s (they run in Ray Train's controller); ``recorders``: the workers' recorder specs (default
    :func:`default_recorders`); ``datasets`` shares prepared data."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from unet_dist.data.pipeline import dataset_config, needs_split

    data = datasets or prepare_data(cfg, check_dataset(cfg))
    gpu = gpu or decide_gpu(cfg)
    resources: dict[str, float] = {"CPU": cfg.resources.cpus_per_worker}
    if gpu.use_gpu:
        resources["GPU"] = cfg.resources.gpus_per_worker
    storage_path, storage_fs = ray_storage(run.parent)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, run, data, default_recorders() if recorders is None else recorders),
        torch_config=TorchConfig(backend=collectives.backend(gpu.use_gpu)),
        scaling_config=ScalingConfig(num_workers=cfg.resources.num_workers, use_gpu=gpu.use_gpu, resources_per_worker=resources,
                                     placement_strategy=cfg.resources.placement_strategy),
        run_config=RunConfig(
            name=run.name, storage_path=storage_path, storage_filesystem=storage_fs,
            callbacks=[stop_on_user_errors(), *callbacks],
            failure_config=FailureConfig(max_failures=cfg.train.max_failures,
                                         controller_failure_limit=cfg.train.controller_failure_limit),
            logging_config=LoggingConfig(log_level="WARNING"),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep, checkpoint_score_attribute=cfg.train.monitor,
                                               checkpoint_score_order=cfg.train.monitor_mode),
        ),
        datasets=data.datasets,
        dataset_config=dataset_config(needs_split(data.datasets["train"])),
    )


def fit(cfg: Config, *, callbacks: Sequence[Any] = (), recorders: Sequence[RecorderSpec] = (), console: Any = None,
        progress: bool = True, verbose: bool = False) -> TrainSummary:
    """Train ``cfg.model`` on ``cfg.data`` with Ray Train; returns a :class:`TrainSummary`.

    ``callbacks``: Ray Train ``UserCallback``s for the driver side (``after_report`` with every epoch's metrics,
    ``after_exception``), e.g. an experiment tracker; ``recorders``: worker recorder specs added to the run record
    and TensorBoard (:mod:`unet_dist.train.recorder`)."""
    from rich.console import Console

    from unet_dist.data.pipeline import planned

    t_start = time.time()
    console = console or Console(stderr=True)
    manifest = preflight(cfg)
    name = cfg.train.name or new_run_name()
    run = RunDir(resolve(cfg.storage.uri, cfg.storage) / name)
    # Ray Train propagates this from the driver to its controller at fit() time, on any cluster.
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(cfg.train.worker_start_timeout_s)
    with ray_session(cfg, verbose=verbose):
        data = prepare_data(cfg, manifest)
        gpu = decide_gpu(cfg)
        console.print(f"[dim]{gpu.reason}[/]", highlight=False, soft_wrap=True)
        if note := planned(cfg.data, data.spec):
            console.print(f"[dim]{note}[/]", highlight=False, soft_wrap=True)
        trainer = build_trainer(cfg, run.loc, callbacks=callbacks, recorders=default_recorders(recorders), datasets=data, gpu=gpu)
        _start_record(run, cfg, name, manifest, gpu)
        try:
            _run(trainer, run, cfg, name, console if progress else None)
        finally:  # the run's end in MLflow, and whatever epochs rank 0 could not log
            if tracker := Tracker.of(cfg):
                tracker.run(run)
    return summarize(run, cfg, gpu.use_gpu, time.time() - t_start)


def _start_record(run: RunDir, cfg: Config, name: str, manifest: dict[str, Any], gpu: GpuDecision) -> None:
    start_record(run, new_record(cfg, name, run.uri, dataset_ref(manifest), use_gpu=gpu.use_gpu, gpu_reason=gpu.reason))


def _run(trainer: Any, run: RunDir, cfg: Config, name: str, console: Any) -> None:
    """``trainer.fit()`` under the live view; failures and interrupts close the run record and become user errors."""
    import ray.train

    view = LiveView(run, cfg, console) if console is not None else None
    try:
        with view or contextlib.nullcontext():
            result = fit_off_main_thread(trainer)
    except KeyboardInterrupt:
        close_record(run, "stopped", "interrupted by the user (Ctrl-C)")
        raise RunInterrupted(f"run {run.uri} interrupted (Ctrl-C); its checkpoints are kept. Resume it with: "
                             f"unet-dist train --data {cfg.data.dataset} --storage {cfg.storage.uri} --name {name} "
                             "(plus the same --config/--set options)") from None
    except ray.train.TrainingFailedError as err:
        cause = failure_cause(err)
        closed = close_record(run, "failed", cause)
        if storage_failure(err):
            raise StorageError(f"training run {run.uri} stopped: {cause}" + ("" if closed else " (its run.json could not be "
                               "updated either)") + f"; once storage answers, re-run with --name {name} (--set "
                               f"train.name={name}) to resume from its newest complete checkpoint") from None
        raise TrainingFailed(f"training run {run.uri} failed: {cause} (after up to {cfg.train.max_failures} worker-group "
                             f"restarts, train.max_failures); fix the cause and re-run with --name {name} "
                             f"(--set train.name={name}) to resume from its newest checkpoint") from err
    if result.error is not None:
        cause = failure_cause(result.error)
        finish_record(run, "failed", cause)
        raise TrainingFailed(f"training run {run.uri} failed: {cause}") from result.error
    finish_record(run, "finished")


def close_record(run: RunDir, status: Status, error: str | None = None) -> bool:
    """Close the run record; False when storage is down (the failure being reported may be that outage)."""
    try:
        finish_record(run, status, error)
    except StorageError:
        return False
    return True


def storage_failure(err: BaseException) -> bool:
    """Whether Ray Train's failure error is storage failing past its retries (on a worker or in the controller)."""
    controller = getattr(err, "controller_failure", None)
    return isinstance(controller, StorageError) or bool(getattr(controller, "storage", False))


def fit_off_main_thread(trainer: Any) -> Any:
    """``trainer.fit()`` in a thread, so Ctrl-C raises KeyboardInterrupt here: on the main thread Ray Train
    installs its own SIGINT handler, which aborts the run and exits the process without a word."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as err:  # handed to the main thread as it was raised
            box["error"] = err

    thread = threading.Thread(target=target, name="unet-dist-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


def failure_cause(err: BaseException) -> str:
    """One line naming the worker's (or controller's) exception, from Ray Train's failure error."""
    controller = getattr(err, "controller_failure", None)
    if isinstance(controller, NotRetryable):
        return str(controller)
    failures = getattr(err, "worker_failures", None) or {}
    if failures:
        rank, first = min(failures.items())
        return f"rank {rank}: {_describe(getattr(first, '_base_exc', first))}"
    return _describe(controller if isinstance(controller, BaseException) else err)


def _describe(err: BaseException) -> str:
    line = _last_exception_line(str(err))
    return line if line.startswith(type(err).__name__) else f"{type(err).__name__}: {line}"


def _last_exception_line(text: str) -> str:
    """The ``Type: message`` line of a traceback text (Ray embeds worker tracebacks in error strings)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head and head.replace(".", "").replace("_", "").isalnum() and head[0].isupper() and ":" in line:
            return line
    return lines[-1] if lines else ""


def summarize(run: RunDir, cfg: Config, use_gpu: bool, duration: float) -> TrainSummary:
    """The summary of a run from its record and files on storage."""
    record = run.read_record() or {}
    checkpoints = run.checkpoints()
    best = record.get("best") or {}
    return TrainSummary(
        name=run.loc.name, run_dir=run.uri, epochs=record.get("epochs", 0), monitor=cfg.train.monitor,
        best_metric=best.get("value"), best_val_iou=record.get("best_val_iou"), best_epoch=record.get("best_epoch"),
        best_checkpoint=record.get("best_checkpoint"),
        last_checkpoint=checkpoints[max(checkpoints)].uri if checkpoints else None,
        final_metrics=record.get("final_metrics", {}), metrics_file=(run.loc / METRICS_FILE).uri,
        tensorboard_dir=(run.loc / TENSORBOARD_DIR).uri, num_workers=cfg.resources.num_workers, use_gpu=use_gpu,
        duration_s=round(duration, 2),
    )


__all__ = ["fit", "build_trainer", "preflight", "prepare_data", "shared_datasets", "default_recorders", "TrainSummary",
           "TrainingFailed", "RunInterrupted", "new_run_name", "check_dataset", "dataset_ref"]
