"""What a campaign teaches: per searched key, how much it matters for the monitored metric (importance) and the mean
metric of each of its values with a bootstrap interval (effects).

Trials are compared like with like: each at the same pass (by default the last pass every trial reached, so a trial
ASHA stopped at its first rung counts with the value it had there, never as if it had run to the end); a trial that
stopped before the chosen pass is left out and counted. The value at a pass is the best the trial had reached by
then, which is what its best checkpoint at that time would score.

Importance comes from one of :data:`EVALUATORS`. The default, ``anova``, is a main-effect ANOVA (an additive model of
every searched key, type II sums of squares): each key's share of the metric's variance, bias-corrected (epsilon
squared: a key that does nothing scores about 0, not the (k-1)/(n-1) that chance alone gives k groups of n trials).
It answers "which choice moves the metric, and by how much", needs nothing beyond NumPy and works from a 2 x 2 grid
on. Optuna's evaluators (an extra) answer their own questions: ``ped-anova`` scores what it takes to reach the top
trials (on a synthetic campaign where unpooling moves the metric by 0.2 and the backbone by 0.06, it ranked the
backbone first in 5 of 5 draws of 96 trials, since the very best trials all share one backbone), and ``fanova``
(with scikit-learn) fits a random forest and also sees interactions.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from unet_dist.errors import UserError

if TYPE_CHECKING:  # imported where used: the CLI imports this module for --help, which stays light
    import numpy as np

    from unet_dist.storage import Location

EVALUATORS = ("anova", "ped-anova", "fanova")
MAX_GROUPS = 4
"""A numeric key with more distinct values than this is grouped into quantile bins for effects and ANOVA."""
RESAMPLES = 2000
NOTHING = 0.01
"""Importances all below this: no key stands out from chance, and the table and report say so."""
EPS = 1e-9


@dataclass(frozen=True)
class Effect:
    """The compared trials with one value of a key: their mean metric, a 95 % bootstrap interval, and how many."""

    value: str
    mean: float
    low: float
    high: float
    n: int


@dataclass
class KeyInsight:
    """A searched key's importance and its values' effects (``binned``: a numeric key grouped in quantile bins)."""

    key: str
    importance: float
    effects: list[Effect]
    binned: bool = False

    def ordered(self, mode: str) -> list[Effect]:
        """Bins in value order, other values best first."""
        return self.effects if self.binned else sorted(self.effects, key=lambda e: -e.mean if mode == "max" else e.mean)


@dataclass
class Point:
    """One compared trial: its label, searched values, metric at the compared pass, its best over the whole run and
    what the run cost."""

    trial: str
    params: dict[str, Any]
    value: float
    status: str
    best_value: float
    wall_time_s: float | None
    gpu_hours: float | None = None


@dataclass
class Insight:
    """The analysis: the metric, the pass compared at, the evaluator's name, the keys most important first, the
    compared trials, and the trials left out by reason."""

    metric: str
    mode: str
    epoch: float
    evaluator: str
    keys: list[KeyInsight]
    points: list[Point]
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def basis(self) -> str:
        """One sentence on what was compared: which value, at which pass, how many trials, which evaluator."""
        out = "; ".join(f"{n} {why}" for why, n in self.left_out.items())
        left = f" ({out}: left out)" if out else ""
        return (f"{self.metric} at pass {_num(self.epoch)}, the best each trial had reached by then, over "
                f"{len(self.points)} trials{left}; importance: {self.evaluator}")

    @property
    def caveat(self) -> str | None:
        """A warning when no key stands out: every importance under :data:`NOTHING`."""
        if self.keys and max(k.importance for k in self.keys) < NOTHING:
            return (f"no searched key explains more of the spread than chance would over {len(self.points)} trials: "
                    "run more trials, or compare at a later pass (--at-epoch) if enough trials reached it")
        return None

    def headline(self) -> str:
        """One line for a summary: each key's importance, most important first, and what was compared."""
        if not self.keys:
            return f"nothing to rank yet ({len(self.points)} trials compared)"
        keys = ", ".join(f"{k.key.rsplit('.', 1)[-1]} {k.importance:.2f}" for k in self.keys)
        how = self.evaluator.split(" (")[0]
        return f"{keys} ({how} over {len(self.points)} trials at pass {_num(self.epoch)})"

    def to_json(self) -> str:
        return json.dumps({"metric": self.metric, "mode": self.mode, "epoch": self.epoch, "evaluator": self.evaluator,
                           "trials": len(self.points), "left_out": self.left_out, "basis": self.basis, "caveat": self.caveat,
                           "keys": [asdict(k) for k in self.keys]}, default=str)

    def to_table(self) -> Any:
        """A rich table, readable at 80 columns: key, importance, then one line per value (mean [low, high] n)."""
        from rich import box
        from rich.table import Table

        caption = self.basis + (f". Note: {self.caveat}" if self.caveat else "")
        t = Table(title=f"what matters for {self.metric} ({self.mode})", caption=caption, box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True, caption_justify="left")
        for name, justify in (("key", "left"), ("importance", "right"), ("value", "left"), ("mean", "right"),
                              ("95% interval", "right"), ("n", "right")):
            t.add_column(name, justify=justify, no_wrap=name != "value", overflow="fold")
        for k in self.keys:
            for i, e in enumerate(k.ordered(self.mode)):
                t.add_row(k.key if i == 0 else "", f"{k.importance:.3f}" if i == 0 else "", e.value, f"{e.mean:.4f}",
                          f"{e.low:.4f}-{e.high:.4f}", str(e.n), end_section=i == len(k.effects) - 1)
        return t


def _num(x: float) -> str:
    return f"{x:g}"


# --- what is compared ------------------------------------------------------------------------------------------------

def histories(rows: Sequence[dict[str, Any]], root: Location, metric: str) -> dict[str, list[tuple[float, float]]]:
    """``{run_uri: [(passes trained, metric), ...]}`` from the metrics.jsonl of each row's run under ``root`` (read in
    parallel, one GET each on S3); an unreadable file gives an empty history."""
    from unet_dist.runs import METRICS_FILE
    from unet_dist.storage import read_many

    base = root.uri.rstrip("/") + "/"
    rel = {r["run_uri"]: f"{r['run_uri'].removeprefix(base).strip('/')}/{METRICS_FILE}" for r in rows
           if str(r.get("run_uri") or "").startswith(base)}
    raw = read_many(root, list(rel.values()))
    out: dict[str, list[tuple[float, float]]] = {}
    for uri, path in rel.items():
        data = raw.get(path)
        lines = data.decode(errors="replace").splitlines() if isinstance(data, bytes) else []
        out[uri] = history([row for line in lines if (row := _json(line)) is not None], metric)
    return out


def _json(line: str) -> dict[str, Any] | None:
    """One metrics row, or None for a blank or torn line (a run writing as it is read)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def history(metrics: Sequence[dict[str, Any]], metric: str) -> list[tuple[float, float]]:
    """``[(passes trained, metric), ...]`` of one run's metrics rows (rows without a finite value left out)."""
    from unet_dist.runs import epochs_done, is_finite

    return [(float(epochs_done(m)), float(m[metric])) for m in metrics if is_finite(m.get(metric))]


def compare_at(rows: Sequence[dict[str, Any]], hist: dict[str, list[tuple[float, float]]], keys: Sequence[str],
               mode: str, at_epoch: float | None = None) -> tuple[float, list[Point], dict[str, int]]:
    """The pass to compare at (``at_epoch``, else the last every trial with a metric reached), the trials compared
    there with their best value by then, and the count of trials left out by reason."""
    reached = {r["run_uri"]: max(e for e, _ in hist[r["run_uri"]]) for r in rows if hist.get(r.get("run_uri") or "")}
    left: dict[str, int] = {}
    if len(reached) < len(rows):
        left["without a validated epoch"] = len(rows) - len(reached)
    if not reached:
        return 0.0, [], left
    epoch = float(at_epoch) if at_epoch is not None else min(reached.values())
    better = max if mode == "max" else min
    points = []
    for r in rows:
        uri = r.get("run_uri") or ""
        if uri not in reached:
            continue
        if reached[uri] < epoch - EPS:
            why = f"stopped before pass {_num(epoch)}"
            left[why] = left.get(why, 0) + 1
            continue
        value = better(v for e, v in hist[uri] if e <= epoch + EPS)
        points.append(Point(str(r.get("trial")), {k: r.get(k) for k in keys}, value, str(r.get("status")),
                            better(v for _, v in hist[uri]), r.get("wall_time_s"), r.get("gpu_hours")))
    return epoch, points, left


# --- groups, effects, importance -------------------------------------------------------------------------------------

def is_binned(values: Sequence[Any]) -> bool:
    """Whether :func:`groups` bins these values (numeric, more than ``MAX_GROUPS`` distinct)."""
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numeric) == len(values) and len(set(numeric)) > MAX_GROUPS


def groups(values: Sequence[Any]) -> list[str]:
    """A label per trial for one key: the value itself, or for a numeric key with many values its quantile bin
    (``2: 0.001-0.0032``); a key the trial did not search is ``-``."""
    import numpy as np

    if is_binned(values):
        numeric = [float(v) for v in values]
        edges = np.quantile(numeric, np.linspace(0, 1, MAX_GROUPS + 1))
        idx = np.clip(np.searchsorted(edges, numeric, side="right") - 1, 0, MAX_GROUPS - 1)
        return [f"{i + 1}: {edges[i]:.2g}-{edges[i + 1]:.2g}" for i in idx]  # the number keeps bins in order
    return ["-" if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values]


def effects(labels: Sequence[str], y: np.ndarray, seed: int = 0) -> list[Effect]:
    """Per label: the mean of ``y`` and a 95 % percentile bootstrap interval of that mean (``RESAMPLES`` draws)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for label in sorted(dict.fromkeys(labels)):
        vals = y[[i for i, lab in enumerate(labels) if lab == label]]
        means = rng.choice(vals, size=(RESAMPLES, len(vals)), replace=True).mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        out.append(Effect(label, float(vals.mean()), float(low), float(high), len(vals)))
    return out


def anova(labels: dict[str, list[str]], y: np.ndarray) -> dict[str, float]:
    """Main-effect ANOVA of an additive model over every key (type II: each key's sum of squares is what dropping it
    from the model costs, so a strong key does not hide a weaker one), as that key's share of the variance of ``y``,
    bias-corrected (epsilon squared, at least 0; uncorrected where no degree of freedom is left for the residual)."""
    total = float(((y - y.mean()) ** 2).sum())
    if total <= 0:
        return dict.fromkeys(labels, 0.0)
    rss, rank = _fit(labels, y)
    noise = rss / (len(y) - rank) if len(y) > rank else 0.0
    out = {}
    for key in labels:
        rss_without, rank_without = _fit({k: v for k, v in labels.items() if k != key}, y)
        out[key] = max(0.0, (rss_without - rss - (rank - rank_without) * noise) / total)
    return out


def _fit(labels: dict[str, list[str]], y: np.ndarray) -> tuple[float, int]:
    """Residual sum of squares and rank of the least-squares fit of ``y`` on an intercept and each key's values."""
    import numpy as np

    cols = [np.ones(len(y))]
    for labs in labels.values():
        cols += [np.array([lab == g for lab in labs], dtype=float) for g in list(dict.fromkeys(labs))[1:]]
    x = np.stack(cols, axis=1)
    coef, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    return float(((y - x @ coef) ** 2).sum()), int(rank)


def optuna_importance(points: Sequence[Point], keys: Sequence[str], mode: str, kind: str) -> dict[str, float]:
    """Optuna's PED-ANOVA or fANOVA on a study built from the compared trials (normalised: the shares sum to 1)."""
    try:
        import optuna
        from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator
    except ImportError:
        raise UserError(f"--evaluator {kind} needs optuna: pip install optuna (or use --evaluator anova)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: _distribution(optuna, [p.params.get(k) for p in points]) for k in keys}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for p in points:
        params = {k: _optuna_value(p.params.get(k), dists[k]) for k in keys}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=p.value))
    if kind == "fanova":
        try:
            evaluator = FanovaImportanceEvaluator(seed=0)
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except ImportError:
            raise UserError("--evaluator fanova needs scikit-learn: pip install scikit-learn (or use --evaluator "
                            "ped-anova)") from None
    quantile = max(0.1, min(0.5, 5 / len(points)))  # 5 or more trials in the top, as Optuna advises
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile, evaluate_on_local=False)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))


def log_scaled(values: Sequence[float]) -> bool:
    """Whether a numeric key reads on a log scale (Optuna's distribution, the parallel-coordinates axis): all
    positive and spanning 20x or more, as a learning rate searched loguniform does."""
    lo, hi = min(values), max(values)
    return lo > 0 and hi / lo >= 20


def _distribution(optuna: Any, values: list[Any]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if is_binned(values):
        lo, hi = min(values), max(values)
        log = log_scaled(values)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(lo), int(hi), log=log)
        return FloatDistribution(float(lo), float(hi), log=log)
    return CategoricalDistribution(list(dict.fromkeys(_choice(v) for v in values)))


def _choice(v: Any) -> Any:
    return v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v)


def _optuna_value(v: Any, dist: Any) -> Any:
    from optuna.distributions import CategoricalDistribution

    return _choice(v) if isinstance(dist, CategoricalDistribution) else v


def evaluator_label(kind: str) -> str:
    if kind == "anova":
        return "main-effect ANOVA (each key's share of the variance, bias-corrected)"
    import optuna

    name = "PED-ANOVA" if kind == "ped-anova" else "fANOVA"
    return f"Optuna {optuna.__version__} {name} (normalised: the keys' shares sum to 1)"


# --- the analysis ----------------------------------------------------------------------------------------------------

def analyse(rows: Sequence[dict[str, Any]], keys: Sequence[str], metric: str, mode: str,
            hist: dict[str, list[tuple[float, float]]], at_epoch: float | None = None,
            evaluator: str = "anova") -> Insight:
    """Importance and effects of ``keys`` for ``metric`` over the campaign trials among ``rows`` (leaderboard rows;
    single runs search nothing and are left out), from their metric histories ``hist`` (:func:`histories`)."""
    import numpy as np

    if evaluator not in EVALUATORS:
        raise UserError(f"unknown evaluator {evaluator!r}; choose one of: {', '.join(EVALUATORS)}")
    trials = [r for r in rows if r.get("campaign")]
    epoch, points, left = compare_at(trials, hist, keys, mode, at_epoch)
    insight = Insight(metric, mode, epoch, evaluator, [], points, left)
    varied = [k for k in keys if len({json.dumps(p.params.get(k), default=str) for p in points}) > 1]
    if len(points) < 3 or not varied:
        return insight
    y = np.array([p.value for p in points], dtype=float)
    labels = {k: groups([p.params.get(k) for p in points]) for k in varied}
    scores = anova(labels, y) if evaluator == "anova" else optuna_importance(points, varied, mode, evaluator)
    insight.evaluator = evaluator_label(evaluator)
    insight.keys = sorted((KeyInsight(k, float(scores.get(k, 0.0)), effects(labels[k], y),
                                      is_binned([p.params.get(k) for p in points])) for k in varied),
                          key=lambda k: -k.importance)
    return insight


def campaign_insight(board: Any, root: Location, at_epoch: float | None = None, evaluator: str = "anova") -> Insight:
    """:func:`analyse` over a :class:`~unet_dist.collect.leaderboard.Leaderboard`'s trials and searched keys, their
    histories read from ``root`` (the storage it was collected from)."""
    rows = [r for r in board.rows if r.get("campaign")]
    if not rows:
        raise UserError(f"{root.uri} holds no campaign trial: importance needs a `unet-dist tune` campaign (pick one "
                        "with --campaign NAME)")
    if at_epoch is not None and (not math.isfinite(at_epoch) or at_epoch <= 0):
        raise UserError(f"--at-epoch must be a positive number of passes, not {at_epoch}")
    return analyse(rows, board.searched, board.metric, board.mode, histories(rows, root, board.metric), at_epoch,
                   evaluator)
