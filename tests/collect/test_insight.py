"""Campaign insight on campaigns whose metric is a known function of the searched values: unpooling moves it by
+-0.1, the backbone by +-0.03, the learning rate not at all. Records and metrics are written by the package's own
record functions, as a campaign writes them; a third of the trials stop early after one pass."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from unet_dist.cli import main
from unet_dist.collect import insight as ins
from unet_dist.collect.plots import pareto_front
from unet_dist.config import load_config
from unet_dist.runs import METRICS_FILE, CampaignDir, finish_record, new_campaign_record, new_trial_record, start_record
from unet_dist.storage import resolve

UNPOOLING = {"transpose": 0.1, "bilinear": -0.1}
BACKBONE = {"resnet18": 0.03, "scratch": 0.0, "resnet34": -0.03}
FIRST_PASS = 0.45
"""Every trial's metric after one pass, before the searched values' effects; each later pass adds 0.05."""
EPOCHS = 4
METRIC = "val_image_mean_iou"


def _write_campaign(storage: Path, name: str, trials: list[dict]) -> None:
    cfg = load_config(None, [f"train.epochs={EPOCHS}", f"tune.name={name}"])
    campaign = CampaignDir(resolve(storage / name))
    campaign.write_record({**new_campaign_record(cfg, name, campaign.uri, {}, []), "status": "finished"})
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    for t in trials:
        run = campaign.trial(t["id"])
        start_record(run, new_trial_record(cfg, run, name, t["id"], t["params"], {}))
        for epoch, value in enumerate(t["history"]):
            run.append(METRICS_FILE, {"epoch": epoch, "epochs_done": epoch + 1.0, METRIC: value, "val_iou": value})
        finish_record(run, "early_stopped" if len(t["history"]) < EPOCHS else "finished")
        run.update_record(started_at=start.isoformat(), ended_at=(start + timedelta(seconds=10 * len(t["history"]))).isoformat())


def _trials(seed: int = 0) -> list[dict]:
    """24 trials, 4 per unpooling x backbone pair, lr drawn log-uniformly; every third stopped after one pass."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(24):
        up, bb = list(UNPOOLING)[i % 2], list(BACKBONE)[(i // 2) % 3]
        first = FIRST_PASS + UNPOOLING[up] + BACKBONE[bb] + rng.normal(0, 0.02)
        passes = 1 if i % 3 == 2 else EPOCHS
        out.append({"id": f"t_{i:05d}", "params": {"model.unpooling": up, "model.backbone": bb,
                                                 "train.lr": float(10 ** rng.uniform(-4, -2))},
                    "history": [first + 0.05 * e for e in range(passes)]})
    return out


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two campaigns of 12 trials each (the importance pools every campaign the filter keeps)."""
    root = tmp_path_factory.mktemp("insight") / "storage"
    trials = _trials()
    _write_campaign(root, "a", trials[:12])
    _write_campaign(root, "b", trials[12:])
    return root


def _insight(capsys, *args: str) -> dict:
    assert main(["collect", *args, "--importance", "--format", "json", "--no-write"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_importance_ranks_the_known_effects_and_the_intervals_cover_them(storage: Path, capsys) -> None:
    found = _insight(capsys, str(storage))
    assert [k["key"] for k in found["keys"]] == ["model.unpooling", "model.backbone", "train.lr"]
    scores = {k["key"]: k["importance"] for k in found["keys"]}
    assert scores["model.unpooling"] > 0.8 and scores["train.lr"] < 0.02, scores
    # compared at pass 1, the last every trial reached: the true means are the first pass's
    assert found["epoch"] == 1 and found["trials"] == 24 and found["left_out"] == {}
    for key, effects in (("model.unpooling", UNPOOLING), ("model.backbone", BACKBONE)):
        got = {e["value"]: e for e in next(k for k in found["keys"] if k["key"] == key)["effects"]}
        assert set(got) == set(effects)
        for value, effect in effects.items():
            truth = FIRST_PASS + effect
            assert got[value]["low"] <= truth <= got[value]["high"], (key, value, got[value], truth)
            assert got[value]["n"] == (12 if key == "model.unpooling" else 8)
    assert "main-effect ANOVA" in found["evaluator"] and "at pass 1" in found["basis"] and "24 trials" in found["basis"]


def test_early_stopped_trials_count_at_their_rung_never_as_if_finished(storage: Path, capsys) -> None:
    trials = {t["id"]: t for t in _trials()}
    rows = [{"campaign": "a", "trial": i, "run_uri": f"mem://{i}", "status": "x", **t["params"]} for i, t in trials.items()]
    hist = {f"mem://{i}": [(e + 1.0, v) for e, v in enumerate(t["history"])] for i, t in trials.items()}
    epoch, points, left = ins.compare_at(rows, hist, ["model.unpooling"], "max")
    assert epoch == 1 and not left and all(p.value == trials[p.trial]["history"][0] for p in points)

    at4 = _insight(capsys, str(storage), "--at-epoch", "4")
    assert at4["epoch"] == 4 and at4["trials"] == 16 and at4["left_out"] == {"stopped before pass 4": 8}
    assert "8 stopped before pass 4" in at4["basis"]
    unpooling = next(k for k in at4["keys"] if k["key"] == "model.unpooling")
    transpose = next(e for e in unpooling["effects"] if e["value"] == "transpose")
    assert transpose["low"] <= FIRST_PASS + 0.15 + 0.1 <= transpose["high"]  # the 4th pass's values, finished trials only


def test_one_campaign_the_table_at_80_columns_and_clear_errors(storage: Path, capsys, monkeypatch) -> None:
    only_a = _insight(capsys, str(storage), "--campaign", "a")
    assert only_a["trials"] == 12
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["collect", str(storage), "--importance", "--no-write"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80, out
    assert "model.unpooling" in out and "transpose" in out and "95% interval" in out and "at pass 1" in out
    assert main(["collect", str(storage), "--importance", "--at-epoch", "-1", "--no-write"]) == 2
    assert main(["collect", str(storage / "a" / "trials"), "--importance", "--no-write"]) == 2
    err = capsys.readouterr().err
    assert "--at-epoch must be a positive" in err and "no campaign trial" in err and "Traceback" not in err


def test_optuna_evaluators_fed_from_the_leaderboard(storage: Path, capsys) -> None:
    pytest.importorskip("optuna")
    found = _insight(capsys, str(storage), "--evaluator", "ped-anova")
    assert "PED-ANOVA" in found["evaluator"] and sum(k["importance"] for k in found["keys"]) == pytest.approx(1.0)
    assert found["keys"][0]["key"] != "train.lr"
    try:
        import sklearn  # noqa: F401
    except ImportError:
        assert main(["collect", str(storage), "--importance", "--evaluator", "fanova", "--no-write"]) == 2
        assert "pip install scikit-learn" in capsys.readouterr().err
    else:
        found = _insight(capsys, str(storage), "--evaluator", "fanova")
        assert found["keys"][0]["key"] == "model.unpooling"


def test_the_report_shows_importance_effects_and_the_pareto_front(storage: Path) -> None:
    from unet_dist.collect.report import build_report

    html = build_report(str(storage / "a")).html
    section = html[html.index('<section id="insight"'):]
    section = section[: section.index("</section>")]
    for part in ('id="importance"', 'id="parallel-plot"', 'id="effects-plot"', 'id="pareto-plot"', "at pass 1",
                 "model.unpooling", "transpose"):
        assert part in section, part


def test_anova_scores_a_key_that_does_nothing_near_zero() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(0, 1, 40)
    labels = {"noise": [str(i % 4) for i in range(40)], "signal": ["a" if v > 0 else "b" for v in y]}
    scores = ins.anova(labels, y)
    assert scores["noise"] < 0.05 < 0.5 < scores["signal"]
    assert ins.groups([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])[0].startswith("1: ")  # binned, bins in order
    assert ins.groups(["x", None, [1, 2]]) == ["x", "-", "[1, 2]"]


def test_the_pareto_plot_charges_gpu_hours_where_a_trial_held_a_gpu() -> None:
    from unet_dist.collect.insight import Point
    from unet_dist.collect.plots import pareto_cost

    cpu = [Point("t0", {}, 0.5, "finished", 0.5, 30.0, 0.0), Point("t1", {}, 0.6, "finished", 0.6, 40.0, None)]
    assert pareto_cost(cpu) == "wall_time_s"
    assert pareto_cost(cpu + [Point("t2", {}, 0.7, "finished", 0.7, 20.0, 0.01)]) == "gpu_hours"


def test_pareto_front_keeps_what_nothing_beats_on_both() -> None:
    costs, values = [10, 20, 30, 15, 40], [0.5, 0.7, 0.6, 0.4, 0.8]
    assert pareto_front(costs, values, "max") == [0, 1, 4]
    assert pareto_front(costs, [1 - v for v in values], "min") == [0, 1, 4]


@pytest.mark.s3
def test_a_real_asha_campaign_on_s3(collect_tree: dict, capsys) -> None:
    """The shared 4-trial ASHA campaign (scratch/resnet18 x transpose/bilinear) read from S3: histories come from each
    trial's metrics.jsonl, every trial is compared at the pass the early-stopped ones reached, and the single run
    beside the campaign searches nothing, so it is not a trial."""
    found = _insight(capsys, collect_tree["s3"])
    trials = Path(collect_tree["local"]) / collect_tree["campaign"] / "trials"
    histories = {t.name: [json.loads(line)[METRIC] for line in (t / METRICS_FILE).read_text().splitlines()]
                 for t in trials.iterdir()}
    reached = min(len(h) for h in histories.values())  # the early-stopped trials' rung (1 pass per epoch here)
    assert found["trials"] == 4 and found["left_out"] == {} and found["epoch"] == reached
    assert {k["key"] for k in found["keys"]} == {"model.backbone", "model.unpooling"}
    at_rung = sorted(max(h[:reached]) for h in histories.values())
    for k in found["keys"]:
        assert sum(e["n"] for e in k["effects"]) == 4 and all(e["low"] <= e["mean"] <= e["high"] for e in k["effects"])
        means = sorted(e["mean"] for e in k["effects"])
        assert at_rung[0] <= means[0] and means[-1] <= at_rung[-1]
        assert sum(means) / 2 == pytest.approx(sum(at_rung) / 4)  # a 2 x 2 grid: the means of halves of the 4 values


def test_a_storage_report_puts_every_campaign_on_one_page(storage: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "all.html"
    assert main(["report", str(storage), "-o", str(out), "--json"]) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert said["kind"] == "storage" and said["report"] == str(out)
    html = out.read_text()
    assert 'id="progress-plot"' in html and html.count("<tr") >= 24 + 1
    for name in ("a", "b"):
        section = html[html.index(f'<section id="campaign-{name}"'):]
        section = section[: section.index("</section>")]
        assert f'id="effects-plot-{name}"' in section and "12 trials" in section and "model.unpooling" in section


def test_the_storage_report_of_a_real_campaign_and_run(collect_tree: dict) -> None:
    from unet_dist.collect.report import build_storage_report

    report = build_storage_report(collect_tree["local"])
    assert report.subject.kind == "storage" and report.checkpoint
    assert f'id="campaign-{collect_tree["campaign"]}"' in report.html and 'id="progress-plot"' in report.html
    assert "1 single run" in report.html and report.best_run in report.html


def test_when_nothing_stands_out_it_says_so() -> None:
    rng = np.random.default_rng(5)
    rows = [{"campaign": "c", "trial": f"t{i}", "run_uri": f"mem://{i}", "status": "finished",
             "model.unpooling": ["transpose", "bilinear"][i % 2]} for i in range(12)]
    hist = {f"mem://{i}": [(1.0, float(rng.normal(0.5, 0.05)))] for i in range(12)}
    found = ins.analyse(rows, ["model.unpooling"], METRIC, "max", hist)
    assert found.keys[0].importance < ins.NOTHING and "no searched key explains" in found.caveat
    assert json.loads(found.to_json())["caveat"] == found.caveat
