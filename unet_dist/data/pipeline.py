"""Streaming an ingested dataset into Ray Train workers.

Driver side, :func:`build_datasets` reads the Parquet shards (local or S3) and, by default, materialises the
still-encoded rows in the object store before training starts: a split of up to :data:`DRIVER_READ_MAX_BYTES` is read
by the driver itself (a Ray Data read costs seconds of task start-up, more than reading a few MB), a larger one by
Ray Data read tasks across the cluster. That read needs free
CPUs: with 2 training workers x 1 CPU on a 2-CPU cluster a lazy ``read_parquet`` never gets one and the
run hangs, while the materialised dataset needs no further tasks. Encoded PNG rows cost only their
compressed size in memory.

Worker side, :func:`iter_train_batches` decodes, normalises (:func:`~unet_dist.data.codec.to_model_input`)
and augments (pad/random crop, flips, 90-degree rotations, intensity jitter) in the training process.
Measured on this project's 2-CPU box (``bench/pipeline.py``) this costs a few milliseconds per 256-px crop
against hundreds for a training step, so the extra Ray Data stage would buy nothing and would reintroduce
the CPU contention above. Every crop draws its parameters from a generator seeded by
``(epoch_seed, image id, crop index)``: augmentation differs per epoch and is reproducible whichever worker
receives the image.

Pass ``dataset_config()`` to ``TorchTrainer`` so "train" is split across workers (a small materialised train split
is not: :func:`needs_split`) and "val" is not: each
worker then serves the validation images whose id hashes to its rank, whole, so validation covers each real pixel
exactly once (padding is marked ignore, ``-1``). Each validation image is padded only to its own size rounded up
to ``pad_multiple`` and batched with images of the same padded shape, so its predictions never depend on which
other images share its batch, worker count or batch size.

Both driver-side functions take the manifest the caller already read (:func:`~unet_dist.data.manifest.read_manifest`),
so a run reads ``dataset.json`` once.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from unet_dist.config import DataConfig, StorageConfig
from unet_dist.data.codec import decode_image, decode_mask, to_model_input
from unet_dist.data.manifest import split_paths
from unet_dist.errors import ConfigError, DataError

if TYPE_CHECKING:
    import ray.data

IGNORE_INDEX = -1
COLUMNS = ["id", "image", "mask", "height", "width"]


@dataclass(frozen=True)
class PipelineSpec:
    """Everything a worker needs to turn rows into batches; small and picklable (pass it in train_loop_config)."""

    in_channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int = 256
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    intensity_jitter: float = 0.1
    foreground_oversample: float = 0.0
    num_crops_per_image: int = 1
    shuffle_buffer: int = 64
    pad_multiple: int = 1
    scale: tuple[tuple[str, float, float], ...] = ()
    intensity: str = "dtype"
    normalize: str = "dataset"
    train_rows: int | None = None  # rows in the train split: each worker's equal share when "train" is not split

    @property
    def stats(self) -> dict[str, Any]:
        """The ``image_stats`` form :func:`~unet_dist.data.codec.to_model_input` takes (and checkpoints carry)."""
        out: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std)}
        if self.scale:
            out["scale"] = {"intensity": self.intensity, "ranges": {d: [lo, hi] for d, lo, hi in self.scale}}
        if self.normalize != "dataset":
            out["normalize"] = self.normalize
        return out

    def with_stats(self, stats: dict[str, Any]) -> "PipelineSpec":
        """This spec normalising with ``stats`` instead (a checkpoint's training statistics)."""
        return replace(self, mean=tuple(stats["mean"]), std=tuple(stats["std"]), normalize=stats.get("normalize", "dataset"),
                       **_scale_fields(stats))


def _scale_fields(stats: dict[str, Any]) -> dict[str, Any]:
    scale = stats.get("scale")
    if not scale:
        return {}
    ranges = tuple((d, float(lo), float(hi)) for d, (lo, hi) in sorted(scale["ranges"].items()))
    return {"scale": ranges, "intensity": str(scale.get("intensity", "dtype"))}


AUTO_CROP_BATCH_PIXELS = 4 * 256**2  # the defaults' batch (4 crops of 256²): fits a 2-core worker and any GPU


def crop_size(cfg: DataConfig, manifest: dict[str, Any], multiple: int = 1) -> int:
    """``data.crop_size``, with ``auto`` planned from the manifest as nnU-Net plans its patch from the dataset's
    fingerprint: the train split's median image side (the shorter median of height and width), capped so a batch
    holds at most :data:`AUTO_CROP_BATCH_PIXELS`, rounded down to a multiple of ``multiple`` (2**depth) and 16."""
    if cfg.crop_size != "auto":
        return int(cfg.crop_size)
    median = manifest.get("image_size", {}).get("median_hw")
    side = float(min(median)) if median else math.sqrt(_mean_train_area(manifest))  # older manifests: the mean image
    step = max(16, multiple)
    return max(step, int(min(side, math.sqrt(AUTO_CROP_BATCH_PIXELS / cfg.batch_size))) // step * step)


def planned(cfg: DataConfig, spec: PipelineSpec) -> str | None:
    """One line on what ``auto`` settings resolved to (shown when a run starts), or None without any."""
    parts = [f"crop {spec.crop_size}x{spec.crop_size} (data.crop_size=auto)"] if cfg.crop_size == "auto" else []
    if cfg.num_crops_per_image == "auto":
        parts.append(f"{spec.num_crops_per_image} crop(s) per image (data.num_crops_per_image=auto)")
    return "planned from the dataset: " + ", ".join(parts) if parts else None


def crops_per_image(cfg: DataConfig, manifest: dict[str, Any], crop: int) -> int:
    """``data.num_crops_per_image``, with ``auto`` resolved from the manifest: the mean train image area over the
    area of ``crop``-sided crops, rounded, at least 1 (4 for 512² images and 256² crops)."""
    if cfg.num_crops_per_image != "auto":
        return int(cfg.num_crops_per_image)
    return max(1, round(_mean_train_area(manifest) / crop**2))


def _mean_train_area(manifest: dict[str, Any]) -> float:
    train = manifest.get("splits", {}).get("train", {})
    return train.get("pixels", 0) / max(1, train.get("count", 0))


def pipeline_spec(cfg: DataConfig, storage: StorageConfig | None, in_channels: int, manifest: dict[str, Any],
                  pad_multiple: int = 1) -> PipelineSpec:
    """The worker-side spec for the dataset whose ``manifest`` the caller read; ``pad_multiple`` rounds validation
    sizes up (e.g. 2**depth). ``storage`` is unused and kept so every data entry point takes the same leading args."""
    stats = manifest["image_stats"]
    crop = crop_size(cfg, manifest, pad_multiple)
    return PipelineSpec(
        in_channels=in_channels, num_classes=int(manifest["num_classes"]), mean=tuple(stats["mean"]), std=tuple(stats["std"]),
        **_scale_fields(stats), crop_size=crop, hflip=cfg.hflip, vflip=cfg.vflip, rot90=cfg.rot90, intensity_jitter=cfg.intensity_jitter,
        foreground_oversample=cfg.foreground_oversample, normalize=cfg.normalize,
        num_crops_per_image=crops_per_image(cfg, manifest, crop), shuffle_buffer=cfg.shuffle_buffer, pad_multiple=pad_multiple,
    )


def build_datasets(cfg: DataConfig, storage: StorageConfig | None, in_channels: int, manifest: dict[str, Any],
                   splits: tuple[str, ...] = ("train", "val")) -> dict[str, "ray.data.Dataset"]:
    """Ray Datasets of encoded rows of the dataset ``manifest`` describes (local or S3), one per split in ``splits``."""
    if in_channels not in (1, 3) and manifest["channels"] != in_channels:
        raise ConfigError(f"model.in_channels={in_channels}: dataset {manifest['uri']} has {manifest['channels']}-channel images; use 1 or 3")
    out: dict[str, ray.data.Dataset] = {}
    for split in splits:
        paths, fs = split_paths(manifest, split, storage)
        if not paths:
            raise DataError(f"dataset {manifest['uri']} has no {split} images; re-ingest with a non-zero {split} share in ingest.split")
        out[split] = _materialized(paths, fs) if cfg.materialize else _read(paths, fs)
    return out


DRIVER_READ_MAX_BYTES = 64 * 2**20
"""Splits up to this many Parquet bytes are read by the driver straight into the object store (one block per shard,
as Ray Data's read makes): 0.06 s instead of 4.3 s for ISBI's train + val on 2 cores (``bench/startup.py``)."""


def _read(paths: list[str], fs: Any) -> "ray.data.Dataset":
    import ray.data

    return ray.data.read_parquet(paths, filesystem=fs, columns=COLUMNS, override_num_blocks=len(paths))


def _materialized(paths: list[str], fs: Any) -> "ray.data.Dataset":
    """The split's encoded rows in the object store: read here when small, else by Ray Data read tasks."""
    import pyarrow.parquet as pq
    import ray.data

    if sum(info.size or 0 for info in fs.get_file_info(paths)) > DRIVER_READ_MAX_BYTES:
        return _read(paths, fs).materialize()
    return ray.data.from_arrow([pq.read_table(path, filesystem=fs, columns=COLUMNS) for path in paths])


def dataset_config(split_train: bool = True) -> Any:
    """The ``ray.train.DataConfig`` these iterators expect: "val" is never split (each worker keeps its images,
    :func:`iter_val_batches`); "train" is split across workers by Ray Data's streaming split unless ``split_train`` is
    False, when every worker streams all of it and keeps an equal share (:func:`iter_train_batches`)."""
    import ray.train

    return ray.train.DataConfig(datasets_to_split=["train"] if split_train else [])


def needs_split(ds: "ray.data.Dataset") -> bool:
    """Whether "train" goes through Ray Data's streaming split: unless it is materialised and at most
    :data:`DRIVER_READ_MAX_BYTES`, small enough for every worker to stream all of it, which saves the split's start-up
    (~2 s each run and each trial on 2 cores)."""
    from ray.data.dataset import MaterializedDataset

    return not (isinstance(ds, MaterializedDataset) and ds.size_bytes() <= DRIVER_READ_MAX_BYTES)


def decode_row(image: bytes, mask: bytes, spec: PipelineSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded row -> (normalised float32 C x H x W, int64 H x W labels)."""
    x = to_model_input(decode_image(image), spec.in_channels, spec.stats)
    y = torch.from_numpy(decode_mask(mask))
    return x, y


def crop_seed(epoch_seed: int, image_id: str, k: int = 0) -> int:
    """A stable 63-bit seed per (epoch, image, crop)."""
    h = hashlib.blake2b(f"{epoch_seed}:{image_id}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _randint(g: torch.Generator, high: int) -> int:
    return int(torch.randint(0, high + 1, (1,), generator=g)) if high > 0 else 0


def crop_origin(mask: torch.Tensor, size: int, foreground_oversample: float, g: torch.Generator) -> tuple[int, int]:
    """``(top, left)`` of a ``size`` crop of ``mask`` (at least ``size`` on each side): with probability
    ``foreground_oversample`` centred on a random foreground pixel (class > 0; kept inside the image), else
    uniform. Draws nothing extra from ``g`` when ``foreground_oversample`` is 0, so such crops stay as they were."""
    h, w = mask.shape[-2:]
    if foreground_oversample > 0 and float(torch.rand(1, generator=g)) < foreground_oversample:
        ys, xs = torch.nonzero(mask.reshape(h, w) > 0, as_tuple=True)
        if len(ys):
            i = _randint(g, len(ys) - 1)
            return (min(max(int(ys[i]) - size // 2, 0), h - size), min(max(int(xs[i]) - size // 2, 0), w - size))
    return _randint(g, h - size), _randint(g, w - size)


def augment(image: torch.Tensor, mask: torch.Tensor, spec: PipelineSpec, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint pad-to-crop, crop (uniform, or centred on foreground: ``spec.foreground_oversample``), flips, rot90 and
    intensity jitter; mask padding is IGNORE_INDEX."""
    img, msk = tv_tensors.Image(image), tv_tensors.Mask(mask)
    size = spec.crop_size
    h, w = msk.shape[-2:]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph or pw:
        top, left = _randint(g, ph), _randint(g, pw)
        padding = [left, top, pw - left, ph - top]
        img = F.pad(img, padding, fill=0.0)
        msk = F.pad(msk, padding, fill=IGNORE_INDEX)
        h, w = h + ph, w + pw
    top, left = crop_origin(msk, size, spec.foreground_oversample, g)
    img, msk = F.crop(img, top, left, size, size), F.crop(msk, top, left, size, size)
    flips = torch.rand(3, generator=g)
    if spec.hflip and flips[0] < 0.5:
        img, msk = F.horizontal_flip(img), F.horizontal_flip(msk)
    if spec.vflip and flips[1] < 0.5:
        img, msk = F.vertical_flip(img), F.vertical_flip(msk)
    if spec.rot90:
        k = _randint(g, 3)
        if k:
            img, msk = torch.rot90(img, k, (-2, -1)), torch.rot90(msk, k, (-2, -1))
    if spec.intensity_jitter > 0:
        contrast, shift = ((torch.rand(2, generator=g) * 2 - 1) * spec.intensity_jitter).tolist()
        img = img * (1 + contrast) + shift
    return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor).contiguous()


def iter_train_batches(shard: Any, batch_size: int, epoch_seed: int, spec: PipelineSpec, rank: int = 0,
                       world_size: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """Augmented ``{"image": N x C x S x S float32, "mask": N x S x S int64}`` crops from a worker's shard for one epoch.

    A shard that is the whole train split (``dataset_config(split_train=False)``) is shuffled the same way on every
    worker (the same seed), and rank ``r`` keeps positions ``r, r + world_size, ...``: disjoint, equal shares of
    ``spec.train_rows // world_size`` rows, as Ray Data's equal split gives."""
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for image_id, image, mask in _my_rows(shard, batch_size, epoch_seed, spec, rank, world_size):
        x, y = decode_row(image, mask, spec)
        for k in range(spec.num_crops_per_image):
            g = torch.Generator().manual_seed(crop_seed(epoch_seed, str(image_id), k))
            xa, ya = augment(x, y, spec, g)
            images.append(xa)
            masks.append(ya)
            if len(images) == batch_size:
                yield {"image": torch.stack(images), "mask": torch.stack(masks)}
                images, masks = [], []
    if images:
        yield {"image": torch.stack(images), "mask": torch.stack(masks)}


def _my_rows(shard: Any, batch_size: int, epoch_seed: int, spec: PipelineSpec, rank: int,
             world_size: int) -> Iterator[tuple[Any, Any, Any]]:
    """``(id, image, mask)`` of this worker's train rows, in the epoch's shuffled order."""
    whole = world_size > 1 and not _is_split(shard)
    if whole and spec.train_rows is None:
        raise ValueError("an unsplit train shard needs spec.train_rows to give every worker an equal share")
    end = (spec.train_rows // world_size) * world_size if whole else None
    position = 0
    for rows in shard.iter_batches(batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=spec.shuffle_buffer,
                                   local_shuffle_seed=epoch_seed):
        for row in zip(rows["id"], rows["image"], rows["mask"]):
            if not whole:
                yield row
            elif position >= end:
                return
            elif position % world_size == rank:
                yield row
            position += 1


def _is_split(shard: Any) -> bool:
    try:
        from ray.data._internal.iterator.stream_split_iterator import StreamSplitDataIterator
    except ImportError:
        return False
    return isinstance(shard, StreamSplitDataIterator)


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def collate_whole(samples: list[tuple[torch.Tensor, torch.Tensor]], pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad whole images to a common size (rounded up to ``pad_multiple``): image with 0, mask with IGNORE_INDEX."""
    h = _round_up(max(x.shape[-2] for x, _ in samples), pad_multiple)
    w = _round_up(max(x.shape[-1] for x, _ in samples), pad_multiple)
    images = [pad_to(x, h, w, 0.0) for x, _ in samples]
    masks = [pad_to(y, h, w, IGNORE_INDEX) for _, y in samples]
    return {"image": torch.stack(images), "mask": torch.stack(masks)}


def pad_to(t: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    """Pad the bottom and right of ``t`` (``... x H x W``) to ``height x width`` with ``value``."""
    return nnf.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value)


def padded_shape(height: int, width: int, pad_multiple: int) -> tuple[int, int]:
    """An image's own validation size: its size rounded up to ``pad_multiple``, whatever else is in its batch."""
    return _round_up(height, pad_multiple), _round_up(width, pad_multiple)


def _mine(image_id: Any, rank: int, world_size: int) -> bool:
    return world_size == 1 or zlib.crc32(str(image_id).encode()) % world_size == rank


def iter_val_batches(shard: Any, batch_size: int, spec: PipelineSpec, rank: int | None = None,
                     world_size: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Whole validation images, this worker's share when "val" is unsplit (see dataset_config()).

    Each image is padded to its own size rounded up to ``spec.pad_multiple`` and batched only with images of the
    same padded shape (a bucket is emitted when it holds ``batch_size`` images, the rest at the end), so every
    image's predictions are the same whatever the batch size or number of workers.
    Rank and world size default to the Ray Train context (0 and 1 outside Train).
    """
    if _is_split(shard):
        rank, world_size = 0, 1
    elif rank is None or world_size is None:
        rank, world_size = _train_rank()
    buckets: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for rows in shard.iter_batches(batch_size=max(batch_size, 16), batch_format="numpy"):
        for image_id, image, mask in zip(rows["id"], rows["image"], rows["mask"]):
            if not _mine(image_id, rank, world_size):
                continue
            x, y = decode_row(image, mask, spec)
            bucket = buckets.setdefault(padded_shape(*y.shape, spec.pad_multiple), [])
            bucket.append((x, y))
            if len(bucket) == batch_size:
                yield collate_whole(bucket, spec.pad_multiple)
                bucket.clear()
    for bucket in buckets.values():
        if bucket:
            yield collate_whole(bucket, spec.pad_multiple)


def _train_rank() -> tuple[int, int]:
    try:
        import ray.train

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()
    except Exception:
        return 0, 1
