"""Experiment tracking in MLflow, mirrored from storage: every run and campaign trial as an MLflow run (params, the
per-epoch metrics of ``metrics.jsonl``, status, ``run.json`` as an artifact), a campaign as a parent run with one
nested run per trial.

Storage stays the record; MLflow is a view of it that can always be rebuilt. Mirroring is idempotent
(:func:`unet_dist.collect.mirror.sync_storage` mirrors a whole storage):
each MLflow run carries the URI of its folder (tag ``unet_dist.uri``) and how many epochs it holds
(``unet_dist.epochs``), so a second sync logs only what is new, and a sync after an outage of the server completes
what it missed. Credentials never come from a URI or reach storage: MLflow reads ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN`` from the environment.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable
from urllib.parse import urlsplit

from unet_dist.errors import ConfigError
from unet_dist.runs import RUN_RECORD, CampaignDir, RunDir

TAG_URI = "unet_dist.uri"
TAG_EPOCHS = "unet_dist.epochs"
TAG_KIND = "unet_dist.kind"
PARENT_TAG = "mlflow.parentRunId"
STATUS = {"running": "RUNNING", "finished": "FINISHED", "early_stopped": "FINISHED", "error": "FAILED",
          "failed": "FAILED", "invalid": "FAILED", "stopped": "KILLED"}
"""Run record status -> MLflow run status (the record's own status is also a tag, ``unet_dist.status``)."""
BATCH = 1000
"""Metrics per ``log_batch`` call (MLflow's limit); params go 100 at a time."""


def check_uri(uri: str) -> str:
    """The tracking URI, refused when it carries credentials (they would be written wherever the URI is)."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        raise ConfigError(f"--mlflow {parts.scheme}://***@{parts.hostname}: a tracking URI must not hold credentials; "
                          "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
    return uri


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, JSON values for lists and dicts."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = param_value(value)
    return out


def param_value(value: Any) -> str:
    """How a value reads as an MLflow param: strings as they are, anything else as JSON (``0.003``, ``[2, 4]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _millis(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None


@dataclass
class SyncResult:
    """What a sync did: MLflow runs created and updated, metric values logged, folders it could not read."""

    experiment_id: str = ""
    created: int = 0
    updated: int = 0
    metrics: int = 0
    runs: dict[str, str] = field(default_factory=dict)
    """``{folder URI: MLflow run id}``."""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.runs)} MLflow runs ({self.created} new, {self.updated} updated), {self.metrics} metric "
                f"values logged" + (f", {len(self.skipped)} skipped" if self.skipped else ""))

    def to_json(self) -> str:
        return json.dumps({"experiment_id": self.experiment_id, "created": self.created, "updated": self.updated,
                           "metrics": self.metrics, "runs": self.runs,
                           "skipped": [{"uri": u, "reason": r} for u, r in self.skipped], "summary": self.summary()})


class Mirror:
    """One MLflow experiment mirrored from run folders (:meth:`run`, :meth:`campaign`)."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=check_uri(uri))
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.result = SyncResult(self.experiment_id)
        self._known = {r.data.tags[TAG_URI]: r for r in self._all_runs() if TAG_URI in r.data.tags}

    def _all_runs(self) -> Iterable[Any]:
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _open(self, uri: str, name: str, tags: dict[str, str], start: str | None) -> tuple[str, int]:
        """The MLflow run mirroring ``uri`` (created with ``tags`` if new) and the epochs it already holds."""
        known = self._known.get(uri)
        if known is not None:
            self.result.updated += 1
            return known.info.run_id, int(known.data.tags.get(TAG_EPOCHS, 0))
        run = self.client.create_run(self.experiment_id, start_time=_millis(start), run_name=name,
                                     tags={TAG_URI: uri, **tags})
        self.result.created += 1
        return run.info.run_id, -1

    def run(self, folder: RunDir, parent: str | None = None, name: str | None = None) -> str | None:
        """Mirror one run or trial folder; returns its MLflow run id (None when it has no readable record)."""
        from mlflow.entities import Metric, Param

        record = folder.read_record()
        if not record:
            self.result.skipped.append((folder.uri, f"no readable {RUN_RECORD}"))
            return None
        tags = {TAG_KIND: str(record.get("kind") or "train"), **({PARENT_TAG: parent} if parent else {})}
        run_id, logged = self._open(folder.uri, name or str(record.get("name")), tags, record.get("started_at"))
        rows = folder.metrics()
        if logged < 0:  # new: params once (MLflow refuses a changed value)
            params = {**flat_params(record.get("config") or {}),
                      **{f"searched.{k}": param_value(v) for k, v in (record.get("params") or {}).items()}}
            items = [Param(k[:250], v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i:i + 100])
        new = [m for m in _metrics(rows, record) if m[2] > logged]
        for i in range(0, len(new), BATCH):
            self.client.log_batch(run_id, metrics=[Metric(k, v, t, step) for k, v, step, t in new[i:i + BATCH]])
        self.result.metrics += len(new)
        self._close(folder.uri, run_id, record, len(rows) - 1, RUN_RECORD)
        return run_id

    def _close(self, uri: str, run_id: str, record: dict[str, Any], epochs: int, artifact: str) -> None:
        """The record as an artifact, the epochs logged and the status as tags, the end when it has ended."""
        from mlflow.entities import RunTag

        status = str(record.get("status"))
        self.client.log_dict(run_id, record, artifact)
        self.client.log_batch(run_id, tags=[RunTag(TAG_EPOCHS, str(epochs)), RunTag("unet_dist.status", status)])
        if status != "running":
            self.client.set_terminated(run_id, STATUS.get(status, "FINISHED"), end_time=_millis(record.get("ended_at")))
        self.result.runs[uri] = run_id

    def campaign(self, campaign: CampaignDir) -> str | None:
        """Mirror a campaign: a parent run (its record's config and search space) and each trial nested under it."""
        from mlflow.entities import Param

        record = campaign.read_record()
        if not record:
            self.result.skipped.append((campaign.uri, "no readable campaign.json"))
            return None
        run_id, logged = self._open(campaign.uri, str(record.get("name")), {TAG_KIND: "campaign"},
                                    record.get("started_at"))
        if logged < 0:
            params = {"search_space": json.dumps(record.get("search_space") or {}),
                      "scheduler": str(record.get("scheduler")), "metric": str(record.get("metric")),
                      "mode": str(record.get("mode"))}
            self.client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
        for trial_id, trial in campaign.trials().items():
            self.run(trial, parent=run_id, name=trial_id)
        self._close(campaign.uri, run_id, record, 0, "campaign.json")
        return run_id


def _metrics(rows: list[dict[str, Any]], record: dict[str, Any]) -> list[tuple[str, float, int, int]]:
    """``(key, value, step, timestamp ms)`` of every finite scalar of every metrics row; step is the epoch."""
    start = _millis(record.get("started_at")) or 0
    out = []
    for row in rows:
        step = int(row.get("epoch", 0))
        when = int(row["time"] * 1000) if isinstance(row.get("time"), (int, float)) else start + step
        for key, value in _scalars(row):
            if key not in ("epoch", "time") and math.isfinite(value):
                out.append((key, value, step, when))
    return out


def _scalars(row: dict[str, Any]) -> Iterable[tuple[str, float]]:
    """Numbers of a metrics row, per-class dicts as ``key.class`` (``val_per_class_iou.membrane``)."""
    for key, value in row.items():
        if isinstance(value, dict):
            yield from ((f"{key}.{k}", float(v)) for k, v in value.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, float(value)
