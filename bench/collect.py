"""The collector at scale: 10,000 trial folders on local disk and on a real S3 server (SeaweedFS on 127.0.0.1).

Generates campaigns in the real on-storage layout (``campaign.json`` + ``trials/<id>/{run.json, metrics.jsonl,
epoch_NNNN/{state.pt, COMPLETE}}`` with records shaped by :mod:`unet_dist.runs`), then times
:func:`unet_dist.collect.leaderboard.collect` fresh (no leaderboard yet) and re-run over unchanged storage, and
counts the storage requests it makes (S3: every HTTP request of its client, through botocore's event system).
Goals: local <= 5 s, S3 <= 30 s, <= 2 requests per trial fresh, near 0 on a re-run.

    python bench/collect.py [--trials 10000] [--s3-trials 10000] [--repeats 3] [--out bench/results/collect.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_dist.collect.leaderboard import collect  # noqa: E402
from unet_dist.config import Config  # noqa: E402
from unet_dist.runs import (MARKER_FILE, METRICS_FILE, RUN_RECORD, STATE_FILE, checkpoint_dir_name,  # noqa: E402
                            marker_text, new_campaign_record, new_record, progress_fields, Best)
from unet_dist.storage import Location, resolve  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret-0123456789"
SPACE = {"model.backbone": ["scratch", "resnet18", "resnet34"], "model.unpooling": ["transpose", "bilinear", "nearest"],
         "train.lr": [0.0003, 0.001, 0.003]}
TRIALS_PER_CAMPAIGN = 1000
STATE_BYTES = b"\0" * 64


def trial_files(cfg: Config, base: str, campaign: str, i: int, rng: random.Random) -> dict[str, bytes]:
    """One trial folder's files: record, per-epoch metrics (with per-class IoU and the confusion matrix), 2 checkpoints."""
    trial_id = f"bench_{i:05d}"
    uri = f"{base}/{campaign}/trials/{trial_id}"
    epochs = rng.choice([1, 2, 4, 8, 8])
    rows = []
    for e in range(epochs):
        fg, bg = rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.8)
        rows.append({"epoch": e, "lr": 0.001, "train_loss": rng.uniform(0.2, 1.0), "val_loss": rng.uniform(0.2, 1.0),
                     "val_iou": fg, "val_mean_iou": (fg + bg) / 2, "val_dice": 2 * fg / (1 + fg), "val_pixel_acc": 0.9,
                     "val_per_class_iou": {"background": bg, "cell": fg},
                     "val_per_class_dice": {"background": 2 * bg / (1 + bg), "cell": 2 * fg / (1 + fg)},
                     "val_confusion_matrix": [[rng.randint(0, 10**6), rng.randint(0, 10**5)], [rng.randint(0, 10**5), rng.randint(0, 10**6)]],
                     "train_images": 24, "val_images": 3, "images_per_s": rng.uniform(5, 50), "epoch_time_s": 3.0,
                     "world_size": 2, "train_time_s": 3.0 * (e + 1)})
    kept = sorted({epochs - 1, max(range(epochs), key=lambda e: rows[e]["val_mean_iou"])})
    best_epoch = max(kept, key=lambda e: rows[e]["val_mean_iou"])
    best = Best("val_mean_iou", "max", rows[best_epoch]["val_mean_iou"], best_epoch, f"{uri}/{checkpoint_dir_name(best_epoch)}",
                rows[best_epoch])
    params = {k: rng.choice(v) for k, v in SPACE.items()}
    record = {**new_record(cfg, trial_id, uri, {"uri": "s3://data/isbi", "fingerprint": "f" * 64}),
              **progress_fields(rows, best), "kind": "trial", "campaign": campaign, "trial_id": trial_id, "params": params,
              "status": "finished" if epochs == 8 else "early_stopped", "ended_at": "2026-11-30T08:00:00+00:00"}
    files = {f"{campaign}/trials/{trial_id}/{RUN_RECORD}": json.dumps(record, indent=2).encode(),
             f"{campaign}/trials/{trial_id}/{METRICS_FILE}": "".join(json.dumps(r) + "\n" for r in rows).encode()}
    for e in kept:
        ckpt = f"{campaign}/trials/{trial_id}/{checkpoint_dir_name(e)}"
        files[f"{ckpt}/{STATE_FILE}"] = STATE_BYTES
        files[f"{ckpt}/{MARKER_FILE}"] = marker_text({STATE_FILE: len(STATE_BYTES)}, e).encode()
    return files


def generate(root: Location, n: int, put: Callable[[dict[str, bytes]], None]) -> int:
    """``n`` trials in campaigns of up to 1000; returns the number of files written."""
    cfg, rng, written = Config.model_construct(), random.Random(0), 0  # defaults, without importing torch for validation
    for c in range(0, n, TRIALS_PER_CAMPAIGN):
        campaign = f"campaign{c // TRIALS_PER_CAMPAIGN:02d}"
        files = {f"{campaign}/campaign.json": json.dumps(new_campaign_record(cfg, campaign, f"{root.uri}/{campaign}",
                                                                              {}, [])).encode()}
        for i in range(c, min(c + TRIALS_PER_CAMPAIGN, n)):
            files.update(trial_files(cfg, root.uri, campaign, i, rng))
        put(files)
        written += len(files)
    return written


def put_local(root: Path) -> Callable[[dict[str, bytes]], None]:
    def put(files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return put


def put_s3(root: Location) -> Callable[[dict[str, bytes]], None]:
    def put(files: dict[str, bytes]) -> None:
        root.fs.pipe({f"{root.path}/{rel}": data for rel, data in files.items()}, batch_size=64)
    return put


def measure(root: Location, n: int, repeats: int, reset: Callable[[], None], calls: Counter | None) -> dict[str, Any]:
    """Median wall time and requests per trial of ``repeats`` fresh collections, then of ``repeats`` re-runs.

    Requests: every HTTP request on S3; locally, the files opened (the directories scanned are in ``stats``)."""
    out: dict[str, Any] = {}
    for phase in ("fresh", "rerun"):
        walls, requests, stats = [], [], {}
        for _ in range(repeats):
            if phase == "fresh":
                reset()
            if calls is not None:
                calls.clear()
            t0 = time.perf_counter()
            board = collect(root)
            walls.append(time.perf_counter() - t0)
            assert len(board.rows) == n and not board.skipped, board.summary()
            stats = board.stats
            requests.append(sum(calls.values()) if calls is not None else stats["get_requests"] + stats["put_requests"])
        out[phase] = {"load_avg_1m": round(os.getloadavg()[0], 1), "wall_s_median": round(statistics.median(walls), 3), "wall_s": [round(w, 3) for w in walls],
                      "requests": requests[-1], "requests_per_trial": round(requests[-1] / n, 4),
                      "by_operation": dict(calls) if calls is not None else None, "stats": stats}
        print(f"  {phase:<6} {out[phase]['wall_s_median']:7.2f} s  {out[phase]['requests_per_trial']:.4f} requests/trial",
              flush=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_weed(data: Path) -> tuple[subprocess.Popen, str]:
    """`weed mini` on 127.0.0.1 (the command of tests/conftest.py), with the bench's own credentials."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    s3, master, volume = (free_port() for _ in range(3))
    filer = next(p for p in iter(free_port, None) if p + 10000 <= 65535)  # weed serves the filer's gRPC on port + 10000
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    cmd = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
           "-s3.port.iceberg=0", "-master.telemetry=false", f"-s3.port={s3}", f"-master.port={master}",
           f"-volume.port={volume}", f"-filer.port={filer}"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(data / "weed.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{s3}"


def stop_weed(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def bench_local(n: int, repeats: int, work: Path) -> dict[str, Any]:
    root = work / "local"
    t0 = time.perf_counter()
    files = generate(resolve(root), n, put_local(root))
    gen = time.perf_counter() - t0
    print(f"local: {n} trials, {files} files generated in {gen:.1f} s", flush=True)
    result = measure(resolve(root), n, repeats, lambda: shutil.rmtree(root / "leaderboard", ignore_errors=True), None)
    shutil.rmtree(root / "leaderboard", ignore_errors=True)
    return {"trials": n, "files": files, "generate_s": round(gen, 1), **result}


def upload(proc: subprocess.Popen, src: Path, root: Location, n: int) -> tuple[int, str]:
    """The local tree into the bucket with SeaweedFS's own concurrent uploader (Go, ~5x the Python client here),
    else generated anew through S3 PUTs."""
    filer = next(a.split("=", 1)[1] for a in proc.args if a.startswith("-filer.port="))
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    bucket, _, prefix = root.path.partition("/")
    for _ in range(2):
        out = subprocess.run([weed, "filer.copy", "-c", "32", str(src), f"http://127.0.0.1:{filer}/buckets/{bucket}/"],
                             capture_output=True, text=True)
        if out.returncode == 0 and prefix == src.name:
            return sum(1 for p in src.rglob("*") if p.is_file()), "weed filer.copy"
        print(f"weed filer.copy failed ({out.returncode}): {(out.stdout + out.stderr)[:400]}", flush=True)
    return generate(root, n, put_s3(root)), "s3fs PUTs"


def bench_s3(n: int, repeats: int, work: Path, src: Path | None) -> dict[str, Any]:
    data = work / "weed"
    data.mkdir()
    proc, endpoint = start_weed(data)
    os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL=endpoint,
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        root = resolve(f"s3://bench/{src.name if src else 'collect'}")
        deadline = time.time() + 60
        while True:
            try:
                root.fs.mkdir("bench")
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((data / "weed.log").read_text()[-2000:])
                time.sleep(0.5)
        t0 = time.perf_counter()
        files, how = upload(proc, src, root, n) if src else (generate(root, n, put_s3(root)), "s3fs PUTs")
        gen = time.perf_counter() - t0
        print(f"s3: {n} trials, {files} objects uploaded in {gen:.1f} s ({how})", flush=True)
        calls: Counter = Counter()
        root.fs.connect()
        root.fs.s3.meta.events.register("before-send.s3", lambda event_name, **_: calls.update([event_name.rsplit(".", 1)[-1]]))
        board_dir = f"{root.path}/leaderboard"
        result = measure(root, n, repeats, lambda: root.fs.rm(board_dir, recursive=True) if root.fs.exists(board_dir) else None,
                         calls)
        return {"trials": n, "files": files, "upload_s": round(gen, 1), "upload": how,
                "server": "SeaweedFS weed mini on 127.0.0.1", **result}
    finally:
        stop_weed(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--s3-trials", type=int, default=10_000, help="0 skips S3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "collect.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the S3 server and clean up on `kill`
    work = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    try:
        results = {"benchmark": "collect", "command": "python bench/collect.py " + " ".join(sys.argv[1:]),
                   "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
                   "commit": _commit(),
                   "goals": {"local_s": 5, "s3_s": 30, "fresh_requests_per_trial": 2, "rerun_requests_per_trial": "~0"},
                   "local": bench_local(args.trials, args.repeats, work)}
        if args.s3_trials:
            src = work / "local" if args.s3_trials == args.trials else None
            results["s3"] = bench_s3(args.s3_trials, args.repeats, work, src)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "unet_dist/collect"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return head + ("+uncommitted collect/" if dirty else "")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
