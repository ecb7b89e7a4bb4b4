"""The multi-GPU path on a CPU machine: the process group a GPU run starts (gloo standing in for NCCL on CUDA)
runs every collective of the training loop and its metrics; fractional GPUs in DDP are refused before Ray starts;
``use_gpu=auto`` sees the GPU groups of the KubeRay manifests in deploy/."""

from __future__ import annotations

import ast
import multiprocessing as mp
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port
from unet_dist.config import load_config
from unet_dist.errors import ConfigError
from unet_dist.train import collectives
from unet_dist.session import GPU_GROUPS_ENV, decide_gpu, head_gpu_node_types, parse_gpu_groups

LEGACY_GPU_BACKEND = "nccl"
"""What GPU runs started their process group with before collectives.GPU_BACKEND."""


def gloo_for_nccl(spec: str) -> str:
    """A backend spec with gloo standing in for NCCL on CUDA: a CPU machine has no NCCL, but the same device map."""
    if spec == "nccl":
        return "cuda:gloo"
    return ",".join(part.replace(":nccl", ":gloo") for part in spec.split(","))


def _exercise(rank: int, spec: str, port: int, out: Any) -> None:
    """One rank: every collective the loop and the metrics use, on the tensors they use."""
    import torch
    import torch.distributed as dist

    from unet_dist.train.loop import SyncedBatches, _agree, _slowest, sync_buffers
    from unet_dist.inference.metrics import EpochMeter

    try:
        dist.init_process_group(spec, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
        batches = SyncedBatches(iter([{"i": i} for i in range(3 - rank)]), distributed=True)  # rank 1 has one batch fewer
        steps = sum(1 for _ in batches)
        slowest = _slowest(1.5 + rank, distributed=True)
        agreed = _agree({"resume": f"rank{rank}"}, distributed=True)
        nodes = collectives.all_gather_object(f"node{rank}")
        meter = EpochMeter(2, reduce=collectives.all_reduce_sum)
        logits = torch.zeros(1, 2, 4, 4)
        logits[:, 1] = 1.0  # predicts foreground everywhere
        meter.update(logits, torch.full((1, 4, 4), rank, dtype=torch.int64), loss=0.5 + rank)
        metrics = meter.compute()
        model = torch.nn.BatchNorm2d(2)
        model.running_mean.fill_(float(rank))
        sync_buffers(model)
        out.put((rank, {"steps": steps, "slowest": slowest, "agreed": agreed, "nodes": nodes,
                        "cm": metrics["confusion_matrix"], "images": metrics["images"],
                        "running_mean": model.running_mean.tolist()}))
        dist.destroy_process_group()
    except Exception as err:
        out.put((rank, {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}))


def run_collectives(spec: str) -> dict[int, dict[str, Any]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_exercise, args=(rank, spec, port, out)) for rank in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    return results


def test_the_gpu_process_group_runs_every_collective_of_the_loop() -> None:
    spec = gloo_for_nccl(collectives.backend(use_gpu=True))
    assert spec == "cpu:gloo,cuda:gloo"
    results = run_collectives(spec)
    for rank in (0, 1):
        r = results[rank]
        assert "error" not in r, r.get("trace")
        assert r["steps"] == 2  # both ranks stop when one runs out
        assert r["slowest"] == 2.5
        assert r["agreed"] == {"resume": "rank0"}
        assert r["nodes"] == ["node0", "node1"]
        assert r["cm"] == [[0, 16], [0, 16]] and r["images"] == 2  # rank 0 all background, rank 1 all foreground
        assert r["running_mean"] == [0.0, 0.0]  # rank 0's buffers


def test_the_former_nccl_only_group_fails_on_cpu_tensors() -> None:
    """The same exercise against the spec GPU runs used before: no backend for the CPU tensors it reduces."""
    results = run_collectives(gloo_for_nccl(LEGACY_GPU_BACKEND))
    assert all("No backend type associated with device type cpu" in results[r].get("error", "") for r in (0, 1))


def test_cpu_runs_keep_gloo() -> None:
    assert collectives.backend(use_gpu=False) == "gloo"


def test_no_collective_outside_the_collectives_module() -> None:
    """A collective called anywhere else could reduce a CPU tensor on a CUDA-only group: every call goes through
    unet_dist.train.collectives, whose group has a backend for each device type."""
    names = {"all_reduce", "broadcast", "broadcast_object_list", "all_gather", "all_gather_object", "reduce",
             "reduce_scatter", "gather", "scatter", "barrier", "all_to_all", "send", "recv"}
    offenders = []
    for path in sorted((REPO / "unet_dist").rglob("*.py")):
        if path.name == "collectives.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in names:
                base = ast.unparse(node.value)
                if base in ("dist", "torch.distributed") or base.endswith(".distributed"):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {base}.{node.attr}")
    assert not offenders, offenders


# --- fractional GPUs in DDP ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_gpu", ["true", "auto"])
def test_fractional_gpus_with_several_ranks_are_refused(use_gpu: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"resources.use_gpu={use_gpu}", "resources.gpus_per_worker=0.5", "resources.num_workers=2"])
    text = str(err.value)
    assert "\n" not in text and "NCCL" in text
    assert "resources.gpus_per_worker=1" in text and "resources.num_workers=1" in text
    with pytest.raises(ConfigError):
        load_config(None, ["resources.gpus_per_worker=0.25", "resources.num_workers=1-2"])  # elastic up to 2


def test_fractional_gpus_stay_allowed_for_one_worker_and_on_cpu() -> None:
    assert load_config(None, ["resources.gpus_per_worker=0.25", "resources.num_workers=1"]).resources.gpus_per_worker == 0.25
    assert load_config(None, ["resources.gpus_per_worker=0.5", "resources.use_gpu=false"]).resources.num_workers == 2
    packed = load_config(REPO / "jobs" / "configs" / "gpu.yaml")
    assert packed.resources.num_workers == 1 and packed.resources.gpus_per_worker == 0.25


def test_the_cli_refuses_fractional_ddp_before_ray_starts(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "unet_dist", "train", "--data", str(tmp_path), "--storage", str(tmp_path),
                           "--set", "resources.use_gpu=true", "--set", "resources.gpus_per_worker=0.5"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "gpus_per_worker=0.5" in lines[0] and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


# --- use_gpu=auto on KubeRay ----------------------------------------------------------------------------------------

def _cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """``(file, RayCluster spec)`` of every manifest in deploy/ (a RayCluster, or a RayJob's rayClusterSpec)."""
    out = []
    for path in sorted((REPO / "deploy").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            spec = doc.get("spec") or {}
            if doc.get("kind") == "RayCluster":
                out.append((path.name, spec))
            elif doc.get("kind") == "RayJob" and spec.get("rayClusterSpec"):
                out.append((path.name, spec["rayClusterSpec"]))
    return out


def _gpu_groups(spec: dict[str, Any]) -> dict[str, float]:
    """The worker groups that can scale to GPU pods, from the RayCluster spec itself."""
    out = {}
    for group in spec.get("workerGroupSpecs") or []:
        if int(group.get("maxReplicas", 0)) <= 0:
            continue
        gpus = sum(float(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                   for c in group["template"]["spec"]["containers"])
        if gpus > 0:
            out[group["groupName"]] = gpus
    return out


def _head_env(spec: dict[str, Any]) -> dict[str, str]:
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    return {e["name"]: str(e.get("value", "")) for e in container.get("env") or []}


def test_deploy_manifests_publish_their_gpu_groups_to_the_head() -> None:
    specs = _cluster_specs()
    assert len(specs) >= 3
    with_gpus = 0
    for name, spec in specs:
        groups = _gpu_groups(spec)
        published = parse_gpu_groups(_head_env(spec).get(GPU_GROUPS_ENV, ""))
        assert published == groups, f"{name}: head {GPU_GROUPS_ENV} says {published}, the worker groups are {groups}"
        with_gpus += bool(groups)
    assert with_gpus >= 3  # raycluster, rayjob-train, rayjob-tune
    for path in (REPO / "deploy").glob("*.yaml"):
        assert "use_gpu=true" not in path.read_text(), f"{path.name} sets use_gpu by hand"


@pytest.mark.ray
def test_auto_chooses_gpu_from_the_manifests_groups(ray_local, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only cluster with no autoscaler config, and the head environment the RayCluster in deploy/ sets."""
    _, spec = next((n, s) for n, s in _cluster_specs() if n == "raycluster.yaml")
    value = _head_env(spec)[GPU_GROUPS_ENV]
    assert decide_gpu(load_config(None, ["resources.use_gpu=auto"])).use_gpu is False
    monkeypatch.setenv(GPU_GROUPS_ENV, value)
    decision = decide_gpu(load_config(None, ["resources.use_gpu=auto"]))
    assert decision.use_gpu is True and "gpu (1 GPU)" in decision.reason
    assert head_gpu_node_types() == {"gpu": 1.0}  # what the zero-CPU task on the head reads


def test_gpu_groups_env_is_parsed_strictly() -> None:
    assert parse_gpu_groups("gpu=1, gpu8=8,cpu=0") == {"gpu": 1.0, "gpu8": 8.0}
    assert parse_gpu_groups("") == {}
    for bad in ("gpu", "gpu=x", "=1", "gpu=-1"):
        with pytest.raises(Exception, match=GPU_GROUPS_ENV):
            parse_gpu_groups(bad)
