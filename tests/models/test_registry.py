"""The registry type; the registries equal the config's choices; registry-dependent config errors are clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet_dist.config import ModelConfig, load_config
from unet_dist.errors import ConfigError
from unet_dist.models import check_model_config, get_backbone, list_backbones, register_backbone, registry_info, variants
from unet_dist.models.blocks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS, POOLING, UNPOOLING
from unet_dist.models.registry import BACKBONES, maxunpool_problem
from unet_dist.registry import Registry

MODEL_REGISTRIES = [BACKBONES, POOLING, UNPOOLING, ACTIVATIONS, OUTPUT_ACTIVATIONS, NORMS]


def test_registry_type() -> None:
    reg: Registry[int] = Registry("colour", key="paint.colour")
    assert reg.register("red", warm=True)(1) == 1
    reg.add("blue", 2)
    assert reg.list() == ["red", "blue"] == list(reg) and len(reg) == 2
    assert "red" in reg and "green" not in reg
    assert reg.get("blue") == 2 and reg.meta("red") == {"warm": True} and reg.meta("blue") == {}
    with pytest.raises(ValueError, match="colour 'red' is already registered"):
        reg.add("red", 3)
    assert reg.get("red") == 1
    with pytest.raises(ConfigError) as err:
        reg.get("green")
    assert str(err.value) == "paint.colour: unknown colour 'green'; choose one of: red, blue"


@pytest.mark.parametrize("registry", MODEL_REGISTRIES, ids=lambda r: r.key)
def test_unknown_choice_names_key_value_and_choices(registry: Registry) -> None:
    with pytest.raises(ConfigError) as err:
        registry.get("nope")
    assert str(err.value) == f"{registry.key}: unknown {registry.name} 'nope'; choose one of: {', '.join(registry)}"


@pytest.mark.parametrize("registry", MODEL_REGISTRIES, ids=lambda r: r.key)
def test_duplicates_are_refused(registry: Registry) -> None:
    first = registry.list()[0]
    before = registry.get(first)
    with pytest.raises(ValueError, match=f"'{first}' is already registered"):
        registry.add(first, object())
    assert registry.get(first) is before


def test_registry_info_lists_all_backbone_families() -> None:
    info = registry_info()
    assert set(info) == {"backbones", "pooling", "unpooling", "activations", "output_activations", "norms"}
    expected = {"scratch", *(f"vgg{n}{bn}" for n in (11, 13, 16, 19) for bn in ("", "_bn")),
                *(f"resnet{n}" for n in (18, 34, 50, 101, 152))}
    assert set(info["backbones"]) == expected == set(list_backbones())


def test_register_backbone_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("scratch", depths=(3, 6))(get_backbone("scratch").build)


def test_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match=r"model.backbone: unknown backbone 'vgg17'; choose one of: scratch, .*resnet152"):
        check_model_config(ModelConfig(backbone="vgg17"))


@pytest.mark.parametrize("backbone", list_backbones())
def test_depth_range_per_backbone(backbone: str) -> None:
    lo, hi = get_backbone(backbone).depths
    for depth in range(1, 7):
        if lo <= depth <= hi:
            check_model_config(ModelConfig(backbone=backbone, depth=depth))
        else:
            with pytest.raises(ConfigError, match=rf"model.depth: {depth} .*{backbone}.*allowed: {lo}-{hi}"):
                ModelConfig(backbone=backbone, depth=depth)
            with pytest.raises(ConfigError, match=rf"model.depth: {depth} .*{backbone}.*allowed: {lo}-{hi}"):
                check_model_config(ModelConfig.model_construct(backbone=backbone, depth=depth))


@pytest.mark.parametrize("backbone", [b for b in list_backbones() if get_backbone(b).maxunpool])
def test_maxunpool_with_strided_backbone_is_explained(backbone: str) -> None:
    with pytest.raises(ConfigError, match=r"model.unpooling: 'maxunpool' cannot be used with backbone .*strided.*"
                                          r"choose one of: transpose, bilinear, nearest, pixelshuffle"):
        check_model_config(ModelConfig(backbone=backbone, unpooling="maxunpool", depth=4))


@pytest.mark.parametrize("backbone", list_backbones())
@pytest.mark.parametrize("pooling", POOLING.list())
def test_one_maxunpool_rule_for_check_and_variants(backbone: str, pooling: str) -> None:
    """The schema, check_model_config and variants() all follow maxunpool_problem."""
    problem = maxunpool_problem(backbone, pooling)
    spec = get_backbone(backbone)
    assert (problem is None) == (not spec.maxunpool and (not spec.pooling or pooling == "max"))
    listed = (backbone, pooling if spec.pooling else None, "maxunpool") in variants([backbone])
    assert listed is (problem is None)
    cfg = {"backbone": backbone, "pooling": pooling, "unpooling": "maxunpool", "depth": 4}
    if problem is None:
        ModelConfig(**cfg)
    else:
        assert "\n" not in problem and problem.startswith("model.unpooling: 'maxunpool'")
        with pytest.raises(ConfigError) as err:
            ModelConfig(**cfg)
        assert str(err.value) == problem


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.backbone=resnet34", "model.unpooling=maxunpool"], "'maxunpool' cannot be used with backbone 'resnet34'"),
        (["model.backbone=scratch", "model.depth=2"], "model.depth: 2 is out of range for backbone 'scratch'; allowed: 3-6"),
        (["model.backbone=densenet"], "model.backbone: unknown backbone 'densenet'"),
        (["model.backbone=resnet18", "model.weights=IMAGENET9K"], "model.weights: 'IMAGENET9K' is neither"),
        (["model.weights=IMAGENET1K_V1"], "backbone 'scratch' has no torchvision weights"),
    ],
)
def test_load_config_refuses_what_the_registry_refuses(tmp_path: Path, overrides: list[str], message: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  num_classes: 2\n  depth: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_schema_rejects_maxunpool_without_max_pooling(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  unpooling: maxunpool\n  pooling: avg\n")
    with pytest.raises(ConfigError, match="needs the pooling indices of max pooling"):
        load_config(path)


def test_the_catalog_lists_exactly_the_registered_backbones() -> None:
    """config validates against the catalog, models build from the registry: the two lists are one."""
    from unet_dist import catalog

    assert list(catalog.BACKBONES) == list_backbones()
    for name in list_backbones():
        spec, info = get_backbone(name), catalog.BACKBONES[name]
        assert (spec.depths, spec.maxunpool, spec.torchvision, spec.pooling) == (
            info.depths, info.maxunpool, info.torchvision, info.pooling)


def test_a_new_family_gets_a_catalog_row_so_configs_accept_it() -> None:
    import subprocess
    import sys

    code = """
from unet_dist.models import register_backbone, get_backbone
from unet_dist.config import load_config
from unet_dist.errors import ConfigError

@register_backbone("tinynet", depths=(2, 3), maxunpool="no pooling indices")
def tiny(name, cfg):
    return get_backbone("scratch").build("scratch", cfg)

assert load_config(None, ["model.backbone=tinynet", "model.depth=3"]).model.backbone == "tinynet"
try:
    load_config(None, ["model.backbone=tinynet", "model.depth=4"])
except ConfigError as err:
    print(err)
try:
    register_backbone("madeup")(tiny)
except ValueError as err:
    print(err)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["model.depth: 4 is out of range for backbone 'tinynet'; allowed: 2-3",
                                       "backbone 'madeup' is not in unet_dist.catalog: pass depths=(lo, hi)"]
