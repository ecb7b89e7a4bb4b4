"""``unet-dist predict``: masks (and overlays) for a folder or ``s3://`` prefix of new images, in this process or as a
Ray Data job over a cluster.

Every image goes through one function, :func:`predict_file` (decode with :mod:`unet_dist.data.codec`, normalise with
the checkpoint's training statistics, sliding-window inference from :mod:`unet_dist.inference.tiles`, write the mask),
whether the local loop or a Ray actor calls it, so both write the same bytes. Masks land in ``OUT`` under the
images' relative names with a ``.png`` suffix: two-class models write 0 (background) / 255 (foreground) grayscale
PNGs, more classes a palette PNG whose pixel values are the class ids. An image that cannot be decoded or fed to the
model is skipped and reported by name; the others are still written.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from unet_dist.config import Config, ResourcesConfig, StorageConfig
from unet_dist.data.codec import IMAGE_SUFFIXES, decode_image
from unet_dist.errors import DataError, UserError
from unet_dist.inference.masks import encode_mask, mask_name, mask_values
from unet_dist.inference.model import LoadedModel, load_model
from unet_dist.inference.overlay import overlay_png
from unet_dist.inference.tiles import Tiling, predict_tiled, tile_boxes
from unet_dist.storage import Location, check_writable, credential_env, public_storage, resolve, with_env_settings

OVERLAY_DIR = "overlays"
"""Overlays go to ``OUT/overlays/`` under the same relative names as the masks."""


@dataclass
class PredictSummary:
    """What ``predict`` did: counts, where masks went, what their pixel values mean, and the skipped images."""

    checkpoint: str
    images: str
    out: str
    predicted: int
    skipped: list[dict[str, str]]
    mask_values: dict[str, int]
    tile: int
    overlap: float
    tta: bool
    tiles: int
    megapixels: float
    duration_s: float
    ray: bool
    overlays: str | None = None
    workers: int | None = None
    device: str = "cpu"
    masks: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("masks")
        return json.dumps(data)

    def headline(self) -> str:
        values = ", ".join(f"{name} {value}" for name, value in self.mask_values.items())
        return f"[green]wrote {self.predicted} masks[/] to [bold]{self.out}[/] ({values})"

    def fields(self) -> list[tuple[str, Any]]:
        """``(label, value)`` lines: overlays, tiling, speed, duration."""
        return [("overlays", self.overlays or "-"),
                ("tiles", f"{self.tiles} of {self.tile} px, overlap {self.overlap:g}{', flip TTA' if self.tta else ''}"),
                ("images/s", f"{self.predicted / max(self.duration_s, 1e-9):.2f} on {self.device}{' (Ray)' if self.ray else ''}"),
                ("duration_s", f"{self.duration_s:.1f}")]


def predict_file(model: LoadedModel, src: Location, rel: str, out: Location, tiling: Tiling,
                 overlay: bool) -> dict[str, Any]:
    """Predict one image and write its mask (and overlay) under ``out``: the one per-image path of the local loop and
    of the Ray actors. A problem with the image itself comes back as ``{"image", "error"}`` instead of raising."""
    try:
        pixels = decode_image(src.read_bytes())
        x = model.preprocess(pixels)
    except UserError as err:
        return {"image": rel, "error": str(err)}
    labels = predict_tiled(model, x, tiling).cpu().numpy()
    name = mask_name(rel)
    (out / name).write_bytes(encode_mask(labels, model.cfg.model.num_classes))
    if overlay:
        (out / OVERLAY_DIR / name).write_bytes(overlay_png(pixels, labels, model.image_stats))
    height, width = labels.shape
    return {"image": rel, "mask": name, "tiles": len(tile_boxes(height, width, tiling)), "pixels": height * width,
            "device": model.device.type}


def list_images(images: Location, out: Location) -> list[tuple[Location, str]]:
    """``(location, relative name)`` of every image file under ``images`` (or ``images`` itself), sorted; hidden files
    and anything under ``out`` are left out. Raises DataError for a missing or empty source or clashing mask names."""
    if not images.exists():
        raise DataError(f"{images.uri} does not exist: pass a folder or s3:// prefix of images, or one image file")
    if images.uri.rstrip("/") == out.uri.rstrip("/"):
        raise DataError(f"OUT is the IMAGES folder ({out.uri}): masks would overwrite the images; pass another OUT")
    if not images.isdir():
        if not images.name.lower().endswith(IMAGE_SUFFIXES):
            raise DataError(f"{images.uri} is not an image ({', '.join(IMAGE_SUFFIXES)})")
        return [(images, images.name)]
    inside_out = out.path.rstrip("/") + "/"
    found = []
    for path in sorted(images.fs.find(images.path)):
        rel = posixpath.relpath(path, images.path)
        if rel.lower().endswith(IMAGE_SUFFIXES) and not any(p.startswith(".") for p in rel.split("/")) \
                and not (path + "/").startswith(inside_out):
            found.append((images / rel, rel))
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {images.uri}")
    by_mask: dict[str, str] = {}
    for _, rel in found:
        other = by_mask.setdefault(mask_name(rel), rel)
        if other != rel:
            raise DataError(f"{other} and {rel} in {images.uri} would both write {mask_name(rel)}; rename one")
    return found


class PredictActor:
    """A Ray Data actor holding one model (on a GPU when the actor has one) that predicts and writes whole images."""

    def __init__(self, model: tuple[Any], out: str, storage: StorageConfig, tiling: Tiling, overlay: bool,
                 threads: int) -> None:
        import ray

        torch.set_num_threads(max(1, threads))
        loaded = ray.get(model[0])
        self.model = loaded.to("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        self.storage, self.tiling, self.overlay = storage, tiling, overlay
        self.out = resolve(out, storage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        records = [predict_file(self.model, resolve(str(uri), self.storage), str(rel), self.out, self.tiling, self.overlay)
                   for uri, rel in zip(batch["uri"], batch["rel"])]
        return {"record": [json.dumps(r) for r in records]}


def _run_local(model: LoadedModel, items: list[tuple[Location, str]], out: Location, tiling: Tiling, overlay: bool,
               advance: Callable[[], None]) -> Iterable[dict[str, Any]]:
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    for src, rel in items:
        yield predict_file(model, src, rel, out, tiling, overlay)
        advance()


def actor_pool(cfg: Config, workers: int | None, threads: int) -> tuple[bool, int]:
    """``(use_gpu, most actors)`` on the connected cluster: one GPU per actor when it has (or can launch) GPUs,
    else ``threads`` CPUs per actor."""
    import ray

    from unet_dist.session import decide_gpu

    gpu = decide_gpu(cfg).use_gpu
    available = ray.cluster_resources().get("GPU", 1) if gpu else ray.cluster_resources().get("CPU", 1) / threads
    return gpu, workers or max(1, int(available))


def _run_ray(model: LoadedModel, items: list[tuple[Location, str]], out: Location, tiling: Tiling, overlay: bool,
             storage: StorageConfig, gpu: bool, size: int, threads: int,
             advance: Callable[[], None]) -> Iterable[dict[str, Any]]:
    """The same per-image function as Ray Data ``map_batches`` over a pool of at most ``size`` model-holding actors."""
    import ray

    ds = ray.data.from_items([{"uri": src.uri, "rel": rel} for src, rel in items])
    ds = ds.map_batches(
        PredictActor, batch_size=1, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        num_cpus=threads, num_gpus=1 if gpu else 0, runtime_env={"env_vars": credential_env(storage)},
        fn_constructor_kwargs={"model": (ray.put(model),), "out": out.uri, "storage": with_env_settings(public_storage(storage)),
                               "tiling": tiling, "overlay": overlay, "threads": threads})
    for row in ds.iter_rows():
        yield json.loads(row["record"])
        advance()


def predict(checkpoint: str, images: str, out: str, *, tiling: Tiling = Tiling(), overlay: bool = False,
            use_ray: bool = False, workers: int | None = None, threads: int | None = None,
            storage: StorageConfig | None = None, resources: ResourcesConfig | None = None, progress: bool = False,
            console: Any = None) -> PredictSummary:
    """Masks for every image under ``images`` (folder, ``s3://`` prefix or one file), written to ``out``.

    ``use_ray`` runs the same inference as a Ray Data job (``resources.address`` / ``RAY_ADDRESS``, else a local Ray)
    with one model per actor, ``workers`` actors at most (default: one per GPU, or per ``threads`` CPUs without GPUs).
    ``threads``: torch threads of this process, or CPUs and threads per actor (default: torch's own, 1 per actor);
    equal thread counts give byte-identical masks on CPU either way.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    storage = storage or StorageConfig()
    model = load_model(checkpoint, storage)
    dest = resolve(out, storage)
    items = list_images(resolve(images, storage), dest)
    if overlay and any(rel.startswith(OVERLAY_DIR + "/") for _, rel in items):
        raise DataError(f"--overlay writes OUT/{OVERLAY_DIR}/, and IMAGES has a folder of that name; rename it")
    check_writable(dest)
    bar = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, disable=not progress, transient=False)
    records: list[dict[str, Any]] = []
    cfg = Config(storage=storage, resources=resources or ResourcesConfig())
    with bar:
        task = bar.add_task("predicting", total=len(items))
        advance = lambda: bar.advance(task)  # noqa: E731
        if use_ray:
            from unet_dist.session import ray_session

            with ray_session(cfg, include_dashboard=False):
                gpu, workers = actor_pool(cfg, workers, threads or 1)
                records = list(_run_ray(model, items, dest, tiling, overlay, storage, gpu, workers, threads or 1, advance))
        else:
            if threads:
                torch.set_num_threads(threads)
            records = list(_run_local(model, items, dest, tiling, overlay, advance))
    return _summary(checkpoint, images, dest, model, tiling, overlay, use_ray, workers, records, time.perf_counter() - start)


def _summary(checkpoint: str, images: str, dest: Location, model: LoadedModel, tiling: Tiling, overlay: bool,
             use_ray: bool, workers: int | None, records: list[dict[str, Any]], seconds: float) -> PredictSummary:
    """The summary of a run; raises DataError when no image at all could be predicted."""
    done = sorted((r for r in records if "error" not in r), key=lambda r: r["image"])
    skipped = sorted(({"image": r["image"], "reason": r["error"]} for r in records if "error" in r),
                     key=lambda r: r["image"])
    if not done:
        first = skipped[0]
        raise DataError(f"no image could be predicted ({len(skipped)} skipped), e.g. {first['image']}: {first['reason']}")
    return PredictSummary(
        checkpoint=checkpoint, images=images, out=dest.uri, predicted=len(done), skipped=skipped,
        mask_values=mask_values(model.cfg.model.num_classes, model.class_names), tile=tiling.tile,
        overlap=tiling.overlap, tta=tiling.tta, tiles=sum(r["tiles"] for r in done),
        megapixels=round(sum(r["pixels"] for r in done) / 1e6, 3), duration_s=round(seconds, 2), ray=use_ray,
        overlays=(dest / OVERLAY_DIR).uri if overlay else None, workers=workers if use_ray else None,
        device=",".join(sorted({r["device"] for r in done})), masks=[r["mask"] for r in done])
