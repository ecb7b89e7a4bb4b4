"""The search space of a campaign: dotted config keys with a distribution each, checked before anything starts.

``tune.search_space`` maps a config key to one distribution::

    model.backbone: {choice: [scratch, vgg11, resnet18]}
    model.unpooling: {grid: [transpose, bilinear, maxunpool]}
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}

Every key must exist in the schema and every listed value must be valid somewhere in the space (else a one-line
ConfigError naming the key): checked exactly, however large the space, by enumerating together only the keys whose
validity depends on each other (:data:`CROSS_FIELD`) and every other key alone. Combinations the model registry refuses (max-unpool after avg pooling or a ResNet)
are *impossible points*: grid points are removed before the campaign starts and listed; sampled points become
trials with status ``invalid`` and the reason.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from unet_dist.config import Config, load_config
from unet_dist.errors import ConfigError
from unet_dist.registry import Registry

DISTRIBUTIONS: Registry[Callable[..., Any]] = Registry("distribution", key="tune.search_space")
GRID_KEY = "__grid__"
MAX_ENUMERATED = 4096
"""The most combinations of keys checked together: the searched keys one section's cross-field rules read (below)."""
CROSS_FIELD: dict[str, frozenset[str]] = {
    "model": frozenset({"backbone", "depth", "pooling", "unpooling", "weights"}),  # models.check_model_config
    "ingest": frozenset({"percentile_low", "percentile_high"}),  # IngestConfig._percentiles
}
"""The fields each section's cross-field validator (a pydantic model validator) reads. Validity of any other searched
key depends on its own value only (field constraints; sections validate apart), so it is checked alone. A section
with a model validator that is missing here has all its searched keys checked together."""


def _numbers(key: str, kind: str, args: Any, n: int) -> list[float]:
    if not isinstance(args, (list, tuple)) or len(args) != n or not all(isinstance(a, (int, float)) for a in args):
        raise ConfigError(f"tune.search_space.{key}: {kind} takes {n} numbers, got {args!r}")
    if args[0] >= args[1]:
        raise ConfigError(f"tune.search_space.{key}: {kind} needs low < high, got {list(args)}")
    return list(args)


def _values(key: str, kind: str, args: Any) -> list[Any]:
    if not isinstance(args, (list, tuple)) or not args:
        raise ConfigError(f"tune.search_space.{key}: {kind} takes a non-empty list of values, got {args!r}")
    return list(args)


@DISTRIBUTIONS.register("choice", finite=True)
def _choice(key: str, args: Any) -> Any:
    from ray import tune

    return tune.choice(_values(key, "choice", args))


@DISTRIBUTIONS.register("grid", finite=True)
def _grid(key: str, args: Any) -> Any:
    return _values(key, "grid", args)  # expanded with the other grid keys into one grid of valid points


@DISTRIBUTIONS.register("uniform")
def _uniform(key: str, args: Any) -> Any:
    from ray import tune

    return tune.uniform(*_numbers(key, "uniform", args, 2))


@DISTRIBUTIONS.register("loguniform")
def _loguniform(key: str, args: Any) -> Any:
    from ray import tune

    lo, hi = _numbers(key, "loguniform", args, 2)
    if lo <= 0:
        raise ConfigError(f"tune.search_space.{key}: loguniform needs low > 0, got {lo}")
    return tune.loguniform(lo, hi)


@DISTRIBUTIONS.register("randint")
def _randint(key: str, args: Any) -> Any:
    from ray import tune

    lo, hi = _numbers(key, "randint", args, 2)
    return tune.randint(int(lo), int(hi) + 1)  # inclusive of high, as users read [lo, hi]


@DISTRIBUTIONS.register("quniform")
def _quniform(key: str, args: Any) -> Any:
    from ray import tune

    lo, hi, q = _numbers(key, "quniform", args, 3)[0], args[1], args[2]
    return tune.quniform(lo, hi, q)


@dataclass(frozen=True)
class Dim:
    """One searched key: its distribution's name and arguments."""

    key: str
    kind: str
    args: Any

    @property
    def finite(self) -> bool:
        return bool(DISTRIBUTIONS.meta(self.kind).get("finite"))

    def probe_values(self) -> list[Any]:
        """The values validity is checked with: every listed value, or a range's ends."""
        if self.finite:
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        return [int(lo), int(hi)] if self.kind == "randint" else [lo, hi]


def parse_space(space: dict[str, Any]) -> list[Dim]:
    """``tune.search_space`` as :class:`Dim`s; a malformed entry is a ConfigError naming its key."""
    dims = []
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"tune.search_space.{key}: expected one distribution, e.g. {{choice: [a, b]}} or "
                              f"{{loguniform: [1.0e-4, 1.0e-2]}}; got {spec!r}")
        (kind, args), = spec.items()
        DISTRIBUTIONS.get(kind)(key, args)  # unknown kinds and bad arguments fail here
        dims.append(Dim(key, kind, args))
    return dims


def apply_params(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with dotted ``params`` replaced, validated as one Config (impossible points raise ConfigError).
    The storage section (credentials included) is carried over as it is."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in base.to_dict().items() if k != "storage"}
    for key, value in params.items():
        section, _, field = key.partition(".")
        data.setdefault(section, {})[field] = value
    return load_config(None, [], base=data).model_copy(update={"storage": base.storage})


@dataclass
class CheckedSpace:
    """A validated space: the dims, the valid grid points (if any grid keys) and the impossible ones skipped."""

    dims: list[Dim]
    grid: list[dict[str, Any]]
    skipped: list[dict[str, Any]]

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's ``param_space``: sampled keys as Tune distributions, grid keys as one grid of valid points."""
        from ray import tune

        space: dict[str, Any] = {d.key: DISTRIBUTIONS.get(d.kind)(d.key, d.args) for d in self.dims if d.kind != "grid"}
        if self.grid:
            space[GRID_KEY] = tune.grid_search(self.grid)
        return space


def flat_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's sampled config (with the grid point unfolded) as dotted key -> value."""
    out = {k: v for k, v in config.items() if k != GRID_KEY}
    out.update(config.get(GRID_KEY) or {})
    return dict(sorted(out.items()))


def check_space(base: Config) -> CheckedSpace:
    """Validate ``base.tune.search_space`` against the schema and the model registry, before any Ray starts."""
    dims = parse_space(base.tune.search_space)
    if not dims:
        raise ConfigError("tune.search_space is empty: add at least one key, e.g. model.backbone: {choice: [scratch, resnet18]}")
    _check_keys(base, dims)
    groups = [_Group(base, g) for g in _groups(base, dims)]
    for group in groups:
        if all(problem for _, problem in group.verdicts):
            raise ConfigError(f"tune.search_space: every point is impossible (e.g. {group.verdicts[0][1]}); change the space")
    by_key = {d.key: g for g in groups for d in g.dims}
    for d in dims:
        by_key[d.key].check_values(d)
    grid_dims = [d for d in dims if d.kind == "grid"]
    grid, skipped = [], []
    if grid_dims:
        for combo in _product(grid_dims):
            problem = next((p for g in groups if (p := g.grid_problem(combo))), None)
            (skipped.append({"params": combo, "reason": problem}) if problem else grid.append(combo))
        if not grid:
            raise ConfigError(f"tune.search_space: no valid grid point (e.g. {skipped[0]['reason']}); change the grid")
    return CheckedSpace(dims, grid, skipped)


def _groups(base: Config, dims: list[Dim]) -> list[list[Dim]]:
    """The dims whose validity depends on each other, together (a section's :data:`CROSS_FIELD` keys); every other
    dim alone."""
    out: dict[str, list[Dim]] = {}
    for d in dims:
        section, _, field = d.key.partition(".")
        cls = type(getattr(base, section))
        cross = bool(cls.__pydantic_decorators__.model_validators)
        together = cross and field in CROSS_FIELD.get(section, frozenset(cls.model_fields))
        out.setdefault(section if together else d.key, []).append(d)
    return list(out.values())


class _Group:
    """Dims checked together: every combination of their probe values, over the base config."""

    def __init__(self, base: Config, dims: list[Dim]) -> None:
        self.dims = dims
        size = 1
        for d in dims:
            size *= len(d.probe_values())
        if size > MAX_ENUMERATED:
            raise ConfigError(f"tune.search_space: {' x '.join(d.key for d in dims)} make {size} combinations, checked "
                              f"together (the values of one depends on the others); at most {MAX_ENUMERATED}: search "
                              "fewer values of them")
        self.verdicts = [(p, _problem(base, p)) for p in _product(dims)]
        self.grid_keys = [d.key for d in dims if d.kind == "grid"]
        self.feasible = {_hashable([p[k] for k in self.grid_keys]) for p, problem in self.verdicts if not problem}

    def check_values(self, d: Dim) -> None:
        """A value that is impossible in every combination it appears in is a bad value, not an impossible combination."""
        for value in d.probe_values():
            mine = [problem for point, problem in self.verdicts if point.get(d.key) == value]
            if mine and all(mine):
                raise ConfigError(f"tune.search_space.{d.key}: value {value!r} is invalid: {mine[0]}")

    def grid_problem(self, combo: dict[str, Any]) -> str | None:
        """Why a grid point is impossible whatever this group's sampled keys take (checked at their probe values)."""
        if not self.grid_keys or _hashable([combo[k] for k in self.grid_keys]) in self.feasible:
            return None
        return next(problem for point, problem in self.verdicts if all(point[k] == combo[k] for k in self.grid_keys))


def _hashable(values: list[Any]) -> str:
    return json.dumps(values, sort_keys=True, default=repr)


def _check_keys(base: Config, dims: list[Dim]) -> None:
    for d in dims:
        section, _, field = d.key.partition(".")
        cls = type(getattr(base, section, None))
        if section not in Config.model_fields or field not in getattr(cls, "model_fields", {}):
            allowed = ", ".join(Config.model_fields) if section not in Config.model_fields else ", ".join(cls.model_fields)
            raise ConfigError(f"tune.search_space.{d.key}: unknown key; allowed {'sections' if section not in Config.model_fields else 'keys'}: {allowed}")
        if section in ("tune", "storage", "resources", "tracking"):
            raise ConfigError(f"tune.search_space.{d.key}: {section} settings are per campaign, not searched")


def _product(dims: list[Dim]) -> Iterable[dict[str, Any]]:
    for values in itertools.product(*(d.probe_values() for d in dims)):
        yield dict(zip((d.key for d in dims), values))


def _problem(base: Config, params: dict[str, Any]) -> str | None:
    try:
        apply_params(base, params)
    except ConfigError as err:
        return str(err)
    return None
