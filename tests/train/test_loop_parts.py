"""Driver/worker helpers that need no cluster: overlays, the fault hook spec, run files, the job entrypoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unet_dist.config import load_config
from unet_dist.storage import resolve
from unet_dist.runs import METRICS_FILE, RunDir
from unet_dist.inference.overlay import overlay
from unet_dist.train.fault import Fault
from unet_dist.train.optim import steps_per_epoch
from unet_dist.train.trainer import TrainSummary

REPO = Path(__file__).resolve().parents[2]


def test_overlay_colours_tp_fp_fn() -> None:
    image = torch.zeros(1, 2, 2)
    pred = torch.tensor([[1, 1], [0, 0]])
    target = torch.tensor([[1, 0], [1, -1]])
    rgb = overlay(image, pred, target)
    assert rgb.shape == (3, 2, 2)
    assert rgb[:, 0, 0].tolist() == [0, 1, 0]  # true positive: green
    assert rgb[:, 0, 1].tolist() == [1, 0, 0]  # false positive: red
    assert rgb[:, 1, 0].tolist() == [0, 0, 1]  # false negative: blue
    assert rgb[:, 1, 1].tolist() == [0, 0, 0]  # ignored: the (black) image


def test_fault_spec_parses_and_matches_only_its_step() -> None:
    f = Fault.parse("rank=1,epoch=2,step=3")
    assert f == Fault(1, 2, 3) and Fault.parse("") is None
    f.maybe_die(resolve("/nonexistent-unused"), rank=0, epoch=2, step=3)  # another rank: returns


@pytest.mark.parametrize("rows,world,crops,batch,expected", [(8, 2, 1, 2, 2), (9, 2, 4, 4, 5), (1, 4, 1, 8, 1)])
def test_steps_per_epoch(rows: int, world: int, crops: int, batch: int, expected: int) -> None:
    cfg = load_config(None, [f"data.batch_size={batch}"])
    assert steps_per_epoch(rows * crops, cfg, world) == expected


def test_summary_json_round_trip() -> None:
    import json

    s = TrainSummary(name="r", run_dir="s3://b/r", epochs=2, monitor="val_mean_iou", best_metric=0.6, best_val_iou=0.5, best_epoch=1,
                     best_checkpoint="s3://b/r/epoch_0001", last_checkpoint="s3://b/r/epoch_0001", num_workers=(1, 2))
    assert json.loads(s.to_json())["best_checkpoint"] == "s3://b/r/epoch_0001"


def test_job_entrypoint_user_error_is_one_line_exit_2(tmp_path) -> None:
    """A dataset error answers before the job attaches to Ray (no Ray started: its temp dir stays unmade)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 1\n")
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    for dataset in ("", str(tmp_path / "nowhere")):
        proc = subprocess.run([sys.executable, str(REPO / "jobs/train.py"), "--config", str(cfg), "--set",
                               f"storage.uri={tmp_path}", "--set", f"data.dataset={dataset}"],
                              capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and ("data.dataset" if not dataset else dataset) in proc.stderr
    assert not (tmp_path / "ray").exists(), "the job started Ray before checking its dataset"
    proc = subprocess.run([sys.executable, str(REPO / "jobs/train.py"), "--config", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_live_view_shows_progress_and_metrics(tmp_path) -> None:
    from rich.console import Console

    from unet_dist.train.live import LiveView

    files = RunDir(resolve(str(tmp_path / "run")))
    for epoch, (iou, miou) in enumerate(((0.5, 0.6), (0.75, 0.55))):
        files.append(METRICS_FILE, {"epoch": epoch, "val_iou": iou, "val_image_mean_iou": miou, "epoch_time_s": 10.0})
    files.progress(epoch=1, step=3, steps_per_epoch=3, phase="epoch_end", epochs=4, loss=0.4321,
                   val_iou=0.75, images_per_s=12.5)
    cfg = load_config(None, ["train.epochs=4"])
    console = Console(record=True, width=120)
    console.print(LiveView(files, cfg, console=console).render())
    text = console.export_text()
    assert "val image mIoU" in text and "best val image mIoU" in text, text  # the default monitor, named
    row = [line for line in text.splitlines() if "2/4" in line]
    assert row, text
    cells = [c.strip() for c in row[0].strip("│ ").split("│")]
    assert cells[:6] == ["2/4", "3/3", "0.4321", "0.7500", "0.5500", "0.6000"] and cells[6] == "12.5" and cells[8] == "20s"
