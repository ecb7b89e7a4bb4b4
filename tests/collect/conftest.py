"""One real small result tree shared by the collector tests: a 4-trial ASHA campaign and a single training run,
written by the real code on the SeaweedFS S3 server, plus a local copy of the same tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import _small_config

CAMPAIGN = "bxu"
RUN = "single"
SPACE = {"model.backbone": {"grid": ["scratch", "resnet18"]}, "model.unpooling": {"grid": ["transpose", "bilinear"]}}


@pytest.fixture(scope="session")
def collect_tree(isbi_small_dir: Path, s3_server: dict, ray_tmpdir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``{"s3": STORAGE_URI, "local": STORAGE_PATH, "dataset": URI, "campaign": NAME, "run": NAME}``.

    STORAGE holds ``bxu/`` (campaign: scratch/resnet18 x transpose/bilinear, 4 epochs, ASHA grace 1, so some trials
    stop early) and ``single/`` (a 2-epoch ``fit`` run); the local path is a byte copy of the S3 tree.
    """
    import ray

    from unet_dist.config import IngestConfig
    from unet_dist.data.ingest import ingest
    from unet_dist.storage import resolve
    from unet_dist.train import fit
    from unet_dist.tune import run_campaign

    if not ray.is_initialized():
        from tests.conftest import RAY_RUNTIME_ENV

        ray.init(address="local", num_cpus=2, _temp_dir=str(ray_tmpdir), configure_logging=False, runtime_env=RAY_RUNTIME_ENV)
    root = f"s3://{s3_server['bucket']}/collect-tree"
    dataset = f"{root}-data"
    ingest(str(isbi_small_dir), dataset, IngestConfig(split=(0.5, 0.25, 0.25), seed=0), progress=False)
    common = ("data.crop_size=64", "train.log_images=0", "train.num_to_keep=2")
    cfg = _small_config(dataset, root, *common, "train.epochs=4", f"tune.name={CAMPAIGN}", "tune.grace_period=1",
                        "tune.reduction_factor=2", "tune.num_samples=1")
    run_campaign(cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"search_space": SPACE})}), progress=False)
    fit(_small_config(dataset, root, *common, "train.epochs=2", f"train.name={RUN}"), progress=False)
    local = tmp_path_factory.mktemp("collect-local") / "storage"
    src = resolve(root)
    src.fs.get(src.path + "/", str(local), recursive=True)
    return {"s3": root, "local": str(local), "dataset": dataset, "campaign": CAMPAIGN, "run": RUN}
