"""`unet-dist gc` on copies of a real result tree (local and S3): the dry run names exactly what --yes deletes, and
what must survive does (champion, every run's best, a running trial's newest, exported sources). Budget: ~20 s."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.collect.test_export import copy_s3_tree
from unet_dist.cli import main
from unet_dist.collect.export import export
from unet_dist.collect.leaderboard import collect
from unet_dist.runs import MARKER_FILE, STATE_FILE
from unet_dist.storage import resolve
from unet_dist.train.checkpoint import load_checkpoint


def gc_json(capsys, *args: str) -> dict:
    assert main(["gc", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def prepare(storage: str, campaign: str) -> dict:
    """Make a trial ``running`` with a newest checkpoint past its record, and leave an orphan (no COMPLETE) in another."""
    root = resolve(storage)
    trials = sorted((root / campaign / "trials").ls(), key=lambda t: t.name)
    running, other = trials[0], trials[-1]
    record = json.loads((running / "run.json").read_text())
    (running / "run.json").write_text(json.dumps({**record, "status": "running"}))
    newest_complete = max(c.name for c in running.ls() if c.name.startswith("epoch_"))
    newest = running / f"epoch_{int(newest_complete[6:]) + 1:04d}"
    for name in (STATE_FILE, MARKER_FILE):
        (newest / name).write_bytes((running / newest_complete / name).read_bytes())
    orphan = other / "epoch_0042"
    (orphan / STATE_FILE).write_bytes(b"an upload cut short")
    return {"running_newest": newest.uri, "orphan": orphan.uri}


def holds_files(uri: str) -> bool:
    """Whether any object is left under ``uri`` (SeaweedFS may list an emptied S3 prefix for a while)."""
    loc = resolve(uri)
    return any(p.rstrip("/") != loc.path for p in loc.fs.find(loc.path))


def check_after(storage: str, dry: dict, done: dict, marks: dict, store: str | None = None) -> None:
    deleted = {i["uri"] for i in done["delete"]}
    assert {i["uri"] for i in dry["delete"]} == deleted and dry["dry_run"] and not done["dry_run"]
    assert dry["bytes_freed"] == done["bytes_freed"] > 0
    assert marks["orphan"] in deleted and marks["running_newest"] not in deleted
    assert not any(holds_files(u) for u in deleted)
    assert all(resolve(i["uri"]).exists() for i in done["keep"])
    rows = [r for r in collect(storage, write=False).rows if r.get("best_checkpoint")]
    assert rows and all(load_checkpoint(r["best_checkpoint"])["model"] for r in rows)
    assert load_checkpoint(marks["running_newest"])["model"]
    if store:
        assert load_checkpoint(f"{store}/champion")["model"]


def test_gc_local_dry_run_is_what_yes_deletes(collect_tree: dict, tmp_path: Path, capsys) -> None:
    storage = str(tmp_path / "storage")
    shutil.copytree(collect_tree["local"], storage)
    marks = prepare(storage, collect_tree["campaign"])
    store = str(tmp_path / "store")
    pinned = export(storage, store, top=1, campaigns=[collect_tree["run"]]).models[0].source
    before = {p for p in Path(storage).rglob("*") if "epoch_" not in str(p)}
    dry = gc_json(capsys, storage, "--keep-best", "1")
    assert all(resolve(i["uri"]).exists() for i in dry["delete"])
    table = main(["gc", storage, "--keep-best", "1"]) == 0 and capsys.readouterr().out
    assert "would delete" in table and "dry run" in table
    done = gc_json(capsys, storage, "--keep-best", "1", "--yes")
    check_after(storage, dry, done, marks, store)
    assert pinned in {i["uri"] for i in done["keep"]} and resolve(pinned).exists()
    assert {p for p in Path(storage).rglob("*") if "epoch_" not in str(p)} == before
    assert gc_json(capsys, storage, "--keep-best", "1")["delete"] == []


def test_gc_without_run_bests_keeps_only_the_top_and_exports(collect_tree: dict, tmp_path: Path, capsys) -> None:
    storage = str(tmp_path / "storage")
    shutil.copytree(collect_tree["local"], storage)
    rows = [r for r in collect(storage, write=False).rows if r.get("best_checkpoint")]
    plan = gc_json(capsys, storage, "--keep-best", "1", "--no-keep-trial-best")
    assert [i["uri"] for i in plan["keep"]] == [rows[0]["best_checkpoint"]]
    exported = export(storage, str(tmp_path / "store"), top=1, campaigns=[rows[-1]["campaign"] or rows[-1]["trial"]])
    plan = gc_json(capsys, storage, "--keep-best", "1", "--no-keep-trial-best")
    assert {i["uri"]: i["reason"].split(" ")[0] for i in plan["keep"]} == {rows[0]["best_checkpoint"]: "top",
                                                                           exported.models[0].source: "exported"}
    latest = gc_json(capsys, storage, "--keep-best", "0", "--no-keep-trial-best", "--keep-latest",
                     "--campaign", collect_tree["run"])
    assert sorted(i["reason"].split(" ")[0] for i in latest["keep"]) == ["exported", "run"]  # single: best 0, latest 1
    assert main(["gc", storage, "--campaign", "nope"]) == 2 and "unknown campaign nope" in capsys.readouterr().err


@pytest.mark.s3
def test_gc_s3_dry_run_is_what_yes_deletes(collect_tree: dict, s3_uri: str, capsys) -> None:
    storage = copy_s3_tree(collect_tree, f"{s3_uri}/storage")
    marks = prepare(storage, collect_tree["campaign"])
    dry = gc_json(capsys, storage)
    done = gc_json(capsys, storage, "--yes")
    check_after(storage, dry, done, marks)
    assert gc_json(capsys, storage)["delete"] == []
