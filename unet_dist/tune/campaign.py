"""A campaign: check the space, start or resume Ray Tune over :func:`~unet_dist.tune.trial.trial_main`, show the
trials live, and close every trial's record with what happened to it.

``run_campaign(cfg)`` serves the CLI (``unet-dist tune``), ``jobs/tune.py`` and tests. Everything the results
collector needs is on storage in the layout of :mod:`unet_dist.runs`; Ray Tune's own state lives under the
campaign's ``tune/`` folder and is only what ``--resume`` restores.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from unet_dist.config import Config
from unet_dist.errors import ConfigError, UserError
from unet_dist.runs import (TUNE_STATE_DIR, CampaignDir, RunDir, finish_record, new_campaign_record, now_iso,
                            progress_fields, start_record)
from unet_dist.storage import public_config, ray_storage, resolve
from unet_dist.tracking import Tracker
from unet_dist.live import LiveTable, metric_label
from unet_dist.tune.schedulers import SCHEDULERS, SEARCHERS
from unet_dist.tune.space import CheckedSpace, check_space

FINAL = ("finished", "early_stopped", "error", "invalid")


class CampaignInterrupted(UserError):
    """Ctrl-C: the campaign is marked stopped; ``--resume`` continues it."""

    exit_code = 130


@dataclass
class CampaignSummary:
    """What a campaign produced; ``to_json()`` is the CLI's ``--json`` line."""

    name: str
    uri: str
    status: str
    metric: str
    mode: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    skipped: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


def trial_rows(campaign: CampaignDir, metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per trial folder from its record and metrics (never its checkpoint), best first."""
    rows = []
    for trial_id, run in campaign.trials().items():
        record = run.read_record()
        if not record:
            continue
        best = record.get("best") or {}
        final = record.get("final_metrics") or {}
        rows.append({
            "trial_id": trial_id, "status": record.get("status"), "params": record.get("params", {}),
            "epochs": record.get("epochs", 0), "best_value": best.get("value"), "best_epoch": best.get("epoch"),
            "best_val_iou": record.get("best_val_iou"), "val_iou": final.get("val_iou"),
            "images_per_s": final.get("images_per_s"), "last_value": final.get(metric),
            "best_checkpoint": record.get("best_checkpoint"),
            "error": record.get("error"),
        })
    from unet_dist.runs import is_finite  # a diverged trial's NaN ranks with the trials without a value, last

    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (not is_finite(r["best_value"]), sign * r["best_value"] if is_finite(r["best_value"]) else 0.0,
                                       r["trial_id"]))


def check_campaign(cfg: Config, resume: bool) -> tuple[CheckedSpace, CampaignDir, Any]:
    """Everything checkable before Ray starts: the space, the scheduler/search names, the campaign's existence."""
    checked = check_space(cfg)
    SCHEDULERS.get(cfg.tune.scheduler)
    searcher = SEARCHERS.get(cfg.tune.search)(cfg)
    campaign = CampaignDir(resolve(cfg.storage.uri, cfg.storage) / cfg.tune.name)
    exists = campaign.exists()
    if exists and not resume:
        raise ConfigError(f"campaign {campaign.uri} already exists: add --resume to continue it, or choose another tune.name")
    if resume and not exists:
        raise ConfigError(f"--resume: there is no campaign at {campaign.uri}; run it without --resume to start it")
    return checked, campaign, searcher


def run_campaign(cfg: Config, *, resume: bool = False, console: Any = None, progress: bool = True,
                 verbose: bool = False) -> CampaignSummary:
    """Run (or, with ``resume``, continue) the campaign ``cfg.tune`` over ``cfg``; returns its summary."""
    from rich.console import Console

    from unet_dist.train import preflight

    t0 = time.time()
    console = console or Console(stderr=True)
    checked, campaign, searcher = check_campaign(cfg, resume)
    manifest = preflight(cfg)
    for point in checked.skipped:
        console.print(f"[yellow]skipped impossible grid point[/] {point['params']}: {point['reason']}", highlight=False)
    start_record(campaign, new_campaign_record(cfg, cfg.tune.name, campaign.uri, cfg.tune.search_space, checked.skipped))
    tracker = Tracker.of(cfg)
    if tracker:
        tracker.campaign(campaign)  # first, so that trials nest under the campaign's run as they log
    try:
        _tune(cfg, checked, campaign, searcher, manifest, resume, console if progress else None, verbose)
    finally:  # the ends: statuses, and whatever the trials could not log
        if tracker:
            tracker.campaign(campaign)
    return summarize(campaign, cfg, time.time() - t0)


def _tune(cfg: Config, checked: CheckedSpace, campaign: CampaignDir, searcher: Any, manifest: dict[str, Any], resume: bool,
          console: Any, verbose: bool) -> None:
    from unet_dist.session import decide_gpu, ray_session
    from unet_dist.train import fit_off_main_thread, shared_datasets

    with ray_session(cfg, verbose=verbose):
        gpu = decide_gpu(cfg)
        if console is not None:
            console.print(f"[dim]{gpu.reason}[/]", highlight=False, soft_wrap=True)
        datasets = shared_datasets(cfg, manifest)
        tuner = _tuner(cfg, checked, campaign, searcher, manifest, gpu, datasets, resume)
        view = CampaignView(campaign, cfg, console) if console is not None else None
        try:
            with view or _Null():
                grid = fit_off_main_thread(tuner)
        except KeyboardInterrupt:
            close_trials(campaign, "stopped")
            campaign.update_record(status="stopped", ended_at=now_iso(), error="interrupted by the user (Ctrl-C)")
            raise CampaignInterrupted(f"campaign {campaign.uri} interrupted (Ctrl-C); continue it with: unet-dist tune "
                                      f"--config CAMPAIGN.yaml --storage {cfg.storage.uri} --resume") from None
        except Exception as err:
            close_trials(campaign, "stopped")
            campaign.update_record(status="failed", ended_at=now_iso(), error=f"{type(err).__name__}: {err}".splitlines()[0])
            raise
    close_after_tune(campaign, grid)
    if view is not None and not console.is_terminal:
        view.log()  # the ends close_after_tune wrote: trials the scheduler stopped early, errors
    campaign.update_record(status="finished", ended_at=now_iso())


def close_after_tune(campaign: CampaignDir, grid: Any) -> None:
    """Trials Tune ended without their own last word: ``error`` where Tune saw an exception, else ``early_stopped``
    or ``finished`` (a trial the scheduler stops never returns to write its record), ended at their worker's last
    write. Then every trial's hparams for TensorBoard."""
    from unet_dist.train import write_hparams

    errors = {_trial_id(r): r.error for r in grid if r.error is not None}
    for trial_id, run in campaign.trials().items():
        record = run.read_record() or {}
        if record.get("status") == "running":
            err = errors.get(trial_id)
            # the record as of its metrics: a trial stopped at its last report (max_t) may die before its worker
            # brings run.json up to date, but metrics.jsonl is written before the report
            rows = run.metrics()
            latest = {**record, **progress_fields(rows, None)}
            status = "error" if err else "finished" if ran_to_the_end(latest) else "early_stopped"
            record = finish_record(run, status, _one_line(err) if err else None, rows=rows,
                                   ended_at=last_write(run, record))
        if record.get("params") and record.get("status") != "invalid":
            write_hparams(run, record["params"], {**record.get("final_metrics", {}), "best": (record.get("best") or {}).get("value")})


def last_write(run: RunDir, record: dict[str, Any]) -> str | None:
    """When a trial Tune stopped last wrote: its record's update or its last event, whichever is later. Not now (the
    campaign may have run on for minutes since), and not the record alone: a trial stopped at its last report dies
    before its worker brings run.json up to date, after the epoch's event is written."""
    times = [datetime.fromisoformat(record["updated_at"]).timestamp()] if record.get("updated_at") else []
    times += [e["time"] for e in run.events() if isinstance(e.get("time"), (int, float))]
    return datetime.fromtimestamp(max(times), timezone.utc).isoformat(timespec="seconds") if times else None


def ran_to_the_end(record: dict[str, Any]) -> bool:
    """Whether a trial trained all its epochs or its whole time budget: the scheduler stops every trial at its last
    report (max_t), before the trial can write ``finished`` itself."""
    budget = record.get("time_budget_s")
    done = record.get("epochs_done", record.get("epochs", 0))  # passes; "epochs" counts validations
    return done >= record.get("epochs_planned", 0) or bool(
        budget and record.get("train_time_s", 0.0) >= budget)


def _trial_id(result: Any) -> str:
    return str((result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1])


def _one_line(err: BaseException) -> str:
    from unet_dist.train import failure_cause

    return failure_cause(err)


def _tuner(cfg: Config, checked: CheckedSpace, campaign: CampaignDir, searcher: Any, manifest: dict[str, Any], gpu: Any,
           datasets: dict[str, Any], resume: bool) -> Any:
    from ray import tune

    import os

    from unet_dist.train import default_recorders
    from unet_dist.tune.trial import trial_main

    public = public_config(cfg)  # no credentials in anything Tune pickles (tuner.pkl) or serialises
    trainable = tune.with_resources(
        tune.with_parameters(trial_main, base=public,
                             campaign_uri=campaign.uri, manifest=manifest, gpu=gpu,
                             datasets=datasets, recorders=default_recorders()),
        {"CPU": cfg.tune.trial_cpus})
    storage_path, storage_fs = ray_storage(campaign.loc)
    state = f"{storage_path}/{TUNE_STATE_DIR}"
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # an invalid trial ends without a result
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, Tune's own reporter stays silent (we show the table)
    if resume and tune.Tuner.can_restore(state, storage_filesystem=storage_fs):
        return tune.Tuner.restore(state, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=storage_fs)
    metric, mode = cfg.campaign_metric
    return tune.Tuner(
        trainable,
        param_space=checked.param_space(),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=SCHEDULERS.get(cfg.tune.scheduler)(public, campaign.uri),
                                    search_alg=searcher, num_samples=cfg.tune.num_samples,  # concurrency: in the searcher
                                    time_budget_s=cfg.tune.time_budget_s,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(name=TUNE_STATE_DIR, storage_path=storage_path, storage_filesystem=storage_fs, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )


def close_trials(campaign: CampaignDir, status: str) -> None:
    """Mark every trial still running with ``status`` (``stopped`` on an interrupt): a trial Tune stops never
    returns to write its own record."""
    for run in campaign.trials().values():
        record = run.read_record() or {}
        if record.get("status") == "running":
            finish_record(run, status)  # type: ignore[arg-type]


def summarize(campaign: CampaignDir, cfg: Config, duration: float) -> CampaignSummary:
    metric, mode = cfg.campaign_metric
    record = campaign.read_record() or {}
    rows = trial_rows(campaign, metric, mode)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    best = next((r for r in rows if r["best_value"] is not None), None)
    return CampaignSummary(name=campaign.loc.name, uri=campaign.uri, status=record.get("status", "unknown"), metric=metric,
                           mode=mode, trials=rows, best=best, skipped=record.get("skipped", []), counts=counts,
                           duration_s=round(duration, 2))


class _Null:
    def __enter__(self) -> None: ...

    def __exit__(self, *exc: Any) -> None: ...


class CampaignView(LiveTable):
    """The trials, read from storage (records and metrics) every few seconds, as a live table."""

    def __init__(self, campaign: CampaignDir, cfg: Config, console: Any, interval: float = 2.0) -> None:
        super().__init__(console, interval, transient=True)
        self.campaign, self.cfg = campaign, cfg
        self.events = TrialEvents(list(cfg.tune.search_space))

    def lines(self) -> list[str]:
        """Trial events since the last look, for a log (``ray job logs``, CI, ``make demo > log``)."""
        metric, mode = self.cfg.campaign_metric
        try:
            rows = trial_rows(self.campaign, metric, mode)
        except Exception:  # a storage hiccup must never end the campaign's driver
            return []
        return self.events.update(rows, metric)

    def render(self) -> Any:
        metric, mode = self.cfg.campaign_metric
        try:
            rows = trial_rows(self.campaign, metric, mode)
        except Exception:  # a storage hiccup must never end the campaign's driver
            rows = []
        title = f"unet-dist tune · {self.campaign.uri} · {time.time() - self._t0:.0f}s"
        return trials_table(rows, list(self.cfg.tune.search_space), metric, title=title)


class TrialEvents:
    """One line per trial event between two reads of the campaign's records: started (with its searched values),
    its latest reported epoch with the campaign metric, and its end (finished, stopped early, error)."""

    ENDS = {"finished": "finished", "early_stopped": "stopped early", "error": "error", "invalid": "invalid",
            "stopped": "stopped"}

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.seen: dict[str, tuple[int, str]] = {}

    def update(self, rows: list[dict[str, Any]], metric: str) -> list[str]:
        out, label = [], metric_label(metric).removeprefix("val ")
        for r in sorted(rows, key=lambda r: r["trial_id"]):
            tid = r["trial_id"].rsplit("_", 1)[-1]
            if tid not in self.seen:
                values = ", ".join(f"{k.split('.')[-1]}={_fmt(r['params'].get(k))}" for k in self.keys)
                out.append(f"trial {tid} started: {values}")
            epochs, status = self.seen.get(tid, (0, "running"))
            if r["epochs"] > epochs:
                out.append(f"trial {tid} epoch {r['epochs']}: {label} {_fmt(r['last_value'])} (best {_fmt(r['best_value'])})")
            if r["status"] != status and r["status"] in self.ENDS:
                end = self.ENDS[r["status"]]
                detail = f": {r['error']}" if r.get("error") else f" after {r['epochs']} epochs, best {_fmt(r['best_value'])}"
                out.append(f"trial {tid} {end}{detail}")
            self.seen[tid] = (r["epochs"], r["status"])
        return out


def trials_table(rows: list[dict[str, Any]], keys: list[str], metric: str, title: str = "", limit: int | None = None,
                 width: int = 80) -> Any:
    """The trials as a rich table that fits ``width`` columns: trial, status, the searched values (abbreviated to
    share the width, as the collector's table does), epochs, val IoU, the best monitored metric, images/s."""
    from unet_dist.live import STATUS_SHORT, compact_table

    best = f"best {metric_label(metric).removeprefix('val ').replace('image ', 'img ')}"
    lines = [([r["trial_id"].rsplit("_", 1)[-1], STATUS_SHORT.get(str(r["status"]), str(r["status"]))],
              [r["params"].get(k) for k in keys],
              [str(r["epochs"]), _fmt(r["val_iou"]), _fmt(r["best_value"]), _fmt(r["images_per_s"], 1)])
             for r in rows[:limit]]
    return compact_table(["trial", "status"], keys, ["ep", "IoU", best, "img/s"], lines, title=title or None,
                         width=width)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 else f"{v:.{digits}f}"
    return str(v)
