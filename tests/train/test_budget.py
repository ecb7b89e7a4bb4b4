"""``train.time_budget_s``: a run trains for a wall-clock budget, stops within one step of it, and anneals fully."""

from __future__ import annotations

import pytest

from unet_dist.runs import RunDir
from unet_dist.storage import resolve
from unet_dist.train import fit

BUDGET_S = 4.0  # several epochs of the test set (~0.5 s of training each)


@pytest.mark.ray
def test_time_budget_stops_within_a_step_and_anneals(small_config, ray_local, synthetic_dataset, tmp_path) -> None:
    cfg = small_config(synthetic_dataset, str(tmp_path), "data.crop_size=64", "data.num_crops_per_image=2",
                       "train.epochs=1000", f"train.time_budget_s={BUDGET_S}", "train.warmup_epochs=0", "train.name=budget")
    fit(cfg, progress=False)
    run = RunDir(resolve(tmp_path) / "budget")
    rows, record = run.metrics(), run.read_record()
    assert record["status"] == "finished" and 2 <= len(rows) < 1000
    assert record["time_budget_s"] == BUDGET_S and record["train_time_s"] == rows[-1]["train_time_s"]
    per_epoch = [b["train_time_s"] - a["train_time_s"] for a, b in zip([{"train_time_s": 0.0}, *rows], rows)]
    steps = [r["train_images"] / (cfg.data.batch_size * 2) for r in rows]  # 2 workers
    step_s = max(t / n for t, n in zip(per_epoch[:-1], steps[:-1]))
    assert BUDGET_S <= record["train_time_s"] <= BUDGET_S + 1.5 * step_s, (record["train_time_s"], step_s)
    assert rows[-2]["train_time_s"] < BUDGET_S  # the run ends in the first epoch (validation round) that crosses it
    # train.val_every_s=auto: a round ends mid-pass once a tenth of the budget has been trained, not before
    mid_pass = [t for r, t in zip(rows[:-1], per_epoch[:-1]) if r["epochs_done"] % 1]
    assert mid_pass and all(t >= BUDGET_S / 10 for t in mid_pass), [(r["epochs_done"], t) for r, t in zip(rows, per_epoch)]
    lrs = [r["lr"] for r in rows]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine to 0
