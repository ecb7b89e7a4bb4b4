"""Schedulers and search algorithms a campaign can name (``tune.scheduler``, ``tune.search``), one registry each.

Time is measured in epochs (``epochs_done``, reported by every trial), not in Tune's own iteration counter:
restored trials restart that counter, their epochs do not. ASHA here rebuilds its rungs from the trials'
``metrics.jsonl`` on storage the first time it sees a trial, because Tune does not save scheduler state across a
restore (ray-project/ray#30838): a resumed campaign then stops the trials it would have stopped anyway.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

from unet_dist.config import Config
from unet_dist.errors import ConfigError
from unet_dist.registry import Registry
from unet_dist.runs import epochs_done

TIME_ATTR = "epochs_done"
_WORST = sys.float_info.max
"""The worst reward ASHA records for a non-finite metric: finite, so its rung percentiles stay numbers."""

SCHEDULERS: Registry[Callable[[Config, str | None], Any]] = Registry("scheduler", key="tune.scheduler")
SEARCHERS: Registry[Callable[[Config], Any]] = Registry("search algorithm", key="tune.search")


def rung_values(rows: list[dict[str, Any]], metric: str, milestones: list[float]) -> dict[float, float]:
    """``{milestone: value}``: the metric a trial reported at each rung it reached (its first report at or past it,
    as ASHA records it)."""
    out: dict[float, float] = {}
    for milestone in milestones:
        row = next((r for r in rows if epochs_done(r) >= milestone and isinstance(r.get(metric), (int, float))), None)
        if row is not None:
            out[milestone] = float(row[metric])
    return out


def _restoring_asha(cfg: Config, campaign_uri: str | None) -> Any:
    from ray.tune.schedulers import AsyncHyperBandScheduler

    class RungRestoringASHA(AsyncHyperBandScheduler):
        """ASHA whose rungs start from what the campaign's trials already reported (see the module doc)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.campaign_uri = campaign_uri
            self._restored = False

        def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
            super().on_trial_add(tune_controller, trial)
            if not self._restored:
                self._restored = True
                self.restore_rungs()

        def _finite(self, result: dict[str, Any]) -> tuple[dict[str, Any], bool]:
            """``result`` with a non-finite metric (NaN, or the worst value ±inf a diverged epoch reports) replaced by
            the worst finite value, and whether it was: Ray's rungs take percentiles, which NaN and ±inf break
            (NaN never falls below a cutoff; -inf makes the cutoff -inf or NaN, so nothing is stopped)."""
            value = result.get(self._metric)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                return {**result, self._metric: -self._metric_op * _WORST}, True
            return result, False

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            """ASHA's decision, except that a trial reporting a non-finite metric at or past its first rung stops
            (recorded at the rung as the worst): a diverged trial never leads a rung nor goes on."""
            from ray.tune.schedulers import TrialScheduler

            result, diverged = self._finite(result)
            action = super().on_trial_result(tune_controller, trial, result)
            bracket = self._trial_info.get(trial.trial_id)
            if (diverged and action != TrialScheduler.STOP and bracket is not None and bracket._rungs
                    and result.get(self._time_attr, 0) >= bracket._rungs[-1][0]):
                self._num_stopped += 1
                action = TrialScheduler.STOP
            return action

        def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
            super().on_trial_complete(tune_controller, trial, self._finite(result)[0])

        def restore_rungs(self) -> int:
            """Fill every bracket's rungs from storage; the number of values recorded."""
            if not self.campaign_uri:
                return 0
            from unet_dist.runs import CampaignDir
            from unet_dist.storage import resolve

            n = 0
            for trial_id, run in CampaignDir(resolve(self.campaign_uri, cfg.storage)).trials().items():
                rows = run.metrics()
                for bracket in self._brackets:
                    values = rung_values(rows, self._metric, [m for m, _ in bracket._rungs])
                    for milestone, recorded in bracket._rungs:
                        if milestone in values:
                            value = values[milestone]
                            recorded[trial_id] = self._metric_op * value if math.isfinite(value) else -_WORST
                            n += 1
            return n

    return RungRestoringASHA(time_attr=TIME_ATTR, max_t=cfg.train.epochs, grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
                             reduction_factor=cfg.tune.reduction_factor)


SCHEDULERS.add("asha", _restoring_asha)


@SCHEDULERS.register("hyperband")
def _hyperband(cfg: Config, campaign_uri: str | None) -> Any:
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr=TIME_ATTR, max_t=cfg.train.epochs, reduction_factor=cfg.tune.reduction_factor)


@SCHEDULERS.register("fifo")
def _fifo(cfg: Config, campaign_uri: str | None) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


@SEARCHERS.register("random")
def _random(cfg: Config) -> Any:
    """Tune's variant generator (grid keys expanded), seeded by ``train.seed`` so a campaign samples reproducibly."""
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.train.seed, max_concurrent=cfg.tune.max_concurrent_trials)


SEARCHERS.add("grid", _random)


@SEARCHERS.register("optuna")
def _optuna(cfg: Config) -> Any:
    try:
        from ray.tune.search.optuna import OptunaSearch
        import optuna  # noqa: F401  (OptunaSearch imports it lazily; fail here, with the message below)
    except ImportError:
        raise ConfigError("tune.search=optuna needs optuna: pip install optuna (or use tune.search=random)") from None
    from ray.tune.search import ConcurrencyLimiter

    return ConcurrencyLimiter(OptunaSearch(), max_concurrent=cfg.tune.max_concurrent_trials)
