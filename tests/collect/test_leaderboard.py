"""The leaderboard on the real collect_tree (a 4-trial ASHA campaign + a single run, on S3 and a local copy):
rows, ranking, the Parquet it writes, the CLI, damaged folders, and what a re-run reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from unet_dist.cli import main
from unet_dist.collect.leaderboard import collect
from unet_dist.storage import Location, resolve

REPO = Path(__file__).resolve().parents[2]
KEYS = ("campaign", "trial", "status", "best_value", "best_checkpoint", "iou.background")
_OPENS: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], str) and args[0].endswith(("run.json", "metrics.jsonl")):
        _OPENS.append(args[0])


sys.addaudithook(_audit)


def _records(local: str) -> dict[str, dict]:
    """Every run record of the local tree by run folder name."""
    found = [*Path(local).glob("*/run.json"), *Path(local).glob("*/trials/*/run.json")]
    return {p.parent.name: json.loads(p.read_text()) for p in found}


def _small_copy(src: str, dest: Location) -> None:
    """The tree with each checkpoint's state.pt cut to a few bytes (the collector never reads them)."""
    files = {}
    for path in Path(src).rglob("*"):
        if path.is_file():
            rel = path.relative_to(src).as_posix()
            files[rel] = b"\0" * 16 if path.name == "state.pt" else path.read_bytes()
    if dest.is_s3:
        dest.fs.pipe({f"{dest.path}/{rel}": data for rel, data in files.items()})
    else:
        for rel, data in files.items():
            (dest / rel).write_bytes(data)


@pytest.fixture
def local_copy(collect_tree: dict, tmp_path: Path) -> Path:
    root = tmp_path / "storage"
    _small_copy(collect_tree["local"], resolve(root))
    return root


@pytest.fixture
def s3_copy(collect_tree: dict, s3_uri: str) -> Location:
    root = resolve(s3_uri)
    _small_copy(collect_tree["local"], root)
    return root


def _counting(root: Location) -> Counter:
    """Count every HTTP request the Location's own S3 client sends, by operation (botocore's event system)."""
    calls: Counter = Counter()
    root.fs.connect()
    root.fs.s3.meta.events.register("before-send.s3", lambda event_name, **_: calls.update([event_name.rsplit(".", 1)[-1]]))
    return calls


@pytest.mark.parametrize("where", ["s3", "local"])
def test_rows_match_records_and_rank_by_the_runs_monitor(collect_tree: dict, where: str) -> None:
    """Budget 5 s. One row per trial and run, values from its record, best by the runs' monitor (the default,
    val_image_mean_iou) first, nothing written."""
    board = collect(collect_tree[where], write=False)
    records = _records(collect_tree["local"])
    assert len(board.rows) == 5 and board.skipped == [] and (board.metric, board.mode) == ("val_image_mean_iou", "max")
    assert [r["rank"] for r in board.rows] == [1, 2, 3, 4, 5]
    values = [r["best_val_image_mean_iou"] for r in board.rows]
    ranked = [v for v in values if v is not None]
    assert values[:len(ranked)] == sorted(ranked, reverse=True)  # runs without a best epoch (errored) come last
    root = resolve(collect_tree[where]).uri
    for row in board.rows:
        rec = records[row["trial"]]
        assert row["status"] == rec["status"] and row["kind"] == rec["kind"] and row["epochs"] == rec["epochs"]
        assert row["best_value"] == (rec["best"] or {}).get("value") and row["best_epoch"] == (rec["best"] or {}).get("epoch")
        assert row["best_val_iou"] == rec["best_val_iou"]
        assert row["dataset_fingerprint"] == rec["dataset"]["fingerprint"]
        assert row["run_uri"].startswith(root)
        if rec["best"]:
            assert row["best_checkpoint"].startswith(row["run_uri"] + "/epoch_")
            assert row["iou.background"] is not None and row["iou.foreground"] == pytest.approx(row["best_val_iou"])
        if rec["kind"] == "trial":
            assert row["campaign"] == collect_tree["campaign"]
            assert {k: row[k] for k in rec["params"]} == rec["params"]
        else:
            assert row["campaign"] is None and row["trial"] == collect_tree["run"] and row["model.backbone"] is None
    assert board.counts == dict(Counter(r["status"] for r in records.values()))
    assert not (Path(collect_tree["local"]) / "leaderboard").exists()


@pytest.mark.parametrize("where", ["s3", "local"])
def test_parquet_leaderboard_reads_back(where: str, request: pytest.FixtureRequest) -> None:
    """Budget 5 s. The leaderboard Parquet reads back with pyarrow (file and dataset) with the same rows."""
    root = request.getfixturevalue("s3_copy") if where == "s3" else resolve(request.getfixturevalue("local_copy"))
    board = collect(root)
    assert board.uri == (root / "leaderboard" / "leaderboard.parquet").uri
    table = pads.dataset((root / "leaderboard").path, filesystem=root.arrow, format="parquet").to_table()
    assert table.num_rows == 5
    assert [{k: r[k] for k in KEYS} for r in table.to_pylist()] == [{k: r[k] for k in KEYS} for r in board.rows]
    if not root.is_s3:
        assert pq.read_table(board.uri).column_names == board.columns


def test_cli_json_and_no_ray(collect_tree: dict, local_copy: Path) -> None:
    """Budget 30 s. `python -m unet_dist collect URI --format json` exits 0 with one JSON line; the command imports
    neither Ray nor torch."""
    code = ("import sys; from unet_dist.cli import main; rc = main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules and 'torch' not in sys.modules, 'imported Ray/torch'; sys.exit(rc)")
    for cmd in ([sys.executable, "-m", "unet_dist", "collect", collect_tree["s3"], "--format", "json", "--no-write"],
                [sys.executable, "-c", code, "collect", str(local_copy), "--format", "json"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 1
        data = json.loads(lines[0])
        assert len(data["rows"]) == 5 and data["skipped"] == [] and data["rows"][0]["rank"] == 1
    assert (local_copy / "leaderboard" / "leaderboard.parquet").exists()


def _trials(root: Path) -> list[Path]:
    """Trial folders, those with a best checkpoint and metrics first (a loaded machine can leave errored trials)."""
    return sorted(root.glob("*/trials/*"), key=lambda t: (not _has_best(t), t.name))


def _has_best(run: Path) -> bool:
    return bool(json.loads((run / "run.json").read_text()).get("best_checkpoint")) and (run / "metrics.jsonl").exists()


def _best(run: Path) -> Path:
    return run / Path(json.loads((run / "run.json").read_text())["best_checkpoint"]).name


def test_damaged_local_tree(local_copy: Path, capsys: pytest.CaptureFixture) -> None:
    """Budget 10 s. Truncated record, missing or incomplete best checkpoint, empty and foreign folders and files: each
    is one warning line, the rest ranks as before, exit 0."""
    trials = _trials(local_copy)
    truncated, no_best, single = trials[-1], trials[0], local_copy / "single"
    text = (truncated / "run.json").read_text()
    (truncated / "run.json").write_text(text[: len(text) // 2])
    shutil.rmtree(_best(no_best))
    flagged = {no_best.name}
    if _has_best(single):
        (_best(single) / "COMPLETE").unlink()
        flagged.add("single")
    (local_copy / "empty").mkdir()
    (trials[0].parent / "empty_trial").mkdir()
    (trials[0].parent / "README").write_text("notes")
    (local_copy / "notes.txt").write_text("x")
    (local_copy / "stuff").mkdir()
    (local_copy / "stuff" / "data.csv").write_text("a,b\n")
    (trials[2] / "stray.txt").write_text("not a problem")
    assert main(["collect", str(local_copy)]) == 0
    out = capsys.readouterr()
    warnings = [line for line in out.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 6 + len(flagged), out.err
    assert "4 rows" in out.out and "6 skipped" in out.out and f"{len(flagged)} with a checkpoint problem" in out.out
    board = collect(local_copy, write=False)
    reasons = {uri.removeprefix(str(local_copy) + "/"): reason for uri, reason in board.skipped}
    assert set(reasons) == {f"bxu/trials/{truncated.name}", "empty", "bxu/trials/empty_trial", "bxu/trials/README",
                            "notes.txt", "stuff"}
    assert "not valid JSON" in reasons[f"bxu/trials/{truncated.name}"]
    problems = {r["trial"]: r["problem"] for r in board.flagged}
    assert set(problems) == flagged and "missing" in problems[no_best.name]
    assert "COMPLETE" in problems.get("single", "COMPLETE")
    assert all(r["best_checkpoint"] is None for r in board.flagged)
    assert len(board.rows) == 4 and [r["rank"] for r in board.rows] == [1, 2, 3, 4]


def test_damaged_s3_tree(s3_copy: Location) -> None:
    """Budget 10 s. The same on S3: a truncated record, a missing best checkpoint, a foreign object, an empty folder."""
    fs, base = s3_copy.fs, s3_copy.path
    bests = {t: json.loads(fs.cat_file(f"{t}/run.json"))["best_checkpoint"] for t in sorted(fs.ls(f"{base}/bxu/trials"))}
    trials = sorted(bests, key=lambda t: bests[t] is None)  # a trial with a best checkpoint first
    record = fs.cat_file(f"{trials[-1]}/run.json")
    fs.pipe_file(f"{trials[-1]}/run.json", record[:100])
    fs.rm(f"{trials[0]}/{bests[trials[0]].rsplit('/', 1)[-1]}", recursive=True)
    fs.pipe_file(f"{base}/notes.txt", b"x")
    bucket, _, prefix = base.partition("/")
    fs.call_s3("put_object", Bucket=bucket, Key=f"{prefix}/empty/", Body=b"")
    board = collect(s3_copy)
    reasons = {uri.removeprefix(s3_copy.uri + "/"): reason for uri, reason in board.skipped}
    assert set(reasons) == {trials[-1].removeprefix(base + "/"), "notes.txt", "empty"}
    assert [r["trial"] for r in board.flagged] == [trials[0].rsplit("/", 1)[-1]]
    assert len(board.rows) == 4 and len(board.warnings()) == 4
    assert "3 skipped" in board.summary()


def test_rerun_reads_only_what_changed_local(local_copy: Path) -> None:
    """Budget 5 s. A re-run opens no record; after one record changes, only that run's files are opened."""
    first = collect(local_copy)
    _OPENS.clear()
    again = collect(local_copy)
    assert _OPENS == [] and again.rows == first.rows and again.stats["read"] == 0 and again.stats["cached"] == 5
    run = _trials(local_copy)[0]
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "status": "error", "error": "killed\ntraceback"}))
    _OPENS.clear()
    changed = collect(local_copy)
    assert _OPENS == [str(run / "run.json")]  # its record holds the best epoch's metrics: metrics.jsonl stays unread
    assert changed.stats["read"] == 1 and changed.counts.get("error") == 1
    assert {r["trial"]: r["error"] for r in changed.rows}[run.name] == "killed"

    older = _trials(local_copy)[1]  # a record written before best_metrics existed: its metrics.jsonl is read too
    record = json.loads((older / "run.json").read_text())
    (older / "run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "best_metrics"}))
    _OPENS.clear()
    old_style = collect(local_copy)
    assert sorted(_OPENS) == sorted([str(older / "run.json"), str(older / "metrics.jsonl")])
    assert old_style.rows == changed.rows


def test_rerun_requests_on_s3(s3_copy: Location) -> None:
    """Budget 5 s. Fresh: one listing + 1 GET per run (run.json); re-run: the listing and the index only; one change:
    + 1 GET."""
    calls = _counting(s3_copy)
    first = collect(s3_copy)
    assert calls["GetObject"] == 5 and calls["ListObjectsV2"] == 1 and calls["PutObject"] == 2
    assert sum(calls.values()) == first.stats["requests"] and "HeadObject" not in calls
    calls.clear()
    again = collect(s3_copy)
    assert dict(calls) == {"ListObjectsV2": 1, "GetObject": 1} and again.rows == first.rows
    fs = s3_copy.fs
    trial = sorted(fs.ls(f"{s3_copy.path}/bxu/trials"))[1]
    gets = 1 + 1  # the index and run.json (it holds the best epoch's metrics)
    record = json.loads(fs.cat_file(f"{trial}/run.json"))
    fs.pipe_file(f"{trial}/run.json", json.dumps({**record, "status": "running"}).encode())
    calls.clear()
    changed = collect(s3_copy, statuses=["running"])
    assert calls["GetObject"] == gets and changed.stats["read"] == 1
    assert [r["trial"] for r in changed.rows] == [trial.rsplit("/", 1)[-1]]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_nan_or_infinite_value_ranks_with_the_rows_without_one(mode: str) -> None:
    """A diverged trial (NaN val_loss) never ranks first: it goes with the no-value rows, last (min and max modes)."""
    from unet_dist.collect.leaderboard import rank

    values = {"nan": float("nan"), "a": 0.3, "none": None, "inf": float("inf"), "b": 0.5, "ninf": float("-inf")}
    rows = [{"campaign": "c", "trial": t, "metric": "val_loss", "best_value": v} for t, v in values.items()]
    ranked = rank(rows, "val_loss", mode)
    assert [r["trial"] for r in ranked] == (["b", "a"] if mode == "max" else ["a", "b"]) + ["inf", "nan", "ninf", "none"]
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5, 6]


def test_a_same_size_rewrite_with_its_mtime_restored_is_seen_local(local_copy: Path) -> None:
    """The local index keys a record by inode and ctime too: rewriting run.json in place with the same size and putting
    its mtime back (what rsync -a, cp -p or a coarse clock leave) still changes its row."""
    import time

    record_file = local_copy / "single" / "run.json"
    first = {r["trial"]: r for r in collect(local_copy).rows}
    assert first["single"]["status"] == "finished"
    before = os.stat(record_file)
    text = record_file.read_text()
    changed = text.replace('"status": "finished"', '"status": "stopped" ', 1)
    assert changed != text and len(changed) == len(text)
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, so the ctime moves
    with open(record_file, "r+") as f:  # in place: the same inode
        f.write(changed)
    os.utime(record_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(record_file)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    again = {r["trial"]: r for r in collect(local_copy).rows}
    assert again["single"]["status"] == "stopped"


def _board(n_keys: int = 4) -> Any:
    from unet_dist.collect.leaderboard import Leaderboard, rank

    space = {"model.backbone": ["scratch", "resnet34"], "model.unpooling": ["pixel_shuffle", "max_unpool"],
             "model.activation": ["leaky_relu", "gelu"], "train.lr": [0.003, 0.00031622776601683794]}
    keys = list(space)[:n_keys]
    rows = [{"campaign": "isbi-20261207-120000", "trial": f"isbi-20261207-120000-a1b2c_{i:05d}",
             "status": ["finished", "early_stopped", "error", "running"][i % 4], "metric": "val_image_mean_iou",
             "best_value": 0.5 + i / 100, "best_epoch": i, "best_val_iou": 0.7, "best_val_dice": 0.8, "iou.background": 0.9,
             "iou.membrane": 0.7, "epochs": 20, "wall_time_s": 1234.5, **{k: space[k][i % 2] for k in keys}}
            for i in range(12)]
    return Leaderboard(rank(rows, "val_image_mean_iou", "max"), "val_image_mean_iou", "max")


def test_the_default_table_is_readable_at_80_columns() -> None:
    """Issue 22: at 80 columns every header and value of the default table is whole or abbreviated on purpose (never
    cut by the terminal); --wide has every column and the values whole."""
    from rich.console import Console

    board = _board()
    console = Console(width=80, record=True, color_system=None)
    console.print(board.to_table())
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("#"))
    cells = header.split()
    assert cells[:3] == ["#", "trial", "status"] and cells[-5:] == ["img", "mIoU", "ep", "wall", "s"], header
    for cell, key in zip(cells[3:7], ["activation", "backbone", "unpooling", "lr"]):  # sorted, abbreviated on purpose
        assert key.startswith(cell.rstrip("…")) and (cell == key or len(cell) >= 4), (cell, key)
    assert "…" not in "".join(text.splitlines()[3:4])[:9]  # rank, trial and status are never cut
    assert "pixel_" in text and "leaky_" in text and "0.00032" in text and " 00011 " in text
    assert "campaign isbi-20261207-120000" in text and " done " in text and " early " in text and " 11/20 " in text
    for keys in range(1, 8):  # however many keys are searched, no header is cut below 4 characters
        many = _board(min(keys, 4))
        if keys > 4:
            for r in many.rows:
                r.update({f"train.extra_key_{k}": "abcdefghij" for k in range(keys - 4)})
        out = Console(width=80, record=True, color_system=None)
        out.print(many.to_table())
        lines = out.export_text().splitlines()
        assert max(map(len, lines)) <= 80, (keys, lines)
        cells = next(line for line in lines if line.lstrip().startswith("#")).split()
        assert all(len(c) >= 5 for c in cells if c.endswith("…")), (keys, cells)  # 4 characters and the ellipsis
        hidden = re.search(r"(\d+) more\s+searched\s+key", " ".join(lines))
        assert len(cells) - 8 + (int(hidden.group(1)) if hidden else 0) == keys, (keys, lines)  # what does not fit is named
    wide = Console(width=200, record=True, color_system=None)
    wide.print(board.to_table(wide=True))
    wide_text = wide.export_text()
    assert "pixel_shuffle" in wide_text and "membrane" in wide_text and "Dice" in wide_text and "early_stopped" in wide_text


@pytest.mark.parametrize(("use_gpu", "resources", "world", "hours"), [
    (True, {"num_workers": 2, "gpus_per_worker": 1.0}, 2, 2.0),       # two GPUs held for an hour
    (True, {"num_workers": 1, "gpus_per_worker": 0.25}, None, 0.25),  # a quarter GPU (trials packed on one)
    (True, {"num_workers": [1, 4], "gpus_per_worker": 1.0}, 3, 3.0),  # elastic: the world size it ended with
    (False, {"num_workers": 2, "gpus_per_worker": 1.0}, 2, 0.0),      # a CPU run holds none
    (None, {"num_workers": 2}, 2, None),                              # an older record that does not say
])
def test_gpu_hours_are_the_gpus_held_over_the_wall_time(use_gpu, resources, world, hours) -> None:
    from unet_dist.collect.leaderboard import run_row

    record = {"status": "finished", "started_at": "2026-12-07T10:00:00+00:00", "ended_at": "2026-12-07T11:00:00+00:00",
              "config": {"resources": resources}, "final_metrics": {"world_size": world} if world else {},
              **({"use_gpu": use_gpu} if use_gpu is not None else {})}
    assert run_row(record)["gpu_hours"] == hours
