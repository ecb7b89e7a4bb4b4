"""`unet-dist gc` on copies of a real result tree (local and S3): the dry run names exactly what --yes deletes, and
what must survive does (champion, every run's best, a running trial's newest, exported sources). Budget: ~20 s."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.collect.test_export import copy_s3_tree
from unet_dist.cli import main
from unet_dist.collect.export import export
from unet_dist.collect.ray_snapshot import SNAPSHOT_FILE, referenced
from unet_dist.collect.leaderboard import collect
from unet_dist.runs import MARKER_FILE, STATE_FILE
from unet_dist.storage import resolve
from unet_dist.checkpoint import load_checkpoint


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
    plan = gc_json(capsys, storage, "--keep-best", "1", "--no-keep-trial-best", "--no-keep-latest")
    assert [i["uri"] for i in plan["keep"]] == [rows[0]["best_checkpoint"]]
    # the single run's best exported (the run ranks anywhere: its 2 epochs can tie a stopped trial's first)
    exported = export(storage, str(tmp_path / "store"), top=1, campaigns=[collect_tree["run"]])
    plan = gc_json(capsys, storage, "--keep-best", "1", "--no-keep-trial-best", "--no-keep-latest")
    expected = {rows[0]["best_checkpoint"]: "top", exported.models[0].source: "exported"}  # an export pin comes first
    assert {i["uri"]: i["reason"].split(" ")[0] for i in plan["keep"]} == expected
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


def gc_run(capsys, *args: str) -> tuple[int, dict]:
    """``unet-dist gc ... --json``: exit status and its JSON line."""
    rc = main(["gc", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def snapshots(storage: str) -> dict[str, dict]:
    """``{run folder: its Ray snapshot}`` for every run or trial under ``storage``."""
    root = resolve(storage)
    return {p.parent.uri: json.loads(p.read_text())
            for p in [r / SNAPSHOT_FILE for r in [*root.ls(), *(root / "bxu" / "trials").ls()]] if p.exists()}


def missing_references(storage: str) -> list[str]:
    """Every checkpoint a Ray snapshot references that is gone (Ray then refuses to resume the run)."""
    return [f"{run}/{n}" for run, state in snapshots(storage).items() for n in sorted(referenced(state))
            if not resolve(f"{run}/{n}").exists()]


def set_status(storage: str, run_uri: str, status: str) -> None:
    loc = resolve(run_uri) / "run.json"
    loc.write_text(json.dumps({**json.loads(loc.read_text()), "status": status}))


def test_gc_keeps_what_a_resume_needs_and_rewrites_finished_snapshots(collect_tree: dict, tmp_path: Path, capsys) -> None:
    storage = str(tmp_path / "storage")
    shutil.copytree(collect_tree["local"], storage)
    before = snapshots(storage)
    assert before and all(referenced(s) for s in before.values())
    stopped = max(before, key=lambda r: len(referenced(before[r])))  # the trial with most tracked checkpoints
    assert len(referenced(before[stopped])) >= 2
    set_status(storage, stopped, "stopped")
    dry = gc_json(capsys, storage, "--keep-best", "0")
    done = gc_json(capsys, storage, "--keep-best", "0", "--yes")
    assert {i["uri"] for i in done["delete"]} == {i["uri"] for i in dry["delete"]} == set(done["removed"])
    assert all(resolve(f"{stopped}/{n}").exists() for n in referenced(before[stopped]))  # Ray resumes from these
    assert not missing_references(storage)
    after = snapshots(storage)
    assert after[stopped] == before[stopped]  # a resumable run's snapshot is Ray's: never rewritten
    rewritten = [r for r in after if after[r] != before[r]]
    assert rewritten, "no finished run lost a tracked checkpoint: the test shows nothing"
    for run in rewritten:
        state = after[run]
        assert len(state["checkpoint_results"]) == len(state["checkpoint_report_indices"])
        names = [r["checkpoint_dir_name"] for r in state["checkpoint_results"]]
        assert state["latest_checkpoint_result"]["checkpoint_dir_name"] in names
        assert before[run]["latest_checkpoint_result"] == state["latest_checkpoint_result"]  # the latest is kept


def test_gc_yes_plan_deletes_exactly_the_reviewed_plan_or_refuses(collect_tree: dict, tmp_path: Path, capsys) -> None:
    storage = str(tmp_path / "storage")
    shutil.copytree(collect_tree["local"], storage)
    plan_file = str(tmp_path / "plan.json")
    assert main(["gc", storage, "--keep-best", "1", "--plan", plan_file]) == 0
    shown = capsys.readouterr().out
    saved = json.loads(Path(plan_file).read_text())
    assert saved["digest"] in shown and f"--yes --plan {plan_file}" in shown and saved["delete"]
    snaps = snapshots(storage)
    victim = next(run for run, name in (i["uri"].rsplit("/", 1) for i in saved["delete"])
                  if name in referenced(snaps.get(run, {"checkpoint_results": []})))
    set_status(storage, victim, "error")  # now resumable: its tracked checkpoints are needed
    assert main(["gc", storage, "--yes", "--plan", plan_file]) == 2
    err = capsys.readouterr().err
    assert "storage changed since the plan" in err and "nothing was deleted" in err and err.count("\n") <= 2
    assert all(resolve(i["uri"]).exists() for i in saved["delete"])
    set_status(storage, victim, "finished")
    assert main(["gc", storage, "--keep-best", "1", "--plan", plan_file]) == 0
    capsys.readouterr()
    reviewed = json.loads(Path(plan_file).read_text())
    late = resolve(victim) / "epoch_0042"  # garbage that appears after the review: not in the plan, not deleted
    (late / STATE_FILE).write_bytes(b"cut short")
    rc, done = gc_run(capsys, storage, "--keep-best", "0", "--yes", "--plan", plan_file)  # the plan's policy applies
    assert rc == 0 and done["digest"] == reviewed["digest"]
    assert sorted(done["removed"]) == sorted(i["uri"] for i in reviewed["delete"])
    assert late.exists() and not any(resolve(u).exists() for u in done["removed"])
    Path(plan_file).write_text(Path(plan_file).read_text().replace('"bytes": ', '"bytes": 1'))
    assert main(["gc", storage, "--yes", "--plan", plan_file]) == 2 and "digest" in capsys.readouterr().err


def test_a_pin_lives_until_the_export_is_removed(collect_tree: dict, tmp_path: Path, capsys) -> None:
    storage, store = str(tmp_path / "storage"), tmp_path / "store"
    shutil.copytree(collect_tree["local"], storage)
    model = export(storage, str(store), top=1, campaigns=[collect_tree["run"]]).models[0]
    only = ("--keep-best", "0", "--no-keep-trial-best", "--no-keep-latest", "--campaign", collect_tree["run"])
    store.rename(tmp_path / "elsewhere")  # the store on another machine or mount: its model.json is not visible here
    plan = gc_json(capsys, storage, *only)
    assert {i["uri"]: i["reason"] for i in plan["keep"]}[model.source].startswith("exported to")
    (tmp_path / "elsewhere").rename(store)
    (store / model.name / "model.json").unlink()  # a re-export under way (the card is rewritten last)
    assert model.source in {i["uri"] for i in gc_json(capsys, storage, *only)["keep"]}
    assert main(["export", storage, str(store), "--remove", model.name]) == 0
    assert "and its pin" in capsys.readouterr().out
    assert not (store / model.name).exists() and not (store / "champion" / "alias.json").exists()
    assert not list((Path(storage) / "exports").glob("*.json"))
    assert model.source in {i["uri"] for i in gc_json(capsys, storage, *only)["delete"]}
    assert main(["export", storage, str(store), "--remove", model.name]) == 2 and "no exported model" in capsys.readouterr().err


def _bucket(s3_server: dict, **create: object) -> tuple[object, str]:
    fs = resolve(f"s3://{s3_server['bucket']}").fs
    name = f"gc-{uuid.uuid4().hex[:8]}"
    fs.call_s3("create_bucket", Bucket=name, **create)
    return fs, name


@pytest.mark.s3
def test_gc_s3_versioned_bucket_and_refused_deletes_are_not_freed(collect_tree: dict, s3_server: dict, capsys) -> None:
    fs, name = _bucket(s3_server)
    fs.call_s3("put_bucket_versioning", Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    storage = copy_s3_tree(collect_tree, f"s3://{name}/storage")
    rc, done = gc_run(capsys, storage, "--yes")
    assert rc == 1 and done["delete"] and done["removed"] == [] and done["bytes_freed"] == 0
    assert {f["uri"] for f in done["failed"]} == {i["uri"] for i in done["delete"]}
    assert all("delete marker" in f["why"] for f in done["failed"])
    assert any("versioning is Enabled" in n for n in done["notes"])

    # object lock: a legal hold refuses the delete. Without the latest checkpoints kept, two or more are deleted
    # whatever ASHA stopped (the single run's other checkpoint and one of each trial that ran to the end), so one
    # can be held while the others go
    fs, name = _bucket(s3_server, ObjectLockEnabledForBucket=True)
    storage = copy_s3_tree(collect_tree, f"s3://{name}/storage")
    dry = gc_json(capsys, storage, "--no-keep-latest")
    held = dry["delete"][0]
    fs.call_s3("put_object_legal_hold", Bucket=name, Key=f"{held['uri'][5:].split('/', 1)[1]}/{STATE_FILE}",
               LegalHold={"Status": "ON"})
    rc, done = gc_run(capsys, storage, "--no-keep-latest", "--yes", "--purge-versions")
    assert rc == 1 and [f["uri"] for f in done["failed"]] == [held["uri"]] and "AccessDenied" in done["failed"][0]["why"]
    assert sorted(done["removed"]) == sorted(i["uri"] for i in dry["delete"][1:])
    assert done["bytes_freed"] == dry["bytes_freed"] - held["bytes"] > 0
    for uri in done["removed"]:
        versions = fs.call_s3("list_object_versions", Bucket=name, Prefix=uri[5:].split("/", 1)[1] + "/")
        assert not versions.get("Versions") and not versions.get("DeleteMarkers")  # the bytes are really gone
