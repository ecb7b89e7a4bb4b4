"""The one config schema: defaults, YAML + --set layering, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unet_dist import catalog
from unet_dist.config import Config, ModelConfig, config_reference, load_config, parse_overrides, validate_section
from unet_dist.errors import ConfigError
from unet_dist.models.blocks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS, POOLING, UNPOOLING
from unet_dist.models.registry import BACKBONES
from unet_dist.registry import Registry
from unet_dist.losses import LOSSES
from unet_dist.train.optim import OPTIMIZERS, SCHEDULERS
from unet_dist.tune.schedulers import SCHEDULERS as TUNE_SCHEDULERS, SEARCHERS

REGISTRIES = [BACKBONES, POOLING, UNPOOLING, ACTIVATIONS, OUTPUT_ACTIVATIONS, NORMS, LOSSES, OPTIMIZERS, SCHEDULERS,
              TUNE_SCHEDULERS, SEARCHERS]

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_valid():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.backbone == "scratch" and cfg.storage.uri == "./runs"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"backbone": "resnet34", "depth": 5}, "train": {"epochs": 3}}))
    cfg = load_config(f, ["train.epochs=7", "train.class_weights=[1, 2.5]", "resources.num_workers=1-4"])
    assert (cfg.model.backbone, cfg.model.depth, cfg.train.epochs) == ("resnet34", 5, 7)
    assert cfg.train.class_weights == [1.0, 2.5]
    assert cfg.resources.num_workers == (1, 4)


def test_parse_overrides_types():
    assert parse_overrides(["a.b=3", "a.c=true", "d=s3://x/y", "e=null"]) == {
        "a": {"b": 3, "c": True}, "d": "s3://x/y", "e": None}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.unpooling=bicubic"], "model.unpooling: unknown unpooling 'bicubic'; choose one of: transpose, bilinear"),
        (["model.colour=red"], "model.colour: unknown key; allowed keys: backbone,"),
        (["nosuch.key=1"], "nosuch: unknown key; allowed keys: model, data, ingest, train, tune, storage, resources, tracking"),
        (["train.lr=-1"], "train.lr: invalid value -1: Input should be greater than 0"),
        (["model.depth=9"], "model.depth: invalid value 9: Input should be less than or equal to 6"),
        (["model.pooling=avg", "model.unpooling=maxunpool"], "'maxunpool' needs the pooling indices of max pooling"),
        (["ingest.split=[0.5, 0.2, 0.1]"], "ingest.split must be three non-negative ratios summing to 1"),
        (["resources.num_workers=3-1"], "resources.num_workers range must be 1 <= min <= max"),
        (["novalue"], "expected KEY=VALUE"),
        (["tracking.mlflow_uri=https://me:pw@mlflow.example.com"],
         "tracking.mlflow_uri: https://***@mlflow.example.com: a tracking URI must not hold credentials; set "
         "MLFLOW_TRACKING_USERNAME"),
    ],
)
def test_errors_are_one_line_and_name_the_key(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path):
    from unet_dist.models import check_model_config

    check_model_config(load_config(path).model)


def _field_type(key: str) -> object:
    section, name = key.split(".")
    return Config.model_fields[section].annotation.model_fields[name].annotation


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.key)
def test_config_choices_are_the_registry(registry: Registry) -> None:
    """A config key takes exactly the names its registry builds: the one list in the catalog (read without torch),
    in the registry's order, shown in the README reference."""
    choices = list(catalog.BACKBONES) if registry.key == "model.backbone" else catalog.CHOICES[registry.key]
    assert registry.list() == choices
    assert _field_type(registry.key) is str
    if registry.key != "model.backbone":
        assert f"| `{registry.key}` | `{{{', '.join(choices)}}}` |" in config_reference()


def test_a_registered_loss_is_a_config_choice() -> None:
    """A user's ``register_loss`` extends what configs accept (the schema holds no second list)."""
    from unet_dist.losses import create_loss, register_loss

    name = "test_ce_copy"
    with pytest.raises(ConfigError, match=f"train.loss: unknown loss '{name}'"):
        load_config(overrides=[f"train.loss={name}"])
    register_loss(name)(LOSSES.get("ce"))
    try:
        assert load_config(overrides=[f"train.loss={name}"]).train.loss == name
        assert create_loss(name, 2) is not None
    finally:
        LOSSES._entries.pop(name)
        LOSSES._meta.pop(name)
        catalog.CHOICES["train.loss"].remove(name)


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.key)
def test_config_refuses_unknown_choice_in_one_line(registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"{registry.key}=nope"])
    msg = str(err.value)
    assert msg.startswith(f"{registry.key}: ") and "'nope'" in msg and "\n" not in msg
    assert all(name in msg for name in registry)


@pytest.mark.parametrize("build", [
    lambda: Config.model_validate({"model": {"backbone": "resnet9"}}),
    lambda: validate_section(Config, {"model": {"backbone": "resnet9"}}, ""),
    lambda: validate_section(ModelConfig, {"backbone": "resnet9"}, "model"),
    lambda: ModelConfig(backbone="resnet9"),
    lambda: setattr(ModelConfig(), "backbone", "resnet9"),
], ids=["model_validate", "validate_section", "validate_section-model", "ModelConfig", "assignment"])
def test_registry_errors_surface_as_the_one_line_config_error(build) -> None:
    with pytest.raises(ConfigError) as err:
        build()
    assert str(err.value).startswith("model.backbone: unknown backbone 'resnet9'; choose one of: scratch, vgg11")
    assert "\n" not in str(err.value)
