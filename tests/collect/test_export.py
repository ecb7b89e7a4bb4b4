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
from unet_dist.checkpoint import CheckpointError, load_checkpoint

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
        assert sorted(p.name for p in folder.iterdir()) == ["COMPLETE", "model.json", "model.safetensors", "state.pt"]
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


def test_the_safetensors_file_alone_predicts_as_the_checkpoint(exported: dict) -> None:
    """``model.safetensors``, read with safetensors alone (no pickle) into the model the card describes, predicts
    exactly what the checkpoint does, at a third of its size or less (no optimiser state)."""
    import hashlib

    from safetensors.torch import load_file

    from unet_dist.config import ModelConfig
    from unet_dist.models import create_unet

    folder = Path(exported["store"]) / exported["result"].champion
    card = json.loads((folder / "model.json").read_text())
    data = (folder / "model.safetensors").read_bytes()
    assert card["weights"]["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(data) * 3 <= (folder / "state.pt").stat().st_size + 4096, (len(data), (folder / "state.pt").stat().st_size)
    state = load_checkpoint(str(folder))

    def built(weights: dict) -> torch.nn.Module:
        model = create_unet(ModelConfig(**{**card["config"]["model"], "weights": None}))
        model.load_state_dict(weights)
        return model.eval()

    x = torch.rand(2, card["config"]["model"]["in_channels"], 64, 48)
    with torch.no_grad():
        assert torch.equal(built(load_file(folder / "model.safetensors"))(x), built(state["model"])(x))


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
    from unet_dist.inference.model import checkpoint_config, load_model
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
    assert abs(scores["image_mean_iou"] - alias["value"]) < 1e-9  # the runs' monitor, val_image_mean_iou


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


@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE"])
def test_export_refuses_a_marker_naming_a_file_outside_the_checkpoint(collect_tree: dict, tmp_path: Path, capsys,
                                                                      name: str) -> None:
    """A COMPLETE marker listing ``../../x`` (or an absolute path) would read outside STORAGE and write outside DEST:
    export refuses it in one line naming the checkpoint and the name, before writing anything."""
    storage = copy_tree(collect_tree, tmp_path / "storage")
    source = Path(_best_rows(storage)[0]["best_checkpoint"])
    planted = source.parent.parent / "x"  # what "../../x" names from the checkpoint folder (a stray file in trials/)
    planted.write_bytes(b"not a checkpoint file")
    name = str(planted) if name == "ABSOLUTE" else name
    marker = json.loads((source / "COMPLETE").read_text())
    (source / "COMPLETE").write_text(json.dumps({**marker, "files": {**marker["files"], name: planted.stat().st_size}}))
    store = tmp_path / "store"
    assert main(["export", storage, str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(source) in err and repr(name) in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # "../../x" from DEST/<model>/
    assert not [p for p in store.rglob("*") if p.is_file()] if store.exists() else True


def _save_in_place(source: Path, state: dict, old_marker: bool) -> bytes:
    """``torch.save`` ``state`` as the source's state.pt with a matching marker (with its SHA-256, or in the older
    form without one), as a run's checkpointing would."""
    import hashlib
    import tempfile

    from unet_dist.runs import marker_text

    with tempfile.TemporaryDirectory() as tmp:  # saved under the same file name: torch names the zip records by it
        torch.save(state, Path(tmp) / "state.pt")
        new = (Path(tmp) / "state.pt").read_bytes()
    (source / "COMPLETE").unlink()
    (source / "state.pt").write_bytes(new)
    sha = None if old_marker else {"state.pt": hashlib.sha256(new).hexdigest()}
    (source / "COMPLETE").write_text(marker_text({"state.pt": len(new)}, state["epoch"], sha))
    return new


def _resaved(source: Path, old_marker: bool) -> None:
    """The source's state re-saved unchanged: a loaded state pickles without the original's shared strings, so
    only after one round trip does a changed tensor give a file of exactly the same length."""
    _save_in_place(source, torch.load(source / "state.pt", weights_only=True), old_marker)


def _retrain_in_place(source: Path, old_marker: bool) -> bytes:
    """A retrain of the run under the same name, simulated: the source's state.pt gets other weights of the same size
    (other bytes, same length)."""
    old = (source / "state.pt").read_bytes()
    state = torch.load(source / "state.pt", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][key] = state["model"][key] + 1.0
    new = _save_in_place(source, state, old_marker)
    assert len(new) == len(old) and new != old
    return new


@pytest.mark.parametrize("old_marker", [False, True], ids=["sha256-marker", "marker-without-sha256"])
def test_reexport_after_a_retrain_under_the_same_name_copies_the_new_weights(collect_tree: dict, tmp_path: Path,
                                                                              old_marker: bool) -> None:
    import hashlib

    storage = copy_tree(collect_tree, tmp_path / "storage")
    store = tmp_path / "store"
    _resaved(Path(_best_rows(storage)[0]["best_checkpoint"]), old_marker)
    first = export(storage, str(store), top=1)
    model = first.models[0]
    alias_before = json.loads((store / "champion" / "alias.json").read_text())
    new = _retrain_in_place(Path(model.source), old_marker)
    again = export(storage, str(store), top=1)
    assert again.models[0].name == model.name and again.models[0].copied and again.bytes_copied == len(new)
    assert (store / model.name / "state.pt").read_bytes() == new
    card = json.loads((store / model.name / "model.json").read_text())
    assert card["files"]["state.pt"] == {"bytes": len(new), "sha256": hashlib.sha256(new).hexdigest()}
    alias = json.loads((store / "champion" / "alias.json").read_text())
    assert alias["model"] == model.name and alias["sha256"] != alias_before["sha256"]
    champion, retrained = load_checkpoint(str(store / "champion")), torch.load(Path(model.source) / "state.pt", weights_only=True)
    assert all(torch.equal(v, retrained["model"][k]) for k, v in champion["model"].items())
    third = export(storage, str(store), top=1)  # and unchanged again after that
    assert not third.models[0].copied and json.loads((store / "champion" / "alias.json").read_text()) == alias


def test_a_diverged_run_is_never_exported(collect_tree: dict, tmp_path: Path) -> None:
    """A best value of NaN (a diverged run's record) ranks last and is not exported, even asked for every model."""
    import math

    storage = copy_tree(collect_tree, tmp_path / "storage")
    rows = _best_rows(storage)
    top = Path(rows[0]["run_uri"]) / "run.json"
    record = json.loads(top.read_text())
    record["best"]["value"] = float("nan")
    top.write_text(json.dumps(record))
    board = collect(storage, write=False)
    assert board.rows[0]["trial"] != rows[0]["trial"] and math.isnan(
        next(r["best_value"] for r in board.rows if r["trial"] == rows[0]["trial"]))
    result = export(storage, str(tmp_path / "store"), top=10)
    assert rows[0]["best_checkpoint"] not in [m.source for m in result.models] and result.models
