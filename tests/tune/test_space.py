"""The search space is checked before anything starts: keys, distributions, bad values, impossible points."""

from __future__ import annotations

import pytest

from unet_dist.config import load_config
from unet_dist.errors import ConfigError
from unet_dist.runs import CampaignDir
from unet_dist.storage import resolve
from unet_dist.tune.schedulers import SCHEDULERS, SEARCHERS, rung_values
from unet_dist.tune.space import DISTRIBUTIONS, GRID_KEY, apply_params, check_space, flat_params, parse_space


def _cfg(space: dict, *overrides: str):
    return load_config(None, list(overrides), base={"tune": {"search_space": space}})


@pytest.mark.parametrize("kind", DISTRIBUTIONS.list())
def test_every_distribution_builds_a_space(kind: str) -> None:
    args = {"choice": ["relu", "silu"], "grid": ["relu", "gelu"], "uniform": [0.0, 0.5], "loguniform": [1e-4, 1e-2],
            "randint": [3, 5], "quniform": [0.0, 0.5, 0.1]}[kind]
    key = {"choice": "model.activation", "grid": "model.activation", "randint": "model.depth",
           "loguniform": "train.lr"}.get(kind, "model.dropout")
    checked = check_space(_cfg({key: {kind: args}}))
    space = checked.param_space()
    assert (GRID_KEY in space) == (kind == "grid") and (key in space) == (kind != "grid")


@pytest.mark.parametrize("space,needle", [
    ({"model.backbon": {"choice": ["scratch"]}}, "tune.search_space.model.backbon: unknown key"),
    ({"modle.backbone": {"choice": ["scratch"]}}, "tune.search_space.modle.backbone: unknown key; allowed sections"),
    ({"model.backbone": {"pick": ["scratch"]}}, "tune.search_space: unknown distribution 'pick'"),
    ({"model.backbone": ["scratch"]}, "tune.search_space.model.backbone: expected one distribution"),
    ({"train.lr": {"loguniform": [0, 1]}}, "loguniform needs low > 0"),
    ({"train.lr": {"uniform": [0.1]}}, "uniform takes 2 numbers"),
    ({"model.unpooling": {"choice": ["transpose", "bogus"]}}, "tune.search_space.model.unpooling: value 'bogus' is invalid"),
    ({"model.backbone": {"grid": ["resnet9"]}}, "every point is impossible (e.g. model.backbone: unknown backbone 'resnet9'"),
    ({"resources.num_workers": {"choice": [1, 2]}}, "resources settings are per campaign"),
    ({}, "tune.search_space is empty"),
])
def test_bad_spaces_are_one_line_errors_naming_the_key(space: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_space(_cfg(space))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_impossible_grid_points_are_skipped_and_listed() -> None:
    checked = check_space(_cfg({"model.unpooling": {"grid": ["transpose", "maxunpool"]}, "model.pooling": {"grid": ["max", "avg"]}}))
    assert {tuple(sorted(p.items())) for p in checked.grid} == {
        (("model.pooling", "max"), ("model.unpooling", "transpose")), (("model.pooling", "avg"), ("model.unpooling", "transpose")),
        (("model.pooling", "max"), ("model.unpooling", "maxunpool"))}
    assert [s["params"] for s in checked.skipped] == [{"model.unpooling": "maxunpool", "model.pooling": "avg"}]
    assert "maxunpool" in checked.skipped[0]["reason"]


def test_a_space_of_only_impossible_points_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every point is impossible|invalid"):
        check_space(_cfg({"model.unpooling": {"grid": ["maxunpool"]}, "model.backbone": {"grid": ["resnet18", "resnet34"]}}))


def test_sampled_impossible_points_pass_the_check_and_fail_when_applied() -> None:
    cfg = _cfg({"model.unpooling": {"choice": ["maxunpool", "transpose"]}, "model.backbone": {"choice": ["scratch", "resnet18"]}})
    assert check_space(cfg).skipped == []
    with pytest.raises(ConfigError, match="maxunpool"):
        apply_params(cfg, {"model.unpooling": "maxunpool", "model.backbone": "resnet18"})


def test_apply_params_keeps_storage_credentials() -> None:
    cfg = _cfg({"train.lr": {"uniform": [0.001, 0.01]}}, "storage.access_key_id=AKIA", "storage.secret_access_key=s3cret")
    out = apply_params(cfg, {"train.lr": 0.005, "model.depth": 5})
    assert out.train.lr == 0.005 and out.model.depth == 5
    assert out.storage.secret_access_key.get_secret_value() == "s3cret" and "s3cret" not in str(out.to_dict())


def test_flat_params_unfolds_the_grid_point() -> None:
    assert flat_params({"train.lr": 0.1, GRID_KEY: {"model.backbone": "vgg11"}}) == {"model.backbone": "vgg11", "train.lr": 0.1}


def test_parse_space_reads_every_dim() -> None:
    dims = parse_space({"model.depth": {"randint": [3, 5]}, "train.lr": {"loguniform": [1e-4, 1e-2]}})
    assert [(d.key, d.kind, d.probe_values()) for d in dims] == [("model.depth", "randint", [3, 5]), ("train.lr", "loguniform", [1e-4, 1e-2])]


@pytest.mark.parametrize("name", SCHEDULERS.list())
def test_every_scheduler_builds(name: str) -> None:
    assert SCHEDULERS.get(name)(_cfg({"train.lr": {"uniform": [0.001, 0.01]}}), None) is not None


def test_optuna_missing_is_a_clear_error_or_builds() -> None:
    cfg = _cfg({"train.lr": {"uniform": [0.001, 0.01]}}, "tune.search=optuna")
    try:
        import optuna  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install optuna"):
            SEARCHERS.get("optuna")(cfg)
    else:
        assert SEARCHERS.get("optuna")(cfg) is not None


def test_rung_values_take_the_first_report_at_or_past_each_milestone() -> None:
    rows = [{"epoch": e, "val_mean_iou": v} for e, v in enumerate([0.5, 0.6, 0.7, 0.8])]
    assert rung_values(rows, "val_mean_iou", [4, 2, 1, 8]) == {4: 0.8, 2: 0.6, 1: 0.5}
    # validation rounds (train.val_every_*): rungs count passes, not reports
    rounds = [{"epoch": e, "epochs_done": d, "val_mean_iou": v} for e, (d, v) in enumerate(
        [(0.5, 0.1), (1.0, 0.2), (1.5, 0.3), (2.0, 0.4)])]
    assert rung_values(rounds, "val_mean_iou", [1, 2]) == {1: 0.2, 2: 0.4}


def test_restored_asha_stops_a_trial_below_the_rungs_recorded_before_the_restore(tmp_path) -> None:
    """Tune rebuilds ASHA empty on restore; ours refills its rungs from the trials' metrics on storage."""
    from ray.tune.schedulers import TrialScheduler

    cfg = _cfg({"train.lr": {"uniform": [0.001, 0.01]}}, "train.epochs=8", "tune.grace_period=2", "tune.reduction_factor=2")
    campaign = CampaignDir(resolve(tmp_path) / "c")
    for trial_id, values in {"good": [0.6, 0.7, 0.8, 0.85], "fair": [0.5, 0.65, 0.7, 0.75], "slow": [0.3, 0.4]}.items():
        run = campaign.trial(trial_id)
        for epoch, v in enumerate(values):
            run.append("metrics.jsonl", {"epoch": epoch, "val_mean_iou": v})
    sched = SCHEDULERS.get("asha")(cfg, campaign.uri)
    sched.set_search_properties("val_mean_iou", "max")

    class Trial:
        def __init__(self, trial_id: str) -> None:
            self.trial_id = trial_id

    slow, fresh = Trial("slow"), Trial("fresh")
    sched.on_trial_add(None, slow)
    sched.on_trial_add(None, fresh)
    # "slow" resumes after epoch 2 and reports epoch 4 (milestone 4) below the cutoff "good" and "fair" set there
    assert sched.on_trial_result(None, slow, {"epochs_done": 4, "val_mean_iou": 0.5}) == TrialScheduler.STOP
    # a new trial at milestone 2 above the recorded cutoff goes on
    assert sched.on_trial_result(None, fresh, {"epochs_done": 2, "val_mean_iou": 0.69}) == TrialScheduler.CONTINUE
    # without the restored rungs the same first report would always continue
    empty = SCHEDULERS.get("asha")(cfg, None)
    empty.set_search_properties("val_mean_iou", "max")
    empty.on_trial_add(None, slow)
    assert empty.on_trial_result(None, slow, {"epochs_done": 4, "val_mean_iou": 0.5}) == TrialScheduler.CONTINUE


def test_a_large_valid_space_is_checked_exactly_and_fast() -> None:
    """Over 4096 probe combinations: each value is checked against the keys it depends on, not alone over the base,
    so maxunpool (valid with scratch, not with resnet18) is kept; a value impossible everywhere is still refused."""
    import time

    from unet_dist.tune.space import MAX_ENUMERATED

    space = {
        "model.backbone": {"choice": ["scratch", "resnet18", "resnet34", "vgg11"]},
        "model.unpooling": {"grid": ["transpose", "bilinear", "maxunpool"]},
        "model.pooling": {"choice": ["max", "avg"]},
        "model.dropout": {"choice": [0.0, 0.1, 0.2, 0.3]},
        "model.activation": {"choice": ["relu", "silu"]},
        "train.lr": {"choice": [1e-4 * i for i in range(1, 17)]},
        "train.weight_decay": {"choice": [0.0, 1e-5, 1e-4, 1e-3]},
        "data.batch_size": {"grid": [2, 4]},
        "train.warmup_epochs": {"randint": [0, 3]},
    }
    check_space(_cfg({"train.lr": {"uniform": [0.001, 0.01]}}))  # imports (Ray's distributions) out of the timing
    start = time.perf_counter()
    checked = check_space(_cfg(space, "model.backbone=resnet18"))  # a base where maxunpool alone is impossible
    seconds = time.perf_counter() - start
    combos = 4 * 3 * 2 * 4 * 2 * 16 * 4 * 2 * 2
    assert combos > MAX_ENUMERATED and seconds < 1.0, seconds
    assert {p["model.unpooling"] for p in checked.grid} == {"transpose", "bilinear", "maxunpool"}
    assert len(checked.grid) == 6 and checked.skipped == []
    # grid maxunpool with a grid of backbones: resnet18 x maxunpool is impossible whatever is sampled, scratch is not
    grid = {**space, "model.backbone": {"grid": ["scratch", "resnet18"]}}
    checked = check_space(_cfg(grid, "model.backbone=resnet18"))
    assert [s["params"] for s in checked.skipped] == [
        {"model.unpooling": "maxunpool", "data.batch_size": b, "model.backbone": "resnet18"} for b in (2, 4)]
    assert "maxunpool" in checked.skipped[0]["reason"] and len(checked.grid) == 3 * 2 * 2 - 2
    for bad, needle in [({"model.activation": {"choice": ["relu", "bogus"]}}, "model.activation: value 'bogus' is invalid"),
                        ({"model.backbone": {"choice": ["resnet18", "resnet9"]}}, "model.backbone: value 'resnet9' is invalid"),
                        ({"model.backbone": {"choice": ["resnet18", "vgg11"]}, "model.unpooling": {"grid": ["maxunpool"]}},
                         "model.backbone: value 'resnet18' is invalid: model.unpooling: 'maxunpool' cannot be used"),
                        ({"model.backbone": {"choice": ["resnet18", "resnet34"]}, "model.unpooling": {"grid": ["maxunpool"]}},
                         "every point is impossible")]:
        with pytest.raises(ConfigError) as err:
            check_space(_cfg({**space, **bad}))
        assert needle in str(err.value) and "\n" not in str(err.value)


def test_cross_field_keys_cover_what_each_section_validator_reads() -> None:
    """The keys space.py checks together are every field a section's model validator reads (recorded through a proxy,
    over configs that take each branch): a validator reading a new field must be listed in CROSS_FIELD."""
    from unet_dist.config import Config
    from unet_dist.tune.space import CROSS_FIELD

    class Reads:
        def __init__(self, obj) -> None:
            object.__setattr__(self, "_obj", obj)
            object.__setattr__(self, "seen", set())

        def __getattr__(self, name: str):
            self.seen.add(name)
            return getattr(self._obj, name)

    variants = {"model": [{}, {"unpooling": "maxunpool"}, {"unpooling": "maxunpool", "backbone": "resnet18"},
                          {"unpooling": "maxunpool", "pooling": "avg"}, {"weights": "IMAGENET1K_V1", "backbone": "resnet18"},
                          {"weights": "/tmp/enc.pt"}, {"depth": 9}]}
    for section, field in Config.model_fields.items():
        cls = field.annotation
        if section in ("tune", "storage", "resources"):  # never searched
            continue
        for validator in cls.__pydantic_decorators__.model_validators.values():
            seen: set[str] = set()
            for change in variants.get(section, [{}]):
                proxy = Reads(cls.model_construct(**{**cls().model_dump(), **change}))
                try:
                    validator.func(proxy)
                except (ValueError, ConfigError):
                    pass
                seen |= proxy.seen
            assert seen and seen <= CROSS_FIELD[section], (section, seen - CROSS_FIELD.get(section, set()))
