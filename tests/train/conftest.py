"""Training fixtures: small datasets (downscaled ISBI on S3, synthetic locally) and small run configs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from unet_dist.config import Config, load_config


@pytest.fixture(scope="session")
def isbi_small_dir(isbi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 ISBI pairs downscaled to 128 px (area for images, nearest for masks), in a temp folder."""
    from PIL import Image

    out = tmp_path_factory.mktemp("isbi128")
    for sub in ("images", "masks"):
        (out / sub).mkdir()
    for src in sorted((isbi_dir / "images").glob("*.png"))[:12]:
        Image.open(src).resize((128, 128), Image.BOX).save(out / "images" / src.name)
        Image.open(isbi_dir / "masks" / src.name).resize((128, 128), Image.NEAREST).save(out / "masks" / src.name)
    return out


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small ingested synthetic binary set on local disk (12 images, 64 px)."""
    from unet_dist.data.synthetic import demo_dataset

    return demo_dataset(str(tmp_path_factory.mktemp("synth")), n=12, size=64)


def _small_config(dataset: str, storage_uri: str, *overrides: str) -> Config:
    """A 2-worker CPU config sized for a 2-core test machine (0.5 CPU and 1 thread per worker)."""
    return load_config(None, [
        f"data.dataset={dataset}", f"storage.uri={storage_uri}",
        "model.base_filters=8", "model.depth=3",
        "data.batch_size=2", "data.val_batch_size=2",
        "resources.num_workers=2", "resources.cpus_per_worker=0.5", "resources.torch_threads=1", "resources.use_gpu=false",
        "train.lr=0.003", "train.warmup_epochs=1", "train.log_images=2", "train.num_to_keep=2",
        *overrides,
    ])


@pytest.fixture
def small_config() -> Callable[..., Config]:
    """``small_config(dataset, storage_uri, *overrides)``: a 2-worker CPU config sized for a 2-core machine."""
    return _small_config
