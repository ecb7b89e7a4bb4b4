"""One typed schema for every run: model, data, ingest, train, tune, storage, resources, tracking.

The CLI, YAML files and ``jobs/`` all build a :class:`Config` through :func:`load_config`,
so defaults live here and nowhere else. Plain data with validation: imports no behaviour.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator

from unet_dist import catalog
from unet_dist.errors import ConfigError


class Choice:
    """A registry-backed name: validated against :data:`unet_dist.catalog.CHOICES` (the list the key's registry
    extends), so a name registered at run time is accepted and the README reference lists the choices."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, value: str) -> str:
        return catalog.check_choice(self.key, value)

    def __repr__(self) -> str:
        return "{" + ", ".join(catalog.CHOICES[self.key]) + "}"


def _choice(key: str) -> Any:
    return Annotated[str, AfterValidator(Choice(key))]


Pooling = _choice("model.pooling")
Unpooling = _choice("model.unpooling")
Activation = _choice("model.activation")
OutputActivation = _choice("model.output_activation")
Norm = _choice("model.norm")
Loss = _choice("train.loss")
Optimizer = _choice("train.optimizer")
Scheduler = _choice("train.scheduler")
TuneScheduler = _choice("tune.scheduler")
TuneSearch = _choice("tune.search")
MaskMode = Literal["binary", "multiclass", "instance"]
Intensity = Literal["auto", "dtype", "dataset_range", "percentile"]


class _Section(BaseModel):
    """Strict base: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The U-Net: encoder backbone, decoder and heads."""

    backbone: str = Field("scratch", description="Encoder: scratch, vgg11..vgg19(_bn), resnet18..resnet152 (see `unet-dist models`).")
    in_channels: int = Field(1, ge=1, le=4, description="Input channels (1 grayscale, 3 RGB).")
    num_classes: int = Field(2, ge=1, le=1024, description="Output channels; 1 means a single-logit binary head.")
    depth: int = Field(4, ge=1, le=6, description="Number of down-sampling levels (scratch 3-6, vgg <=5, resnet <=5).")
    base_filters: int = Field(16, ge=4, le=512, description="Filters at the first scratch level; doubles per level (16: the best quality per second in bench/quality.py).")
    convs_per_level: int = Field(2, ge=1, le=4, description="Convolutions per scratch encoder and decoder level.")
    pooling: Pooling = Field("max", description="Scratch down-sampling: max, avg or conv (strided).")
    unpooling: Unpooling = Field("transpose", description="Decoder up-sampling method.")
    activation: Activation = "relu"
    output_activation: OutputActivation = Field("none", description="none returns logits (what losses expect).")
    norm: Norm = "batch"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention: bool = Field(False, description="Attention gates on the skip connections.")
    weights: str | None = Field(None, description="Pretrained encoder: torchvision weights name (e.g. IMAGENET1K_V1) or a local/S3 state-dict file.")
    freeze_backbone: bool = False
    freeze_bn: bool = False

    @model_validator(mode="after")
    def _fits_the_catalog(self) -> "ModelConfig":
        """Unknown backbone, depth out of its range, maxunpool rules, torchvision weights names: refused here,
        before any cluster starts, from the model catalog (plain data: reading a config never imports torch)."""
        catalog.check_model_choices(self.backbone, self.depth, self.pooling, self.unpooling, self.weights)
        return self


class IngestConfig(_Section):
    """Turning a folder/bucket of images and masks into a sharded Parquet dataset."""

    mask_mode: MaskMode = Field("binary", description="binary: 0/1 or 0/255 (other values are errors); multiclass: ids 0..C-1 (palette ok); instance: id>0 is foreground.")
    class_names: list[str] = Field(default_factory=lambda: ["background", "foreground"], description="One name per class id (binary and instance: exactly 2).")
    split: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/val/test ratios, drawn over every pair found (valid or not), so skipping or fixing a bad file never moves others while its mask and image header are readable.")
    split_column: str | None = Field(None, description="Take the split from this manifest (CSV) column instead of ratios.")
    stratify: bool = Field(True, description="Keep every split in proportion within each stratum of image size class x channels x bit depth x foreground-fraction tertile (within one image of its share); false: a plain seeded random split.")
    group_column: str | None = Field(None, description="CSV column naming each pair's group (a patient, a plate, a slide): a group's images never straddle splits or folds.")
    folds: int = Field(0, ge=0, description="Deal the non-test pairs into this many folds (stratified and grouped like the split) for cross-validation; fold 0 is the val split. 0: no folds.")
    seed: int = Field(0, description="Seed of the ratio split.")
    skip_invalid: bool = Field(False, description="Write the valid pairs and list the invalid ones in the manifest, instead of failing and writing nothing.")
    rows_per_shard: int = Field(64, ge=1, description="Pairs per Parquet shard; ingest holds at most this many encoded pairs per split in memory.")
    intensity: Intensity = Field("auto", description="Pixel range mapped to 0..1 per dtype, recorded in image_stats.scale: auto (uint8 0..255; 16-bit 0..2^bits-1 of the observed bit depth; float observed min..max), dtype (0..255 / 0..65535 / float 0..1), dataset_range (observed min..max), percentile (percentile_low..percentile_high of the pixels).")
    percentile_low: float = Field(1.0, ge=0.0, le=100.0, description="Lower percentile for intensity=percentile.")
    percentile_high: float = Field(99.8, ge=0.0, le=100.0, description="Upper percentile for intensity=percentile.")
    problems_file: str | None = Field(None, description="Local file for the full list of invalid pairs (JSON lines); default: a new file in the system temp dir, never DEST.")

    @model_validator(mode="after")
    def _percentiles(self) -> "IngestConfig":
        if self.percentile_low >= self.percentile_high:
            raise ValueError(f"ingest.percentile_low ({self.percentile_low}) must be below ingest.percentile_high ({self.percentile_high})")
        return self

    @field_validator("folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("ingest.folds must be 0 (no folds) or at least 2")
        return v

    @field_validator("split")
    @classmethod
    def _ratios(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"ingest.split must be three non-negative ratios summing to 1, got {list(v)}")
        return v


class DataConfig(_Section):
    """Streaming an ingested dataset into training workers."""

    dataset: str = Field("", description="URI of an ingested dataset (dir with dataset.json); empty = synthetic demo data.")
    crop_size: int | Literal["auto"] = Field("auto", description="Training crop side (pads smaller images); auto (the default): planned from the dataset as nnU-Net plans its patch: the train split's median image side, capped so a batch holds at most 4 x 256^2 pixels, rounded down to a multiple of 16 and 2^model.depth (256 on 512^2 images at batch 4).")
    batch_size: int = Field(4, ge=1, description="Per-worker batch size.")
    val_batch_size: int = Field(2, ge=1)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    intensity_jitter: float = Field(0.1, ge=0.0, le=1.0, description="Max brightness/contrast change.")
    normalize: Literal["dataset", "image"] = Field("image", description="Standardise each image by its own per-channel mean/std (image, the default: nnU-Net's choice for non-CT data, robust to sets mixing modalities or exposures), or every image by the train split's (dataset). Checkpoints carry the choice, so evaluate and predict follow it.")
    foreground_oversample: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of training crops centred on a random foreground pixel (nnU-Net uses 1/3), so small objects on large empty images reach the loss; the rest are uniform random crops. An image without foreground gets a random crop.")
    num_crops_per_image: int | Literal["auto"] = Field(1, description="Random crops drawn per image per epoch; auto: the mean train image area over the crop area (at least 1), so an epoch covers about every pixel once (fewer, longer epochs: more images/s, fewer validations).")
    shuffle_buffer: int = Field(64, ge=1, description="Rows in each worker's local shuffle buffer (seeded per epoch).")
    @field_validator("num_crops_per_image", "crop_size")
    @classmethod
    def _int_or_auto(cls, v: int | str, info: ValidationInfo) -> int | str:
        least = {"num_crops_per_image": 1, "crop_size": 16}[info.field_name]
        if isinstance(v, int) and v < least:
            raise ValueError(f"data.{info.field_name} must be >= {least} or auto, got {v}")
        return v

    materialize: bool = Field(True, description="Read the dataset into the object store before training (splits under 64 MiB by the driver, larger ones by Ray Data tasks); needed when workers hold every CPU (else read tasks starve).")


REPORTED_METRICS = (
    "train_loss", "train_iou", "train_mean_iou", "train_dice", "train_pixel_acc",
    "val_loss", "val_iou", "val_mean_iou", "val_dice", "val_pixel_acc",
    "val_image_iou", "val_image_mean_iou", "val_image_dice", "val_image_mean_dice",
    "lr", "images_per_s", "epoch_time_s",
)
"""The scalar metrics each epoch reports (metrics.jsonl, Ray Train, Tune): what ``train.monitor`` may name."""


class TrainConfig(_Section):
    """Optimisation, checkpoints and fault tolerance."""

    name: str | None = Field(None, description="Run name (a new timestamped one by default; reusing a name resumes it).")
    epochs: int = Field(20, ge=1)
    time_budget_s: float | None = Field(None, gt=0, description="Stop after this many seconds of training (validation excluded), or at train.epochs, whichever comes first; the LR schedule (warm-up and decay) then follows the fraction of the budget used, so a budgeted run anneals fully.")
    val_every_steps: int | None = Field(None, ge=1, description="Also validate (and checkpoint) every this many optimiser steps within a pass over the training data; each validation is one reported epoch (metrics.jsonl row, checkpoint, Tune report), and train.epochs still counts passes.")
    val_every_s: float | Literal["auto"] | None = Field("auto", description="Also validate (and checkpoint) after this many seconds of training within a pass, as train.val_every_steps does. auto: a tenth of train.time_budget_s on a budgeted run (a run whose passes are long still gets about 10 validations and checkpoints), else once per pass. null: once per pass.")
    loss: Loss = "dice_ce"
    class_weights: list[float] | None = None
    ignore_index: int | None = None
    optimizer: Optimizer = "adamw"
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (after warm-up; the schedule decays from it).")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Scheduler = "cosine"
    scheduler_interval: Literal["step", "epoch"] = Field("step", description="Advance the LR schedule per optimiser step or per epoch.")
    warmup_epochs: int = Field(0, ge=0, description="Linear LR warm-up length in epochs.")
    poly_power: float = Field(0.9, gt=0, description="Exponent of scheduler=poly.")
    step_size: int = Field(10, ge=1, description="Epochs between decays for scheduler=step.")
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1, description="Gradient accumulation steps.")
    seed: int = 0
    amp: bool = Field(True, description="Mixed precision on GPU (bf16 where supported, else fp16 + scaler).")
    channels_last: bool = Field(True, description="channels_last memory format for the model and its inputs (GPU and CPU; 1.2x faster on CPU, BENCHMARKS.md).")
    monitor: str = Field("val_image_mean_iou", description="Reported metric that picks the best checkpoint (any numeric metrics.jsonl field, e.g. val_mean_iou, val_image_iou, val_loss; val_image_* are per-image means, the others pooled over pixels). The default, each image's mean IoU over its classes averaged over images, is what the field reports and one a degenerate one-class model cannot win; val_mean_iou is the pooled mean IoU (the earlier default, which a few large images decide on a mixed-size set).")
    monitor_mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower train.monitor is better.")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept (the best by train.monitor, plus the latest).")
    max_failures: int = Field(3, ge=0, description="Worker-group failures tolerated before the run fails.")
    controller_failure_limit: int = Field(3, ge=0, description="Controller retries (e.g. a lost node) before a clear error.")
    resume_from: str | None = Field(None, description="Checkpoint URI to start from.")
    log_images: int = Field(4, ge=0, description="Validation overlays written to TensorBoard per epoch.")
    progress_every: int = Field(5, ge=1, description="Steps between progress updates the driver's live view reads.")
    worker_start_timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for a worker group (e.g. a lost node) before counting a controller failure.")

    @field_validator("val_every_s")
    @classmethod
    def _positive_interval(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, (int, float)) and v <= 0:
            raise ValueError(f"train.val_every_s must be > 0, auto or null, got {v}")
        return v

    def validation_interval_s(self) -> float | None:
        """Seconds of training between validations within a pass (``val_every_s`` with auto resolved), or None."""
        if self.val_every_s == "auto":
            return None if self.time_budget_s is None else self.time_budget_s / 10
        return self.val_every_s

    @field_validator("monitor")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in REPORTED_METRICS:
            raise ValueError(f"train.monitor: unknown metric {v!r}; choose one of: {', '.join(REPORTED_METRICS)}")
        return v


class TuneConfig(_Section):
    """A Ray Tune campaign over the schema above: every trial is a data-parallel training run of the base config
    with the searched keys replaced."""

    name: str = Field("tune", description="Campaign name: its folder under storage.uri (an existing name needs --resume).")
    search_space: dict[str, Any] = Field(default_factory=dict, description="Dotted config keys -> {choice\\|grid: [...]} or {uniform\\|loguniform\\|randint: [lo, hi]} or {quniform: [lo, hi, q]}.")
    scheduler: TuneScheduler = Field("asha", description="Trial scheduler; asha and hyperband stop poor trials early at rungs measured in epochs.")
    search: TuneSearch = Field("random", description="random (and grid keys) with Tune's variant generator, or optuna (pip install optuna).")
    num_samples: int = Field(8, ge=1, description="Trials per grid point (random/optuna: trials in all).")
    max_concurrent_trials: int = Field(1, ge=1)
    metric: str | None = Field(None, description="Metric the scheduler and the ranking use; default: train.monitor.")
    mode: Literal["max", "min"] | None = Field(None, description="Default: train.monitor_mode.")
    time_budget_s: float | None = Field(None, gt=0, description="Stop launching and end the campaign after this many seconds (Tune's time_budget_s).")
    grace_period: int = Field(2, ge=1, description="ASHA/Hyperband: epochs before a trial may be stopped.")
    reduction_factor: int = Field(3, ge=2, description="ASHA/Hyperband: 1/reduction_factor of trials go on at each rung.")
    trial_cpus: float = Field(0.1, gt=0, description="CPU share of each trial's driver (its Ray Train workers take their own resources).")
    top: int = Field(5, ge=1, description="Trials shown in the final ranking.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        if v is not None and v not in REPORTED_METRICS:
            raise ValueError(f"tune.metric: unknown metric {v!r}; choose one of: {', '.join(REPORTED_METRICS)}")
        return v


class StorageConfig(_Section):
    """Where runs live. Credentials come from the environment or here, never from a URI, and are never written out."""

    uri: str = Field("./runs", description="Local path, file:// or s3://bucket/prefix.")
    endpoint_url: str | None = Field(None, description="S3 endpoint (else AWS_ENDPOINT_URL).")
    region: str | None = Field(None, description="S3 region (else AWS_DEFAULT_REGION).")
    access_key_id: SecretStr | None = Field(None, exclude=True, description="Else AWS_ACCESS_KEY_ID.")
    secret_access_key: SecretStr | None = Field(None, exclude=True, description="Else AWS_SECRET_ACCESS_KEY.")
    retry_s: float = Field(120.0, ge=0, description="Seconds an S3 call is retried (exponential backoff) through an outage: "
                                                    "connection errors, timeouts, 5xx, SlowDown; never 403/404.")


class ResourcesConfig(_Section):
    """The Ray cluster and the shape of the worker group."""

    address: str | None = Field(None, description="Ray address (host:port, ray://host:10001, or auto: the Ray started "
                                              "on this machine); default: RAY_ADDRESS, else a local Ray of its own.")
    num_workers: int | tuple[int, int] = Field(2, description="Workers, or [min, max] for elastic training.")
    use_gpu: bool | Literal["auto"] = Field("auto", description="auto: use GPUs when the cluster has them.")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="torch.set_num_threads per worker (default: cpus_per_worker).")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @field_validator("num_workers", mode="before")
    @classmethod
    def _range(cls, v: Any) -> Any:
        if isinstance(v, str) and "-" in v:
            lo, _, hi = v.partition("-")
            v = (lo.strip(), hi.strip())
        if isinstance(v, (list, tuple)):
            lo, hi = (int(x) for x in v)
            if not 1 <= lo <= hi:
                raise ValueError(f"resources.num_workers range must be 1 <= min <= max, got {lo}-{hi}")
            return (lo, hi)
        return v

    @field_validator("num_workers")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"resources.num_workers must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _no_shared_gpu_in_ddp(self) -> "ResourcesConfig":
        """Two DDP ranks of one run on one GPU fail in NCCL ("Duplicate GPU detected", ray-project/ray#48012):
        fractional GPUs are for 1-worker runs (trials packed onto a GPU), refused here before Ray starts."""
        most = self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers
        if self.use_gpu is not False and self.gpus_per_worker < 1 and most > 1:
            raise ValueError(
                f"resources.gpus_per_worker={self.gpus_per_worker:g} with resources.num_workers={most}: ranks of one "
                "DDP run would share a GPU, which NCCL refuses; set resources.gpus_per_worker=1, or "
                "resources.num_workers=1 to pack fractional runs or trials onto a GPU, or resources.use_gpu=false")
        return self


def uri_without_credentials(uri: str, what: str) -> str:
    """``uri``, refused when it holds a user or password (they would be written wherever the URI is)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ValueError(f"{what}: {parts.scheme}://***@{parts.hostname}: a tracking URI must not hold credentials; "
                         "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
    return uri


class TrackingConfig(_Section):
    """Experiment tracking: each run and trial mirrored into MLflow as it trains (storage stays the record)."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (http://127.0.0.1:5000, databricks, a local "
                                   "folder); null: no tracking. Rank 0 logs each epoch and the driver the run's end; a "
                                   "server that is down costs one warning, never the run, and `unet-dist collect "
                                   "STORAGE --mlflow URI` logs what it missed. Credentials come from "
                                   "MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, never the URI.")
    experiment: str = Field("unet-dist", min_length=1, description="MLflow experiment (created when missing).")
    registered_model: str = Field("unet-dist", min_length=1, description="Registered model `unet-dist export --mlflow` "
                                  "adds the exported models to as versions (the champion under the alias champion).")

    @field_validator("mlflow_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return None if v is None else uri_without_credentials(v, "tracking.mlflow_uri")


class Config(_Section):
    """Everything a run needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict without credentials, for checkpoints, metrics and reports."""
        return self.model_dump(mode="json")

    @property
    def campaign_metric(self) -> tuple[str, str]:
        """``(metric, mode)`` a campaign ranks and schedules by: ``tune.metric``/``mode``, else the runs' monitor."""
        return self.tune.metric or self.train.monitor, self.tune.mode or self.train.monitor_mode


def _format_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _section_at(prefix, e["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else ""
            lines.append(f"{key}: unknown key" + (f"; allowed keys: {allowed}" if allowed else ""))
        elif msg.startswith(key.split(".")[0] + "."):
            lines.append(msg)
        else:
            lines.append(f"{key}: invalid value {e.get('input')!r}: {msg}")
    return "; ".join(lines)


def _section_at(prefix: str, loc: Sequence[Any]) -> type[BaseModel] | None:
    cls: type[BaseModel] = Config
    for part in [p for p in prefix.split(".") if p] + list(loc):
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def validate_section(cls: type[BaseModel], data: Mapping[str, Any], prefix: str) -> Any:
    """Build one section (e.g. ModelConfig) from a dict, turning pydantic errors into a one-line ConfigError."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_error(err, prefix)) from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["model.depth=5", "train.lr=1e-3"]`` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.backbone=resnet34")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, Mapping) and isinstance(merged.get(k), dict) else v
    return merged


def parse_yaml_file(path: str | Path, what: str = "config file", hint: str = "pass an existing YAML file (examples in jobs/configs/)") -> Any:
    """The YAML document in ``path`` (``{}`` when empty), with one-line errors naming ``what`` for a missing file
    (adding ``hint``) and for a syntax error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} not found; {hint}")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {err}".splitlines()[0]) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict with a clear error for missing files and syntax errors."""
    p = Path(path)
    data = parse_yaml_file(p)
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections (model, data, train, ...)")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults <- ``base`` <- YAML file <- ``--set`` overrides, validated as one :class:`Config`."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    data = _merge(data, parse_overrides(overrides))
    return validate_section(Config, data, "")


def _type_name(f: Any) -> str:
    """How the reference shows a field's type: a registry-backed name lists its choices (``{ce, bce, ...}``)."""
    choices = [m.func for m in f.metadata if isinstance(getattr(m, "func", None), Choice)]
    if choices:
        return repr(choices[0])
    return str(f.annotation).replace("typing.", "").replace("pydantic.types.", "").replace("<class '", "").replace("'>", "")


def config_reference() -> str:
    """A Markdown table of every config key with type, default and description, generated from the schema."""
    import json

    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for section, field in Config.model_fields.items():
        cls = field.annotation
        for name, f in cls.model_fields.items():
            default = f.get_default(call_default_factory=True)
            typ = _type_name(f)
            doc = (f.description or "").replace("|", "\\|")
            shown = "(secret)" if "Secret" in typ else json.dumps(default, default=str)
            rows.append(f"| `{section}.{name}` | `{typ}` | `{shown}` | {doc} |")
    return "\n".join(rows)
