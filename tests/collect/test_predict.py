"""`unet-dist predict` on real 512² ISBI images: one tile is evaluate's prediction pixel for pixel, 256² tiles keep
evaluate's IoU, flip TTA is deterministic and changes the output, --ray writes the same bytes as the local loop
(S3 in and out), and mixed inputs (RGB, odd sizes, subfolders, 16-bit, broken files) are predicted or named.

The model (base_filters 8, depth 3) is trained in this process for 100 steps on 128² crops of the 512² training
split, with the product's model, loss and optimiser factories, and saved in the trainer's checkpoint format (a full
Ray Train run costs a minute more); it segments membranes (test IoU ~0.87, both classes present). Budget of the
module: 90 s on 2 idle cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unet_dist.cli import main
from unet_dist.collect.predict import OVERLAY_DIR, predict
from unet_dist.inference.tiles import Tiling, tile_boxes, tile_starts, window_1d
from unet_dist.config import IngestConfig, load_config
from unet_dist.data.codec import decode_image, decode_mask, to_model_input
from unet_dist.data.ingest import ingest
from unet_dist.data.manifest import read_manifest
from unet_dist.data.pipeline import pipeline_spec
from unet_dist.models import create_unet
from unet_dist.storage import resolve
from unet_dist.checkpoint import save_checkpoint
from unet_dist.inference.evaluate import evaluate, split_rows
from unet_dist.inference.model import load_model
from unet_dist.losses import create_loss
from unet_dist.inference.metrics import confusion_matrix, scores
from unet_dist.train.optim import create_optimizer
from unet_dist.train.trainer import inference_block

TRAIN_STEPS = 100
CROP = 128


@pytest.fixture(scope="module")
def isbi512(isbi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All 30 ISBI images ingested (24 train, 6 test); the test images as PNG files, their label masks by name."""
    root = tmp_path_factory.mktemp("isbi512")
    dataset = str(root / "dataset")
    ingest(str(isbi_dir), dataset, IngestConfig(split=(0.8, 0.0, 0.2), seed=0), progress=False)
    manifest = read_manifest(dataset)
    images = root / "test-images"
    images.mkdir()
    truth = {}
    for image_id, image, mask in split_rows(manifest, "test"):
        (images / f"{image_id}.png").write_bytes(image)
        truth[f"{image_id}.png"] = decode_mask(mask)
    train = [(decode_image(image), decode_mask(mask)) for _, image, mask in split_rows(manifest, "train")]
    return {"dataset": dataset, "images": images, "truth": truth, "train": train}


@pytest.fixture(scope="module")
def checkpoint(isbi512: dict, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small U-Net trained in this process on 128² crops of the 512² training split, saved as training saves one:
    its weights plus the config and the inference block (the dataset's normalisation) of the real trainer."""
    cfg = load_config(None, [f"data.dataset={isbi512['dataset']}", "model.base_filters=8", "model.depth=3", "train.lr=0.003"])
    manifest = read_manifest(isbi512["dataset"])
    spec = pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, manifest, pad_multiple=2 ** cfg.model.depth)
    torch.manual_seed(0)
    x = torch.stack([to_model_input(image, cfg.model.in_channels, spec.stats) for image, _ in isbi512["train"]])
    y = torch.stack([torch.from_numpy(mask) for _, mask in isbi512["train"]])
    net = create_unet(cfg.model).to(memory_format=torch.channels_last)
    loss_fn = create_loss(cfg.train.loss, cfg.model.num_classes, cfg.train.class_weights)
    optimizer = create_optimizer(net.parameters(), cfg.train)
    for _ in range(TRAIN_STEPS):
        pick = torch.randint(0, len(x), (4,))
        top, left = torch.randint(0, x.shape[-1] - CROP, (2,)).tolist()
        loss = loss_fn(net(x[pick, :, top:top + CROP, left:left + CROP]), y[pick, top:top + CROP, left:left + CROP])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    names = list(manifest["class_names"])
    folder = tmp_path_factory.mktemp("trained") / "epoch_0000"
    save_checkpoint(folder, {"model": net.eval().state_dict(), "epoch": 0, "config": cfg.to_dict(), "class_names": names,
                             "fingerprint": manifest.get("fingerprint"),
                             "inference": inference_block(cfg, spec, names, manifest)})
    return str(folder)


@pytest.fixture(scope="module")
def evaluated(checkpoint: str, isbi512: dict) -> dict:
    return evaluate(checkpoint, split="test", dataset=isbi512["dataset"], threads=1)


@pytest.fixture(scope="module")
def tiled(checkpoint: str, isbi512: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """256² tiles (3 x 3 per image), with overlays, in this process."""
    out = tmp_path_factory.mktemp("tiled")
    return out, predict(checkpoint, str(isbi512["images"]), str(out), tiling=Tiling(tile=256), overlay=True, threads=1)


def _labels(path: Path) -> np.ndarray:
    return (np.asarray(Image.open(path)) > 0).astype(np.int64)


def _iou(out: Path, truth: dict[str, np.ndarray]) -> float:
    cm = sum(confusion_matrix(torch.from_numpy(_labels(out / name)), torch.from_numpy(mask), 2) for name, mask in truth.items())
    return scores(cm)["iou"]


def test_tiles_cover_the_image_with_the_overlap_asked_for() -> None:
    for length, tile, overlap in [(512, 256, 0.25), (1000, 256, 0.5), (300, 128, 0.0), (257, 256, 0.25), (100, 256, 0.25)]:
        starts = tile_starts(length, tile, overlap)
        t = min(tile, length)
        assert starts[0] == 0 and starts[-1] + t == length
        assert all(b - a <= int(t * (1 - overlap)) for a, b in zip(starts, starts[1:]))
    assert tile_starts(512, 256, 0.25) == [0, 128, 256]
    assert tile_boxes(300, 203, Tiling(tile=128)) == [(y, x, 128, 128) for y in (0, 86, 172) for x in (0, 75)]
    inner, first = window_1d(256, False, False), window_1d(256, True, False)
    assert float(inner.min()) > 0 and float(inner.max()) <= 1.0 and torch.equal(inner, inner.flip(0))
    assert torch.all(first[:128] == 1) and torch.equal(first[128:], inner[128:])


def test_one_tile_is_evaluates_prediction_pixel_for_pixel(checkpoint, isbi512, evaluated, tmp_path) -> None:
    summary = predict(checkpoint, str(isbi512["images"]), str(tmp_path), tiling=Tiling(tile=512), threads=1)
    assert summary.predicted == 6 and summary.tiles == 6 and summary.skipped == []
    model = load_model(checkpoint)
    per_image = {f"{row['id']}.png": row["confusion_matrix"] for row in evaluated["per_image"]}
    for name, truth in isbi512["truth"].items():
        mask = np.asarray(Image.open(tmp_path / name))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert np.array_equal(mask // 255, model.predict(str(isbi512["images"] / name)).numpy())
        assert confusion_matrix(torch.from_numpy(mask // 255), torch.from_numpy(truth), 2).tolist() == per_image[name]
    assert _iou(tmp_path, isbi512["truth"]) == pytest.approx(evaluated["iou"], abs=1e-12)


def test_256_tiles_keep_evaluates_iou(tiled, isbi512, evaluated) -> None:
    out, summary = tiled
    assert summary.predicted == 6 and summary.tiles == 6 * 9
    iou = _iou(out, isbi512["truth"])
    print(f"\nISBI 512² test split, 6 images: evaluate IoU {evaluated['iou']:.4f}, predict 256² tiles IoU {iou:.4f}")
    assert evaluated["mean_iou"] > 0.6, "the trained model should segment membranes, not predict one class"
    assert abs(iou - evaluated["iou"]) <= 0.01


def test_flip_tta_is_deterministic_and_changes_the_masks(checkpoint, isbi512, tiled, tmp_path) -> None:
    out, _ = tiled
    runs = []
    name = sorted(isbi512["truth"])[0]
    for i in range(2):
        predict(checkpoint, str(isbi512["images"] / name), str(tmp_path / f"tta{i}"), tiling=Tiling(tile=256, tta=True),
                threads=1)
        runs.append((tmp_path / f"tta{i}" / name).read_bytes())
    assert runs[0] == runs[1]
    changed = int((_labels(tmp_path / "tta0" / name) != _labels(out / name)).sum())
    assert 0 < changed < 0.1 * 512 * 512  # a briefly trained model: TTA moves boundary pixels, not the whole mask


@pytest.mark.ray
def test_ray_writes_the_same_bytes_as_the_local_loop(checkpoint, isbi512, tiled, ray_local, s3_uri) -> None:
    out, local = tiled
    images = resolve(f"{s3_uri}/images")
    for path in sorted(isbi512["images"].iterdir()):
        (images / path.name).write_bytes(path.read_bytes())
    summary = predict(checkpoint, images.uri, f"{s3_uri}/masks", tiling=Tiling(tile=256), overlay=True, use_ray=True,
                      threads=1)
    assert summary.ray and summary.predicted == 6 and summary.workers == 2 and summary.tiles == local.tiles
    masks = resolve(f"{s3_uri}/masks")
    for name in isbi512["truth"]:
        assert (masks / name).read_bytes() == (out / name).read_bytes()
        assert (masks / OVERLAY_DIR / name).read_bytes() == (out / OVERLAY_DIR / name).read_bytes()


def test_mixed_inputs_go_through_or_are_named(checkpoint, isbi512, tmp_path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "rgb").mkdir(parents=True)
    gray = Image.open(isbi512["images"] / sorted(isbi512["truth"])[0])
    gray.crop((0, 0, 300, 203)).convert("RGB").save(src / "rgb" / "odd.png")
    gray.crop((50, 50, 150, 120)).save(src / "small.jpg", quality=95)
    Image.fromarray(np.asarray(gray).astype(np.uint16) * 257).save(src / "deep.tif")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rc = main(["predict", checkpoint, str(src), str(out), "--tile", "128", "--overlay", "--threads", "1", "--json"])
    captured = capsys.readouterr()
    assert rc == 1
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["predicted"] == 2 and summary["mask_values"] == {"background": 0, "foreground": 255}
    assert {s["image"] for s in summary["skipped"]} == {"broken.png", "deep.tif"}
    reasons = {s["image"]: s["reason"] for s in summary["skipped"]}
    assert "cannot decode" in reasons["broken.png"] and "uint16" in reasons["deep.tif"]
    assert "skipped broken.png" in captured.err and "skipped deep.tif" in captured.err
    odd = np.asarray(Image.open(out / "rgb" / "odd.png"))
    assert odd.shape == (203, 300) and set(np.unique(odd)) == {0, 255}
    assert np.asarray(Image.open(out / "small.png")).shape == (70, 100)
    overlay = np.asarray(Image.open(out / OVERLAY_DIR / "rgb" / "odd.png"))
    assert overlay.shape == (203, 300, 3) and overlay.dtype == np.uint8


def test_one_line_errors(checkpoint, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not an image")
    cases = [
        ([str(tmp_path / "empty"), str(tmp_path / "o1")], "no images"),
        ([str(tmp_path / "missing"), str(tmp_path / "o2")], "does not exist"),
        ([str(tmp_path / "bad"), str(tmp_path / "o3")], "no image could be predicted (1 skipped), e.g. a.png: cannot decode"),
        ([str(tmp_path / "bad"), str(tmp_path / "bad")], "masks would overwrite the images"),
        ([str(tmp_path / "bad"), str(tmp_path / "o4"), "--tile", "4"], "--tile 4"),
        ([str(tmp_path / "bad"), str(tmp_path / "o5"), "--overlap", "1.5"], "--overlap 1.5"),
    ]
    for args, expected in cases:
        assert main(["predict", checkpoint, *args, "--json"]) == 2  # --json: no progress bar beside the error
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o3").exists() or not any((tmp_path / "o3").iterdir())
