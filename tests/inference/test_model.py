"""A checkpoint alone is enough for inference: the same prediction as evaluate, with no dataset reachable, and the
training statistics (not another data set's) used for normalisation. Encoder weights from S3 with credentials in
the config only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from unet_dist.config import IngestConfig
from unet_dist.data.manifest import read_manifest, split_paths
from unet_dist.runs import RunDir
from unet_dist.storage import resolve
from unet_dist.train import fit
from unet_dist.inference.evaluate import evaluate
from unet_dist.inference.model import load_model
from unet_dist.inference.metrics import confusion_matrix

from tests.train.datagen import write_csv, write_pairs

SIZES = [64, 72, 80, 64, 56, 72, 64, 88]
VAL_SIZES = [48, 64, 80, 72]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_tmpdir, s3_server):
    """Dataset A (train + val) and dataset B (brightened train, the same val files), and a checkpoint trained on A."""
    import ray

    from unet_dist.config import load_config
    from unet_dist.data.ingest import ingest

    root = tmp_path_factory.mktemp("infer")
    raw = root / "raw"
    train = write_pairs(raw, SIZES, prefix="tr")
    bright = write_pairs(raw, SIZES, prefix="br", gain=1.6)
    val = write_pairs(raw, VAL_SIZES, seed=1, prefix="va")
    rows_val = [(f"images/{n}", f"masks/{n}", "val") for n in val]
    a = write_csv(raw / "a.csv", [(f"images/{n}", f"masks/{n}", "train") for n in train] + rows_val)
    b = write_csv(raw / "b.csv", [(f"images/{n}", f"masks/{n}", "train") for n in bright] + rows_val)
    ingest(str(a), str(root / "A"), IngestConfig(split_column="split"), progress=False)
    ingest(str(b), str(root / "B"), IngestConfig(split_column="split"), progress=False)
    cfg = load_config(None, [f"data.dataset={root / 'A'}", f"storage.uri={root / 'runs'}", "model.base_filters=8",
                             "model.depth=3", "data.crop_size=48", "data.batch_size=2", "resources.num_workers=1",
                             "resources.cpus_per_worker=0.5", "resources.torch_threads=1", "resources.use_gpu=false",
                             "train.epochs=2", "train.lr=0.003", "train.name=infer"])
    if not ray.is_initialized():
        from tests.conftest import start_ray

        start_ray(ray_tmpdir, s3_server)
    summary = fit(cfg, progress=False)
    return root, summary.best_checkpoint


@pytest.mark.ray
def test_checkpoint_alone_predicts_what_evaluate_measured(trained) -> None:
    root, checkpoint = trained
    measured = evaluate(checkpoint, split="val", batch_size=3)
    run = RunDir(resolve(root / "runs" / "infer"))
    reported = run.metrics()[measured["epoch"]]
    assert measured["confusion_matrix"] == reported["val_confusion_matrix"]  # mixed sizes, another batch size: exact
    manifest = read_manifest(str(root / "A"))
    paths, _ = split_paths(manifest, "val")
    sources = [(r["source"], r["mask_source"]) for p in paths for r in pq.read_table(p).to_pylist()]
    shutil.move(root / "A", root / "A-moved")  # no manifest reachable from here on
    try:
        model = load_model(checkpoint)
        from unet_dist.data.codec import decode_mask

        cm = sum(confusion_matrix(model.predict(image), torch.from_numpy(decode_mask(mask)), 2) for image, mask in sources)
    finally:
        shutil.move(root / "A-moved", root / "A")
    assert cm.tolist() == measured["confusion_matrix"]


@pytest.mark.ray
def test_evaluate_normalises_with_the_training_statistics(trained) -> None:
    root, checkpoint = trained
    a, b = read_manifest(str(root / "A")), read_manifest(str(root / "B"))
    assert a["image_stats"]["mean"] != pytest.approx(b["image_stats"]["mean"], abs=0.02)
    on_a = evaluate(checkpoint, split="val", dataset=str(root / "A"))
    on_b = evaluate(checkpoint, split="val", dataset=str(root / "B"))
    assert on_a["confusion_matrix"] == on_b["confusion_matrix"] and on_a["iou"] == on_b["iou"]


@pytest.mark.slow  # ~35 s; workers with keys only in the config: tests/tune/test_secrets.py, S3 weights: tests/models
@pytest.mark.ray
@pytest.mark.s3
def test_encoder_weights_from_s3_with_credentials_in_the_config_only(trained, s3_server, s3_uri, tmp_path,
                                                                    own_ray_tmpdir) -> None:
    """A subprocess with no AWS_* environment: workers must get endpoint and keys from the config."""
    root, checkpoint = trained
    source = load_model(checkpoint).model
    encoder = {k.removeprefix("encoder."): v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    local = tmp_path / "enc.pt"
    torch.save(encoder, local)
    resolve(f"{s3_uri}/weights/enc.pt").write_bytes(local.read_bytes())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base_filters": 8, "depth": 3, "weights": f"{s3_uri}/weights/enc.pt", "freeze_backbone": True},
        "data": {"dataset": str(root / "A"), "crop_size": 48, "batch_size": 2},
        "train": {"epochs": 1, "name": "s3-weights"},
        "storage": {"uri": str(tmp_path / "runs"), "endpoint_url": s3_server["endpoint_url"], "region": "us-east-1",
                    "access_key_id": s3_server["key"], "secret_access_key": s3_server["secret"]},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "torch_threads": 1, "use_gpu": False},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = own_ray_tmpdir
    proc = subprocess.run([sys.executable, "-m", "unet_dist", "train", "--config", str(config), "--json"],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    trained_state = torch.load(os.path.join(summary["last_checkpoint"], "state.pt"), weights_only=True)["model"]
    params = [name for name, _ in source.encoder.named_parameters()]
    assert params
    for key in params:
        assert torch.equal(trained_state[f"encoder.{key}"], encoder[key]), key  # frozen encoder = the S3 weights
    assert s3_server["secret"] not in (tmp_path / "runs" / "s3-weights" / "run.json").read_text()
