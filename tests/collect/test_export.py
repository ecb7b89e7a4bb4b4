"""`unet-dist export`: the best checkpoints of a real result tree copied to a model store (local and S3) with cards,
a champion alias, and exported models accepted wherever a checkpoint is. Budget: ~40 s on top of collect_tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import S3_SECRET
from unet_dist.cli import main
from unet_dist.collect.export import export
from unet_dist.collect.leaderboard import collect
from unet_dist.storage import resolve
from unet_dist.train.checkpoint import CheckpointError, load_checkpoint

CARD_FIELDS = ("config", "params", "metrics", "monitor", "dataset", "code_version", "created_at", "source", "epoch", "files")


def copy_tree(collect_tree: dict, dest: Path) -> str:
    """A private byte copy of the local result tree (export pins into STORAGE; the shared tree stays untouched)."""
    shutil.copytree(collect_tree["local"], dest)
    return str(dest)


def copy_s3_tree(collect_tree: dict, uri: str) -> str:
    """A private copy of the S3 result tree at ``uri``, copied server-side (CopyObject: no bytes through the test)."""
    src, dst = resolve(collect_tree["s3"]), resolve(uri)
    src.fs.copy(src.path + "/", dst.path + "/", recursive=True)
    return uri


def store_files(store: str) -> dict[str, bytes]:
    loc = resolve(store)
    return {p: loc.fs.cat_file(p) for p in loc.fs.find(loc.path)}


@pytest.fixture(scope="module")
def exported(collect_tree: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The top 3 of a copy of the local tree exported to a local model store."""
    root = tmp_path_factory.mktemp("export")
    storage = copy_tree(collect_tree, root / "storage")
    store = str(root / "store")
    return {"storage": storage, "store": store, "result": export(storage, store, top=3)}


def _best_rows(storage: str) -> list[dict]:
    return [r for r in collect(storage, write=False).rows if r.get("best_checkpoint")]


def test_export_local_top_k_with_cards_and_champion(exported: dict) -> None:
    result, store = exported["result"], Path(exported["store"])
    rows = _best_rows(exported["storage"])
    assert [m.source for m in result.models] == [r["best_checkpoint"] for r in rows[:3]]
    for model in result.models:
        folder = store / model.name
        assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "model.json", "state.pt"]
        assert (folder / "state.pt").read_bytes() == (Path(model.source) / "state.pt").read_bytes()
        card = json.loads((folder / "model.json").read_text())
        assert all(card.get(k) is not None for k in CARD_FIELDS) and card["config"] and card["metrics"], card.keys()
        assert card["source"] == model.source and card["monitor"]["value"] == model.value
        assert set(card["metrics"]["val_per_class_iou"]) == {"background", "foreground"}
        assert card["dataset"]["fingerprint"] and card["dataset"]["manifest"].endswith("/dataset.json")
        for key, value in card["params"].items():  # searched values (a single run has none) match the config
            section, name = key.split(".")
            assert card["config"][section][name] == value
        assert card["files"]["state.pt"]["bytes"] == (folder / "state.pt").stat().st_size
    assert not any(b"unetdist-test-secret" in data for data in store_files(str(store)).values())
    alias = json.loads((store / "champion" / "alias.json").read_text())
    assert alias["model"] == result.champion == result.models[0].name
    assert result.models[0].value == max(r["best_value"] for r in rows)
    champion, best = load_checkpoint(str(store / "champion")), load_checkpoint(result.models[0].uri)
    assert all(torch.equal(v, best["model"][k]) for k, v in champion["model"].items())


def test_reexport_is_idempotent_and_a_partial_model_is_never_loaded(exported: dict) -> None:
    store = Path(exported["store"])
    def cards() -> dict[str, str]:
        return {p.name: (p / ("alias.json" if p.name == "champion" else "model.json")).read_text() for p in store.iterdir()}

    before = cards()
    again = export(exported["storage"], str(store), top=3)
    assert not any(m.copied for m in again.models) and again.bytes_copied == 0
    assert cards() == before
    (store / again.champion / "model.json").unlink()  # an export cut short before its card
    with pytest.raises(CheckpointError, match="did not finish"):
        load_checkpoint(str(store / "champion"))
    healed = export(exported["storage"], str(store), top=1)
    assert healed.models[0].copied and healed.champion == again.champion
    assert load_checkpoint(str(store / "champion"))["epoch"] == json.loads((store / again.champion / "model.json").read_text())["epoch"]
    assert len([p for p in store.iterdir() if p.name != "champion"]) == len(again.models)


def test_exported_model_and_champion_are_checkpoint_references(exported: dict) -> None:
    """train.resume_from and model.weights accept a model folder and DEST/champion (load and validation level)."""
    from unet_dist.config import Config
    from unet_dist.errors import ConfigError
    from unet_dist.models import create_unet
    from unet_dist.train.inference import checkpoint_config, load_model
    from unet_dist.train.trainer import check_resume_from

    store = Path(exported["store"])
    champion = str(store / "champion")
    state = load_checkpoint(champion)
    cfg = checkpoint_config(state)
    for ref in (champion, exported["result"].models[0].uri):
        check_resume_from(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume_from": ref})}))
        unet = create_unet(cfg.model.model_copy(update={"weights": ref}))
        encoder = {k.removeprefix("encoder."): v for k, v in state["model"].items() if k.startswith("encoder.")}
        assert all(torch.equal(v, encoder[k]) for k, v in unet.encoder.state_dict().items())
    assert load_model(champion).cfg.model.backbone == cfg.model.backbone
    other = "resnet18" if cfg.model.backbone == "scratch" else "scratch"
    wrong = Config.model_validate({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "backbone": other},
                                   "train": {**cfg.to_dict()["train"], "resume_from": champion}})
    with pytest.raises(ConfigError, match="train.resume_from"):
        check_resume_from(wrong)


def test_export_s3_and_evaluate_champion_reproduces_its_card(collect_tree: dict, s3_uri: str, tmp_path: Path,
                                                             own_ray_tmpdir: str, capsys) -> None:
    storage = copy_s3_tree(collect_tree, f"{s3_uri}/storage")
    store = f"{s3_uri}/store"
    assert main(["export", storage, store, "--top", "2", "--campaign", collect_tree["campaign"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loc = resolve(store)
    files = store_files(store)
    assert not any(S3_SECRET.encode() in data or b"unetdist-test-secret" in data for data in files.values())
    alias = json.loads((loc / "champion" / "alias.json").read_text())
    card = json.loads((loc / alias["model"] / "model.json").read_text())
    assert card["source"].startswith(storage) and card["campaign"] == collect_tree["campaign"]
    assert {p.rsplit("/", 2)[-2] for p in files if p.endswith("model.json")} == {m["name"] for m in result["models"]}
    env = dict(os.environ, RAY_TMPDIR=own_ray_tmpdir)
    out = subprocess.run([sys.executable, "-m", "unet_dist", "evaluate", f"{store}/champion", "--json"],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    scores = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(scores["mean_iou"] - card["metrics"]["val_mean_iou"]) < 1e-9
    assert abs(scores["mean_iou"] - alias["value"]) < 1e-9


@pytest.mark.parametrize("args, message", [
    (["--campaign", "nope"], "unknown campaign nope"),
    (["--top", "0"], "--top must be at least 1"),
])
def test_export_bad_input_is_one_line(exported: dict, tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert main(["export", exported["storage"], str(tmp_path / "store"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_export_refuses_dest_inside_storage_or_a_run_and_empty_storage(exported: dict, collect_tree: dict, tmp_path: Path,
                                                                        capsys) -> None:
    assert main(["export", exported["storage"], f"{exported['storage']}/models"]) == 2
    assert "inside STORAGE" in capsys.readouterr().err
    assert main(["export", exported["storage"], f"{collect_tree['local']}/{collect_tree['run']}"]) == 2
    assert "is a run or campaign folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "store")]) == 2
    assert "no runs or campaigns" in capsys.readouterr().err
