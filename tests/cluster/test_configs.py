"""The shipped cluster configs, KubeRay manifests and image, checked offline the way their tools would.

Launcher YAMLs (cluster/*.yaml) go through Ray's own ``prepare_config`` + ``validate_config`` plus the per-node-type
worker bounds Ray skips. KubeRay manifests (deploy/*.yaml) go through the v1.7.0 CRD schemas with jsonschema, once
as published and once strict (unknown fields refused), then through the checks KubeRay's webhook makes and this
project's rules (restricted pods, requests and limits, no secrets). Each file also has deliberately broken copies
that must be refused. Budget: under 5 s.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"
LAUNCHERS = sorted((REPO / "cluster").glob("*.yaml"))
MANIFESTS = sorted((REPO / "deploy").glob("*.yaml"))
DOCKERFILE = REPO / "deploy" / "Dockerfile"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService", "RayCronJob"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_RAY_NAME = 47
SECRET_TEXT = re.compile(r"AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|AWS_SESSION_TOKEN|aws_secret|AKIA[0-9A-Z]{16}|"
                         r"-----BEGIN [A-Z ]*PRIVATE KEY|password\s*[:=]", re.I)
SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE", re.I)


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


# ---------------------------------------------------------------- Ray cluster launcher

def launcher_problems(config: dict[str, Any]) -> None:
    """Raise if Ray's launcher would refuse ``config`` (its schema and checks), or a node type's worker bounds
    are inconsistent (``min_workers <= max_workers <= max_workers of the cluster``, which Ray does not check)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
    except FileNotFoundError:  # providers whose defaults file Ray does not ship (fake_multinode): as written
        prepared = {"cluster_synced_files": [], **copy.deepcopy(config)}
    validate_config(prepared)
    cluster_max = prepared["max_workers"]
    for name, node in prepared["available_node_types"].items():
        lo, hi = node.get("min_workers", 0), node.get("max_workers", cluster_max)
        if not 0 <= lo <= hi:
            raise ValueError(f"available_node_types.{name}: min_workers {lo} > max_workers {hi}")
        if hi > cluster_max:
            raise ValueError(f"available_node_types.{name}: max_workers {hi} > the cluster's max_workers {cluster_max}")


def _worker_type(config: dict[str, Any]) -> str:
    return next(n for n in config["available_node_types"] if n != config["head_node_type"])


LAUNCHER_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "wrong type": lambda c: c.update(idle_timeout_minutes="ten"),
    "unknown key": lambda c: c.update(max_worker=3),
    "node type without resources": lambda c: c["available_node_types"][_worker_type(c)].pop("resources"),
    "min > max": lambda c: c["available_node_types"][_worker_type(c)].update(min_workers=3, max_workers=2),
    "node max > cluster max": lambda c: c["available_node_types"][_worker_type(c)].update(max_workers=c.get("max_workers", 2) + 1),
}


def test_launchers_exist():
    names = {p.name for p in LAUNCHERS}
    assert {"aws-gpu.yaml", "gcp-gpu.yaml"} <= names, names


@pytest.mark.parametrize("path", LAUNCHERS, ids=_ids(LAUNCHERS))
def test_launcher_passes_rays_schema(path: Path):
    config = yaml.safe_load(path.read_text())
    launcher_problems(config)


@pytest.mark.parametrize("path", LAUNCHERS, ids=_ids(LAUNCHERS))
@pytest.mark.parametrize("breakage", list(LAUNCHER_BREAKS))
def test_broken_launcher_is_refused(path: Path, breakage: str):
    config = yaml.safe_load(path.read_text())
    LAUNCHER_BREAKS[breakage](config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        launcher_problems(config)


@pytest.mark.parametrize("path", [p for p in LAUNCHERS if p.name != "local-fake.yaml"],
                         ids=_ids([p for p in LAUNCHERS if p.name != "local-fake.yaml"]))
def test_cloud_launcher_gpu_workers_and_s3_access(path: Path):
    """Cloud configs: GPU worker types from zero; AWS reaches S3 through an instance profile, GCP GPUs are
    attached and stop on host maintenance."""
    config = yaml.safe_load(path.read_text())
    provider = config["provider"]["type"]
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert len(workers) >= 2 and all(n["min_workers"] == 0 and n["max_workers"] > 0 for n in workers.values())
    assert config["idle_timeout_minutes"] > 0
    for name, node in workers.items():
        nc = node["node_config"]
        if provider == "aws":
            from unet_dist.cluster import AWS_INSTANCE_TYPES

            assert AWS_INSTANCE_TYPES[nc["InstanceType"]].gpus >= 1, name
            assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", nc["IamInstanceProfile"]["Arn"])
        else:
            assert node["resources"]["GPU"] == sum(a["acceleratorCount"] for a in nc["guestAccelerators"]), name
            assert {"onHostMaintenance": "TERMINATE"} in nc["scheduling"], name
    assert any("pip install" in cmd and "/home/ray/unet-dist" in cmd for cmd in config["setup_commands"])
    assert "/home/ray/unet-dist" in config["file_mounts"] and ".venv" in config["rsync_exclude"]


# ---------------------------------------------------------------- KubeRay manifests

def _documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in MANIFESTS for d in yaml.safe_load_all(p.read_text()) if d]


DOCS = _documents()
KUBERAY_DOCS = [(p, d) for p, d in DOCS if d.get("kind") in KUBERAY_KINDS]


def _validator(kind: str, strict: bool) -> jsonschema.Draft7Validator:
    path = CRDS / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}: these tests need the shared/ folder beside the repo")
    return _load_validator(path, strict)


@functools.cache
def _load_validator(path: Path, strict: bool) -> jsonschema.Draft7Validator:
    schema = _v1_schema(path)
    return jsonschema.Draft7Validator(_strict(schema) if strict else schema)


def _v1_schema(path: Path) -> dict[str, Any]:
    """The CRD's v1 openAPIV3Schema; parsing the MB-sized YAML takes seconds, so a JSON copy is kept in the temp dir."""
    stat = path.stat()
    cached = Path(tempfile.gettempdir()) / f"unet-dist-{path.stem}-{stat.st_size}-{int(stat.st_mtime)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(schema))
    os.replace(partial, cached)
    return schema


def _strict(node: Any) -> Any:
    """additionalProperties: false wherever properties are declared (and unknown fields are not preserved)."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


def schema_problems(doc: dict[str, Any]) -> list[str]:
    out = []
    for strict in (False, True):
        out += [f"{'strict ' if strict else ''}schema: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in _validator(doc["kind"], strict).iter_errors(doc)]
    return out


def _cluster_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "RayCluster":
        yield spec
    elif spec.get("rayClusterSpec"):
        yield spec["rayClusterSpec"]


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for cs in _cluster_specs(doc):
        yield "head", cs["headGroupSpec"]["template"]["spec"]
        for group in cs.get("workerGroupSpecs") or []:
            yield group["groupName"], group["template"]["spec"]
    submitter = (doc.get("spec") or {}).get("submitterPodTemplate")
    if doc["kind"] == "RayJob" and submitter:
        yield "submitter", submitter["spec"]


def _containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod securityContext) for every container, the autoscaler sidecar included."""
    for where, pod in _pod_specs(doc):
        for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            yield f"{where}/{c.get('name')}", c, pod.get("securityContext") or {}
    for cs in _cluster_specs(doc):
        if cs.get("enableInTreeAutoscaling"):
            yield "autoscaler", dict(cs.get("autoscalerOptions") or {}, name="autoscaler"), {}


def _restricted(where: str, container: dict[str, Any], pod_ctx: dict[str, Any]) -> list[str]:
    ctx = container.get("securityContext") or {}
    effective = {**pod_ctx, **ctx}
    problems = []
    if effective.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if effective.get("runAsUser") != 1000:
        problems.append(f"runAsUser {effective.get('runAsUser')} is not 1000 (the image's ray user)")
    if ctx.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if ctx.get("privileged"):
        problems.append("privileged")
    if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
        problems.append("capabilities.drop lacks ALL")
    if (effective.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    res = container.get("resources") or {}
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(res.get(kind) or {}):
            problems.append(f"resources.{kind} lacks cpu/memory")
    return [f"{where}: {p}" for p in problems]


def rule_problems(doc: dict[str, Any]) -> list[str]:
    """What KubeRay v1.7's webhook checks beyond the schema, plus this project's rules for its manifests."""
    problems = []
    kind, meta, spec = doc["kind"], doc.get("metadata") or {}, doc.get("spec") or {}
    name = str(meta.get("name", ""))
    if len(name) > MAX_RAY_NAME or not DNS_1035.match(name):
        problems.append(f"name {name!r}: needs <= {MAX_RAY_NAME} chars and a DNS-1035 label")
    if kind == "RayJob":
        if bool(spec.get("rayClusterSpec")) == bool(spec.get("clusterSelector")):
            problems.append("set exactly one of rayClusterSpec and clusterSelector")
        if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
            problems.append("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        if spec.get("backoffLimit") and (spec.get("clusterSelector") or spec.get("submissionMode") == "InteractiveMode"):
            problems.append("backoffLimit is not allowed with clusterSelector or InteractiveMode")
        for key in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds"):
            if not spec.get(key) or (key != "shutdownAfterJobFinishes" and spec[key] <= 0):
                problems.append(f"{key} must be set (> 0)")
        if not re.match(r"python jobs/\w+\.py( |$)", str(spec.get("entrypoint", ""))):
            problems.append(f"entrypoint {spec.get('entrypoint')!r} is not `python jobs/<x>.py ...`")
        try:
            runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
            if not isinstance(runtime_env, dict):
                problems.append("runtimeEnvYAML is not a mapping")
            elif any(SECRET_ENV.search(k) for k in runtime_env.get("env_vars") or {}):
                problems.append("runtimeEnvYAML sets a credential")
        except yaml.YAMLError:
            problems.append("runtimeEnvYAML is not valid YAML")
    for cs in _cluster_specs(doc):
        groups = [("head", cs["headGroupSpec"]), *((g["groupName"], g) for g in cs.get("workerGroupSpecs") or [])]
        for group_name, group in groups:
            params = group.get("rayStartParams") or {}
            if group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(params):
                problems.append(f"{group_name}: resources in both rayStartParams and resources")
            if "labels" in params:
                problems.append(f"{group_name}: rayStartParams labels (use labels)")
            if cs.get("enableInTreeAutoscaling") and group["template"]["spec"].get("restartPolicy", "Never") != "Never":
                problems.append(f"{group_name}: restartPolicy must be Never or unset with the autoscaler")
        for g in cs.get("workerGroupSpecs") or []:
            if not g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]:
                problems.append(f"{g['groupName']}: replicas outside minReplicas..maxReplicas")
            gpu_limits = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"]
                          if c.get("resources")]
            if any(gpu_limits) and g["minReplicas"] != 0:
                problems.append(f"{g['groupName']}: a GPU group should scale from minReplicas 0")
        if cs.get("enableInTreeAutoscaling") and not (cs.get("autoscalerOptions") or {}).get("idleTimeoutSeconds"):
            problems.append("autoscalerOptions.idleTimeoutSeconds is not set")
    for where, container, pod_ctx in _containers(doc):
        problems += _restricted(where, container, pod_ctx)
        problems += [f"{where}: env {e['name']} looks like a credential" for e in container.get("env") or []
                     if SECRET_ENV.search(e.get("name", "")) or "valueFrom" in e and "secretKeyRef" in e["valueFrom"]]
    for where, pod in _pod_specs(doc):
        if pod.get("serviceAccountName") not in SERVICE_ACCOUNTS:
            problems.append(f"{where}: serviceAccountName {pod.get('serviceAccountName')!r} is none of deploy/'s "
                            f"ServiceAccounts {sorted(SERVICE_ACCOUNTS)}")
    return problems


def manifest_problems(doc: dict[str, Any]) -> list[str]:
    return schema_problems(doc) + rule_problems(doc)


SERVICE_ACCOUNTS = {d["metadata"]["name"] for _, d in DOCS if d.get("kind") == "ServiceAccount"}


def _first_container(doc: dict[str, Any]) -> dict[str, Any]:
    return next(c for _, c, _ in _containers(doc) if "image" in c)


def _only_cluster(doc: dict[str, Any]) -> dict[str, Any]:
    return next(_cluster_specs(doc))


MANIFEST_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown field": lambda d: d["spec"].update(entryPoint="python x.py") if d["kind"] == "RayJob"
    else d["spec"]["headGroupSpec"].update(rayStartParam={}),
    "wrong type": lambda d: _only_cluster(d)["headGroupSpec"].update(rayStartParams={"num-cpus": 0}),
    "name too long": lambda d: d["metadata"].update(name="unet-dist-" + "x" * 40),
    "name not DNS-1035": lambda d: d["metadata"].update(name="Unet_Dist"),
    "privilege escalation": lambda d: _first_container(d)["securityContext"].update(allowPrivilegeEscalation=True),
    "root user": lambda d: _first_container(d)["securityContext"].update(runAsUser=0),
    "no limits": lambda d: _first_container(d)["resources"].pop("limits"),
    "credential in env": lambda d: _first_container(d).setdefault("env", []).append(
        {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}),
    "unknown service account": lambda d: next(p for _, p in _pod_specs(d)).update(serviceAccountName="default"),
}
RAYJOB_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "both cluster spec and selector": lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "unet-dist"}),
    "neither cluster spec nor selector": lambda d: d["spec"].pop("rayClusterSpec"),
    "ttl without shutdown": lambda d: d["spec"].update(shutdownAfterJobFinishes=False),
    "no deadline": lambda d: d["spec"].pop("activeDeadlineSeconds"),
    "runtime env not YAML": lambda d: d["spec"].update(runtimeEnvYAML="env_vars: {a: [}"),
}


def test_manifests_exist():
    kinds = sorted((p.name, d["kind"]) for p, d in DOCS)
    assert ("raycluster.yaml", "RayCluster") in kinds and ("serviceaccount.yaml", "ServiceAccount") in kinds
    assert {n for n, k in kinds if k == "RayJob"} == {"rayjob-train.yaml", "rayjob-tune.yaml", "rayjob-collect.yaml"}


@pytest.mark.parametrize("path,doc", KUBERAY_DOCS, ids=[f"{p.name}:{d['kind']}" for p, d in KUBERAY_DOCS])
def test_kuberay_manifest_is_valid(path: Path, doc: dict[str, Any]):
    assert doc["apiVersion"] == "ray.io/v1"
    assert manifest_problems(doc) == []


BROKEN = [(p, d, b) for p, d in KUBERAY_DOCS for b in [*MANIFEST_BREAKS, *(RAYJOB_BREAKS if d["kind"] == "RayJob" else [])]]


@pytest.mark.parametrize("path,doc,breakage", BROKEN, ids=[f"{p.name}:{b}" for p, _, b in BROKEN])
def test_broken_manifest_is_refused(path: Path, doc: dict[str, Any], breakage: str):
    broken = copy.deepcopy(doc)
    (MANIFEST_BREAKS | RAYJOB_BREAKS)[breakage](broken)
    assert manifest_problems(broken), f"{path.name} with {breakage} was accepted"


def test_raycluster_autoscales_gpu_workers_and_has_a_driver_group():
    """In-tree autoscaling (v2) with an idle timeout; GPU workers from 0 with nvidia.com/gpu limits; a head with
    num-cpus 0 comes with a CPU-only group for Tune's trial drivers."""
    doc = next(d for _, d in KUBERAY_DOCS if d["kind"] == "RayCluster")
    spec = doc["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = {n: g for n, g in groups.items()
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])}
    assert gpu and all(g["minReplicas"] == 0 and g["maxReplicas"] > 0 for g in gpu.values())
    if spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0":
        assert set(groups) - set(gpu), "a head with num-cpus 0 needs a CPU group for Tune trial drivers"


@pytest.mark.parametrize("path,doc", [(p, d) for p, d in KUBERAY_DOCS if d["kind"] == "RayJob"],
                         ids=[p.name for p, d in KUBERAY_DOCS if d["kind"] == "RayJob"])
def test_rayjob_entrypoint_names_a_real_script(path: Path, doc: dict[str, Any]):
    script = doc["spec"]["entrypoint"].split()[1]
    if not (REPO / script).is_file() and script == "jobs/collect.py":
        pytest.skip("jobs/collect.py is not written yet")
    assert (REPO / script).is_file(), f"{path.name}: entrypoint runs {script}, which does not exist"
    config = re.search(r"--config (\S+)", doc["spec"]["entrypoint"])
    assert config is None or (REPO / config.group(1)).is_file()


def test_service_account_uses_irsa_not_keys():
    accounts = [d for _, d in DOCS if d.get("kind") == "ServiceAccount"]
    assert accounts
    for sa in accounts:
        assert sa["apiVersion"] == "v1"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", sa["metadata"]["name"])
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
        assert not sa.get("secrets") and not sa.get("imagePullSecrets")


def test_no_secrets_in_any_deploy_or_cluster_file():
    files = [*LAUNCHERS, *MANIFESTS, DOCKERFILE, *(REPO / "deploy").glob("*ignore"), REPO / ".dockerignore"]
    found = {f.name: m.group(0) for f in files if f.is_file() for m in [SECRET_TEXT.search(f.read_text())] if m}
    assert found == {}


# ---------------------------------------------------------------- versions and image

def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    deps = _pyproject()["project"]["dependencies"]
    return next(re.search(r"==([\w.]+)", d).group(1) for d in deps if re.match(rf"{name}(\[|=)", d))


def test_versions_and_image_tag_agree_everywhere():
    """Ray and Python of pyproject.toml = the Dockerfile's base image = every config's image tag and rayVersion."""
    project = _pyproject()["project"]
    ray, torch, torchvision = _pin("ray"), _pin("torch"), _pin("torchvision")
    low, high = re.fullmatch(r">=(3\.\d+),<(3\.\d+)", project["requires-python"]).groups()
    py = "py" + low.replace(".", "")
    assert int(high.split(".")[1]) == int(low.split(".")[1]) + 1, "one Python minor version, as the image has"

    docker = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", docker, re.M)
    cuda = re.fullmatch(rf"rayproject/ray:{re.escape(ray)}-{py}-(cu\d+)", base).group(1)
    assert f"torch=={torch}" in docker and f"torchvision=={torchvision}" in docker
    assert f"download.pytorch.org/whl/{cuda}" in docker
    tag = f"{project['version']}-ray{ray}-{py}-{cuda}"
    (image,) = set(re.findall(r"-t\s+(\S+)", docker))
    assert image.endswith(":" + tag)

    for path in LAUNCHERS:
        config = yaml.safe_load(path.read_text())
        if "docker" in config:
            assert config["docker"]["image"] == image, path.name
    for path, doc in KUBERAY_DOCS:
        for cs in _cluster_specs(doc):
            assert cs["rayVersion"] == ray, path.name
        for where, container, _ in _containers(doc):
            assert container.get("image", image) == image, f"{path.name} {where}"


def test_dockerfile_runs_as_non_root_and_installs_the_project():
    docker = DOCKERFILE.read_text()
    users = re.findall(r"^USER\s+(\S+)", docker, re.M)
    assert users and users[-1] in ("1000", "ray", "1000:100"), users
    assert re.search(r'^RUN pip install "\.\[mlflow\]"', docker, re.M)  # the tracking client every rank 0 may need
    assert "COPY --chown=1000:100 jobs" in docker
    assert not re.search(r"^(ENV|ARG)\s+\S*(SECRET|KEY|TOKEN|PASSWORD)", docker, re.M | re.I)
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ignored[0] == "*" and "!unet_dist/" in ignored, "the build context is an allow-list"
