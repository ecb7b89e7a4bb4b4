"""``ray job submit --working-dir . -- python jobs/*.py`` against a real head started with ``ray start --head``,
as README's "Running on a real cluster" shows; ``ray job status``, ``logs`` and ``stop`` on those jobs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


TINY = ["model.depth=3", "model.base_filters=8", "data.crop_size=64", "data.num_crops_per_image=1",
        "data.batch_size=2", "data.val_batch_size=2", "resources.num_workers=2", "resources.cpus_per_worker=0.5",
        "resources.torch_threads=1", "resources.use_gpu=false", "train.log_images=1"]
UPLOAD_LIMIT = 5 * 2**20


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def submit(head: Any, entrypoint: list[str], *, env_vars: dict[str, str] | None = None, wait: bool = True,
           timeout: float = 600) -> tuple[str, str]:
    """``ray job submit --working-dir .`` from the repo root; returns (submission id, CLI output)."""
    args = ["job", "submit", "--working-dir", "."]
    if env_vars:
        args += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    if not wait:
        args.append("--no-wait")
    res = head.ray(*args, "--", *entrypoint, timeout=timeout, check=False)
    out = res.stdout + res.stderr
    m = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out)
    assert m, out[-3000:]
    if wait:
        assert res.returncode == 0, out[-4000:]
    return m.group(1), out


def json_line(text: str, key: str) -> dict[str, Any]:
    """The summary line a job prints (one JSON object holding ``key``)."""
    for line in reversed(text.splitlines()):
        start = line.find('{"')
        if start >= 0 and f'"{key}"' in line:
            return json.loads(line[start:])
    raise AssertionError(f"no JSON line with {key!r} in:\n{text[-3000:]}")


def uploaded_package(head: Any) -> Path:
    """The working-dir package as the head unpacked it (newest one)."""
    pkgs = sorted(Path(head.temp_dir).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"),
                  key=lambda p: p.stat().st_mtime)
    assert pkgs, "no working_dir package on the head"
    return pkgs[-1]


@pytest.mark.ray
def test_submit_train_status_logs(ray_head: Any, synthetic_dataset: str, tmp_path: Path) -> None:
    """Budget 90 s on an idle 2-core machine (head start included): a 1-epoch job to SUCCEEDED, its run record on
    storage, `ray job status/logs/list` agree, and the uploaded working dir stays small."""
    runs = tmp_path / "runs"
    entry = ["python", "jobs/train.py", "--config", "jobs/configs/train.yaml",
             *sets(f"data.dataset={synthetic_dataset}", f"storage.uri={runs}", "train.epochs=1", "train.name=quick", *TINY)]
    job, out = submit(ray_head, entry)

    summary = json_line(out, "run_dir")
    assert summary["epochs"] == 1 and summary["run_dir"] == str(runs / "quick")
    record = json.loads((runs / "quick" / "run.json").read_text())
    assert record["status"] == "finished" and record["epochs"] == 1 and Path(record["best_checkpoint"]).is_dir()

    status = ray_head.ray("job", "status", job).stdout
    assert f"Job '{job}' succeeded" in status, status
    logs = ray_head.ray("job", "logs", job).stdout
    assert json_line(logs, "run_dir") == summary
    assert "Traceback" not in logs
    jobs = ray_head.ray("job", "list").stdout
    assert job in jobs and "SUCCEEDED" in jobs

    pkg = uploaded_package(ray_head)
    files = [p for p in pkg.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    top = {p.relative_to(pkg).parts[0] for p in files}
    assert size < UPLOAD_LIMIT, f"working_dir upload is {size / 2**20:.1f} MiB"
    assert {"unet_dist", "jobs"} <= top and not top & {".git", ".venv", "runs", "demo-runs", "unet_dist.egg-info"}, top
    assert not any("__pycache__" in p.parts for p in files)
    print(f"working_dir upload: {len(files)} files, {size / 2**20:.2f} MiB unpacked")


@pytest.mark.ray
def test_job_refuses_relative_storage(ray_head: Any) -> None:
    """Budget 30 s on an idle machine: quick.yaml without --storage would write ./runs inside Ray's temporary copy
    of the working dir; the job fails at once with one line naming the key."""
    job, out = submit(ray_head, ["python", "jobs/tune.py", "--config", "jobs/configs/quick.yaml",
                                 "--set", "data.dataset=s3://bucket/datasets/isbi"], wait=False)
    assert ray_head.wait_job(job, 120) == "FAILED"
    logs = ray_head.ray("job", "logs", job).stdout
    errors = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert errors == ["error: storage.uri: './runs' is a relative path, which a job run with --working-dir resolves in "
                      "Ray's temporary copy of the working dir; use s3://BUCKET/PREFIX or an absolute path that every "
                      "node shares"], logs
    assert "Traceback" not in logs


def s3_env(s3_server: dict[str, str]) -> dict[str, str]:
    """What a job needs to reach the test S3 server: given through the job's runtime env, never the head's env."""
    return {"AWS_ENDPOINT_URL": s3_server["endpoint_url"], "AWS_ACCESS_KEY_ID": s3_server["key"],
            "AWS_SECRET_ACCESS_KEY": s3_server["secret"], "AWS_DEFAULT_REGION": "us-east-1"}


def has_checkpoint(uri: str) -> bool:
    """Whether a trial of the campaign at ``uri`` has a complete checkpoint (a fresh S3 client each call: an
    s3fs instance keeps its first listing of a folder)."""
    from unet_dist.runs import CampaignDir
    from unet_dist.storage import resolve

    campaign = CampaignDir(resolve(uri))
    return campaign.exists() and any(run.checkpoints() for run in campaign.trials().values())


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~220 s on a quiet machine, train + tune + resume + collect
@pytest.mark.ray
@pytest.mark.s3
def test_train_tune_stop_resume_collect_on_s3(ray_head: Any, isbi_small_dir: Path, s3_server: dict[str, str],
                                              s3_uri: str) -> None:
    """Budget 12 min: train to SUCCEEDED, a campaign stopped by `ray job stop` after its first checkpoint, then
    finished by a second submission with --resume, then jobs/collect.py (leaderboard, export, report); everything
    on S3, credentials only in the jobs' runtime env."""
    from unet_dist.config import IngestConfig
    from unet_dist.data.ingest import ingest
    from unet_dist.runs import CampaignDir, RunDir
    from unet_dist.storage import resolve

    dataset = f"{s3_uri}/isbi128"
    ingest(str(isbi_small_dir), dataset, IngestConfig(split=(0.67, 0.33, 0.0), seed=0), progress=False)
    env = s3_env(s3_server)

    _, out = submit(ray_head, ["python", "jobs/train.py", "--config", "jobs/configs/train.yaml", "--no-progress",
                               *sets(f"data.dataset={dataset}", f"storage.uri={s3_uri}/runs", "train.epochs=2",
                                     "train.name=s3run", *TINY)], env_vars=env)
    summary = json_line(out, "run_dir")
    assert summary["run_dir"] == f"{s3_uri}/runs/s3run" and summary["epochs"] == 2
    run = RunDir(resolve(summary["run_dir"]))
    record = run.read_record()
    assert record["status"] == "finished" and [r["epoch"] for r in run.metrics()] == [0, 1]
    assert s3_server["secret"] not in json.dumps(record) and s3_server["key"] not in json.dumps(record)

    tune = ["python", "jobs/tune.py", "--config", "jobs/configs/quick.yaml", "--storage", f"{s3_uri}/campaigns",
            *sets(f"data.dataset={dataset}", "tune.name=stopped", "tune.scheduler=fifo", "train.epochs=3",
                  "tune.search_space={model.backbone: {grid: [scratch]}, model.unpooling: {grid: [transpose, bilinear]}}",
                  *TINY)]
    job, _ = submit(ray_head, tune, env_vars=env, wait=False, timeout=120)
    deadline = time.monotonic() + 420
    while not has_checkpoint(f"{s3_uri}/campaigns/stopped"):
        status = ray_head.job_status(job)
        assert status in ("PENDING", "RUNNING") and time.monotonic() < deadline, \
            f"{status}: {ray_head.ray('job', 'logs', job, check=False).stdout[-3000:]}"
        time.sleep(1)
    ray_head.ray("job", "stop", job, timeout=120)
    assert ray_head.wait_job(job, 60) == "STOPPED"
    status = ray_head.ray("job", "status", job)
    assert f"Job '{job}' was stopped" in status.stdout + status.stderr
    campaign = CampaignDir(resolve(f"{s3_uri}/campaigns/stopped"))
    before = {tid: (run.read_record() or {}).get("status") for tid, run in campaign.trials().items()}
    stopped_record = campaign.read_record()

    job2, out = submit(ray_head, [*tune, "--resume"], env_vars=env, timeout=900)
    result = json_line(out, "counts")
    campaign = CampaignDir(resolve(f"{s3_uri}/campaigns/stopped"))
    record = campaign.read_record()
    assert result["status"] == record["status"] == "finished" and len(record["resumed_at"]) == 1
    assert sum(result["counts"].values()) == 2 and set(result["counts"]) <= {"finished", "early_stopped"}, result["counts"]
    for tid, trial in campaign.trials().items():
        ends = [e["epoch"] for e in trial.events() if e["event"] == "epoch_end"]
        assert len(ends) == len(set(ends)), (tid, ends)  # no epoch trained twice across the stop
    assert json_line(ray_head.ray("job", "logs", job2).stdout, "counts") == result
    assert stopped_record["status"] == "stopped", stopped_record  # SIGTERM from `ray job stop` closed the record
    assert "running" not in before.values(), before

    _, out = submit(ray_head, ["python", "jobs/collect.py", "--storage", f"{s3_uri}/campaigns",
                               "--export", f"{s3_uri}/models", "--top", "1"], env_vars=env, timeout=600)
    published = json_line(out, "leaderboard")
    board = resolve(published["leaderboard"])
    assert published["leaderboard"].startswith(f"{s3_uri}/campaigns") and any(
        p.endswith(".parquet") for p in board.fs.find(board.path)), published
    assert published["best"]["campaign"] == "stopped"
    assert published["best"]["trial"] in {r["trial_id"] for r in result["trials"]}
    assert published["champion"] and resolve(published["models"]).exists(), published
    report = resolve(published["report"])
    assert report.exists() and report.read_text().lstrip().lower().startswith("<!doctype html")
