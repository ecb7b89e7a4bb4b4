"""The package's imports follow the layers written in docs/architecture.md, and no module imports itself back.

Every import counts, lazy ones inside functions included: a lazy import only hides a cycle until the day the
function runs first. Importing ``a.b.c`` also runs ``a.b``'s ``__init__``, so that edge counts too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "unet_dist"
DOC = REPO / "docs" / "architecture.md"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _parents(module: str) -> list[str]:
    """The packages whose ``__init__`` runs before ``module`` (the root package aside: it holds only the version)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def _targets(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names]
    return []


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` for imports inside the package, lazy ones included."""
    graph: dict[str, dict[str, int]] = {}
    for module, path in MODULES.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _targets(node):
                if target in MODULES and target != module:
                    for dep in [*_parents(target), target]:
                        if dep != module and not module.startswith(dep + "."):
                            edges.setdefault(dep, node.lineno)
    return graph


def _unit(module: str) -> str:
    """The layer unit of a module: a top-level module or a subpackage (``unet_dist.train.loop`` -> ``train``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "unet_dist"


def layers() -> list[list[str]]:
    """The layer order from the ``layers`` block of docs/architecture.md, lowest first; one line per layer."""
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC} has no ```layers block"
    return [line.split("#")[0].split() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_every_unit_has_a_layer() -> None:
    placed = {u for layer in layers() for u in layer}
    units = {_unit(m) for m in MODULES}
    assert units <= placed, f"units missing from docs/architecture.md's layers: {sorted(units - placed)}"


def test_imports_point_down_the_layers() -> None:
    level = {u: i for i, layer in enumerate(layers()) for u in layer}
    wrong = [f"{m} imports {t} (line {line}): {_unit(m)} may not import {_unit(t)}"
             for m, edges in import_graph().items() for t, line in edges.items()
             if _unit(m) != _unit(t) and level[_unit(t)] >= level[_unit(m)]]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    """Tarjan's strongly connected components over the module graph: any component of two or more is a cycle."""
    graph, index, low, stack, on, cycles = import_graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(
        " <-> ".join(c) + "\n  " + "\n  ".join(f"{a} -> {b} (line {graph[a][b]})" for a in c for b in graph[a] if b in c)
        for c in cycles)


@pytest.mark.parametrize("module", ["unet_dist.config", "unet_dist.catalog", "unet_dist.cli", "unet_dist.collect.leaderboard",
                                    "unet_dist.collect.export", "unet_dist.collect.gc"])
def test_loads_neither_torch_nor_ray(module: str) -> None:
    """Reading a config, ranking and exporting are plain-data work: no torch, no Ray (checked in a fresh process,
    with a model config validated too)."""
    code = (f"import sys, {module}\n"
            "from unet_dist.config import load_config\n"
            "load_config(None, ['model.backbone=resnet34', 'model.weights=IMAGENET1K_V1', 'model.depth=5'])\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} loads {out.stdout.strip()}"


def test_collect_imports_nothing_of_train() -> None:
    """The collector ranks, exports, reports and predicts from what is on storage, through ``inference``."""
    graph = import_graph()
    wrong = [f"{m} -> {t} (line {line})" for m, edges in graph.items() if _unit(m) == "collect"
             for t, line in edges.items() if _unit(t) == "train"]
    assert not wrong, "\n".join(wrong)


def test_train_is_used_through_its_namespace() -> None:
    """Tune, the CLI, the demo and the jobs use ``unet_dist.train``'s public names only, never its modules: the
    seam stays one small surface (``train/__init__``) however the internals move."""
    graph = import_graph()
    wrong = [f"{m} -> {t} (line {line})" for m, edges in graph.items() if _unit(m) != "train"
             for t, line in edges.items() if t.startswith("unet_dist.train.")]
    for path in sorted((REPO / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            wrong += [f"jobs/{path.name} -> {t} (line {node.lineno})" for t in _targets(node) if t.startswith("unet_dist.train.")]
    assert not wrong, "\n".join(wrong)


def test_inference_runs_without_ray() -> None:
    """Evaluating a model on a split (the report's test view) loads torch but never Ray, in a fresh process."""
    code = ("import sys, numpy as np, torch\n"
            "from unet_dist.inference import evaluate_model, load_model, predict_tiled\n"
            "from unet_dist.inference.evaluate import eval_batches\n"
            "from unet_dist.inference.masks import encode_mask\n"
            "from unet_dist.inference.overlay import overlay_png\n"
            "encode_mask(np.zeros((4, 4), np.int64), 2)\n"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
