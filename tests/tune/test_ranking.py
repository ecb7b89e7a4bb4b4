"""A diverged trial (NaN monitored value) never wins: the campaign's own ranking, the loop's reports to Ray, and ASHA."""

from __future__ import annotations

import math

import pytest

from unet_dist.config import load_config
from unet_dist.runs import CampaignDir
from unet_dist.storage import resolve
from unet_dist.train.loop import ray_metrics
from unet_dist.tune.campaign import trial_rows
from unet_dist.tune.schedulers import SCHEDULERS

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("mode", ["max", "min"])
def test_trial_rows_rank_a_nan_trial_with_the_trials_without_a_value(tmp_path, mode: str) -> None:
    campaign = CampaignDir(resolve(tmp_path) / "c")
    values = {"t0_nan": NAN, "t1": 0.3, "t2_none": None, "t3": 0.5, "t4_inf": INF}
    for trial_id, value in values.items():
        best = None if value is None else {"metric": "val_loss", "mode": mode, "value": value, "epoch": 0}
        campaign.trial(trial_id).write_record({"kind": "trial", "status": "finished", "best": best})
    order = [r["trial_id"] for r in trial_rows(campaign, "val_loss", mode)]
    assert order == (["t3", "t1"] if mode == "max" else ["t1", "t3"]) + ["t0_nan", "t2_none", "t4_inf"]


def test_the_loop_reports_a_nan_monitor_and_campaign_metric_to_ray_at_their_worst() -> None:
    """Ray orders kept checkpoints by train.monitor and ASHA schedules by the campaign metric: both see the worst
    value of their mode for a NaN epoch; the other metrics and metrics.jsonl's row are left as they are."""
    cfg = load_config(None, ["train.monitor=val_loss", "train.monitor_mode=min", "tune.metric=val_mean_iou",
                             "tune.mode=max"])
    row = {"epoch": 2, "val_loss": NAN, "val_mean_iou": NAN, "val_iou": NAN, "train_loss": NAN, "lr": 0.1,
           "val_confusion_matrix": [[1, 0], [0, 1]]}
    out = ray_metrics(cfg, row)
    assert out["val_loss"] == INF and out["val_mean_iou"] == -INF and out["epochs_done"] == 3
    assert math.isnan(out["val_iou"]) and math.isnan(out["train_loss"]) and "val_confusion_matrix" not in out
    assert math.isnan(row["val_loss"])
    max_cfg = load_config(None, ["train.monitor=val_mean_iou"])
    assert ray_metrics(max_cfg, {**row, "val_mean_iou": 0.7})["val_mean_iou"] == 0.7
    assert ray_metrics(max_cfg, row)["val_mean_iou"] == -INF


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("bad", [NAN, "worst"])
def test_asha_stops_a_diverged_trial_and_it_never_leads_a_rung(mode: str, bad) -> None:
    """A NaN (what Ray's own ASHA lets through: NaN is never below a cutoff) or the ±inf worst value the loop now
    reports: the diverged trial is stopped at its first rung, and its record keeps the rung's cutoff a number."""
    from ray.tune.schedulers import TrialScheduler

    bad = (INF if mode == "min" else -INF) if bad == "worst" else bad
    cfg = load_config(None, ["train.epochs=8", "tune.grace_period=1", "tune.reduction_factor=2", "tune.scheduler=asha",
                             "train.monitor=val_loss", "train.monitor_mode=min"])
    sched = SCHEDULERS.get("asha")(cfg, None)
    sched.set_search_properties("val_loss", mode)
    good, diverged, fair, later = (_Trial(n) for n in ("good", "diverged", "fair", "later"))
    for t in (good, diverged, fair, later):
        sched.on_trial_add(None, t)
    assert len(sched._brackets) == 1  # one rung ladder (ASHA's default: one bracket)
    better, worse = (0.2, 0.4) if mode == "min" else (0.8, 0.6)
    assert sched.on_trial_result(None, good, {"epochs_done": 1, "val_loss": better}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, diverged, {"epochs_done": 1, "val_loss": bad}) == TrialScheduler.STOP
    # the diverged trial is the rung's worst: a finite trial worse than "good" is still above its cutoff ...
    assert sched.on_trial_result(None, fair, {"epochs_done": 1, "val_loss": worse}) == TrialScheduler.CONTINUE
    rung = sched._brackets[0]._rungs[-1][1]
    assert all(math.isfinite(v) for v in rung.values()) and min(rung, key=rung.get) == "diverged"
    # ... and a later diverged report is stopped even when the cutoff sits on the diverged record
    assert sched.on_trial_result(None, later, {"epochs_done": 1, "val_loss": bad}) == TrialScheduler.STOP
    # a finite trial continues past a rung where the only record is a diverged one
    solo = SCHEDULERS.get("asha")(cfg, None)
    solo.set_search_properties("val_loss", mode)
    for t in (diverged, fair):
        solo.on_trial_add(None, t)
    assert solo.on_trial_result(None, diverged, {"epochs_done": 1, "val_loss": bad}) == TrialScheduler.STOP
    assert solo.on_trial_result(None, fair, {"epochs_done": 1, "val_loss": worse}) == TrialScheduler.CONTINUE


def test_restored_asha_rungs_record_a_nan_epoch_as_the_worst(tmp_path) -> None:
    """Rungs rebuilt from metrics.jsonl after a restore hold the true (NaN) values: recorded as the worst."""
    from ray.tune.schedulers import TrialScheduler

    cfg = load_config(None, ["train.epochs=8", "tune.grace_period=1", "tune.reduction_factor=2"])
    campaign = CampaignDir(resolve(tmp_path) / "c")
    for trial_id, values in {"good": [0.2], "diverged": [NAN]}.items():
        for epoch, v in enumerate(values):
            campaign.trial(trial_id).append("metrics.jsonl", {"epoch": epoch, "val_loss": v})
    sched = SCHEDULERS.get("asha")(cfg, campaign.uri)
    sched.set_search_properties("val_loss", "min")
    fresh = _Trial("fresh")
    sched.on_trial_add(None, fresh)
    rung = sched._brackets[0]._rungs[-1][1]
    assert rung["good"] == -0.2 and math.isfinite(rung["diverged"]) and rung["diverged"] < -1e300
    assert sched.on_trial_result(None, fresh, {"epochs_done": 1, "val_loss": 0.3}) == TrialScheduler.CONTINUE
