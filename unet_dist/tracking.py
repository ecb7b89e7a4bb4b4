"""Experiment tracking in MLflow, mirrored from storage: every run and campaign trial as an MLflow run (params, the
per-epoch metrics of ``metrics.jsonl``, status, ``run.json`` and the published report as artifacts), a campaign as a
parent run with one nested run per trial.

Live (:class:`Tracker`, ``tracking.mlflow_uri``): rank 0 mirrors its run after each epoch, the driver a campaign
first and every run at its end, best effort (a server that is down costs one warning, never the run).

Storage stays the record; MLflow is a view of it that can always be rebuilt. Mirroring is idempotent
(:func:`unet_dist.collect.mirror.sync_storage` mirrors a whole storage):
each MLflow run carries the URI of its folder (tag ``unet_dist.uri``) and how many epochs it holds
(``unet_dist.epochs``), so a second sync logs only what is new, and a sync after an outage of the server completes
what it missed. Credentials never come from a URI or reach storage: MLflow reads ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN`` from the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

from unet_dist.config import Config, uri_without_credentials
from unet_dist.errors import ConfigError
from unet_dist.runs import RUN_RECORD, CampaignDir, RunDir, content_digest
from unet_dist.storage import Location

TAG_URI = "unet_dist.uri"
TAG_EPOCHS = "unet_dist.epochs"
TAG_KIND = "unet_dist.kind"
TAG_REPORT = "unet_dist.report_sha256"
REPORT_ARTIFACT = "report.html"
PARENT_TAG = "mlflow.parentRunId"
STATUS = {"running": "RUNNING", "finished": "FINISHED", "early_stopped": "FINISHED", "error": "FAILED",
          "failed": "FAILED", "invalid": "FAILED", "stopped": "KILLED"}
"""Run record status -> MLflow run status (the record's own status is also a tag, ``unet_dist.status``)."""
log = logging.getLogger(__name__)
BATCH = 1000
"""Metrics per ``log_batch`` call (MLflow's limit); params go 100 at a time."""


def check_uri(uri: str) -> str:
    """The tracking URI, refused when it carries credentials (they would be written wherever the URI is)."""
    try:
        return uri_without_credentials(uri, "--mlflow")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def require_client() -> None:
    """MLflow's client, or a one-line error saying how to install it."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("MLflow tracking needs its client: pip install mlflow-skinny (or unet-dist[mlflow])") from None


def probe(uri: str, timeout: float = 5.0) -> str | None:
    """Why an HTTP tracking server is down (it does not answer ``/health``), or None: found in seconds, where MLflow's
    client retries a dead server for minutes before it gives up."""
    import urllib.error
    import urllib.request

    if urlsplit(uri).scheme not in ("http", "https"):
        return None
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered: a server without /health (or behind a proxy) is the client's to judge
    except OSError as err:
        return str(getattr(err, "reason", err))
    return None


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

    def __init__(self, uri: str, experiment: str, index: bool = True) -> None:
        """``index``: list the experiment's runs once (a whole storage's sync), else look each folder up as it comes
        (live logging of one run)."""
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=check_uri(uri))
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.result = SyncResult(self.experiment_id)
        self._indexed = index
        self._known = {r.data.tags[TAG_URI]: r for r in self._all_runs() if TAG_URI in r.data.tags} if index else {}
        """``{folder URI: MLflow run}`` as listed (``index``) or looked up (each found one once)."""
        self._logged: dict[str, tuple[str, int]] = {}
        """``{folder URI: (run id, epochs logged)}`` of what this mirror wrote."""

    def find(self, uri: str) -> str | None:
        """The id of the MLflow run mirroring the folder ``uri``, if there is one."""
        if uri in self._logged:
            return self._logged[uri][0]
        known = self._lookup(uri)
        return known.info.run_id if known is not None else None

    def _lookup(self, uri: str) -> Any:
        if not self._indexed and uri not in self._known:
            quoted = uri.replace("\\", "\\\\").replace("'", "\\'")
            found = self.client.search_runs([self.experiment_id], f"tags.`{TAG_URI}` = '{quoted}'", max_results=1)
            if found:  # a run not there yet (a campaign's, while its driver opens it) is asked for again
                self._known[uri] = found[0]
        return self._known.get(uri)

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
        if uri in self._logged:
            return self._logged[uri]
        known = self._lookup(uri)
        if known is not None:
            self.result.updated += 1
            return known.info.run_id, int(known.data.tags.get(TAG_EPOCHS, 0))
        run = self.client.create_run(self.experiment_id, start_time=_millis(start), run_name=name,
                                     tags={TAG_URI: uri, **tags})
        self.result.created += 1
        return run.info.run_id, -1

    def run(self, folder: RunDir, parent: str | None = None, name: str | None = None,
            report: Location | None = None) -> str | None:
        """Mirror one run or trial folder (and its published ``report``, if there is one); returns its MLflow run id
        (None when it has no readable record). A trial goes under ``parent``, else under its campaign's run where
        that exists."""
        from mlflow.entities import Metric, Param

        record = folder.read_record()
        if not record:
            self.result.skipped.append((folder.uri, f"no readable {RUN_RECORD}"))
            return None
        if parent is None and record.get("kind") == "trial":  # CAMPAIGN/trials/<trial id>
            parent = self.find(folder.loc.parent.parent.uri)
        parent_tag = {PARENT_TAG: parent} if parent else {}
        tags = {TAG_KIND: str(record.get("kind") or "train"), **parent_tag}
        run_id, logged = self._open(folder.uri, name or str(record.get("trial_id") or record.get("name")), tags,
                                    record.get("started_at"))
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
        # the parent again: a trial first logged while its campaign's run was missing is nested once it exists
        self._close(folder.uri, run_id, record, len(rows) - 1, RUN_RECORD, parent_tag)
        self._report(run_id, report)
        return run_id

    def _report(self, run_id: str, report: Location | None) -> None:
        """The published HTML report as the artifact ``report.html``, uploaded again only when it changed."""
        if report is None or not report.exists():
            return
        html = report.read_bytes()
        digest = hashlib.sha256(html).hexdigest()
        if self.client.get_run(run_id).data.tags.get(TAG_REPORT) != digest:
            self.client.log_text(run_id, html.decode(), REPORT_ARTIFACT)
            self.client.set_tag(run_id, TAG_REPORT, digest)

    def _close(self, uri: str, run_id: str, record: dict[str, Any], epochs: int, artifact: str,
               tags: dict[str, str] | None = None) -> None:
        """The record as an artifact, the epochs logged and the status as tags, the end when it has ended."""
        from mlflow.entities import RunTag

        status = str(record.get("status"))
        self.client.log_dict(run_id, record, artifact)
        tags = {TAG_EPOCHS: str(epochs), "unet_dist.status": status, **(tags or {})}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if status != "running":
            self.client.set_terminated(run_id, STATUS.get(status, "FINISHED"), end_time=_millis(record.get("ended_at")))
        self.result.runs[uri] = run_id
        self._logged[uri] = (run_id, epochs)

    def campaign(self, campaign: CampaignDir, report: Location | None = None) -> str | None:
        """Mirror a campaign: a parent run (its record's config and search space, its published ``report``) and each
        trial nested under it."""
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
        self._report(run_id, report)
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


LIVE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""A live log gives up on a server in seconds (MLflow's defaults retry for minutes); set either to override."""


class Tracker:
    """Live logging while a run trains: rank 0 after each epoch, the driver at a run's or campaign's start and end.

    Best effort by design: a server that is down or refuses costs one warning, never the run, and what it missed the
    next sync here or ``unet-dist collect STORAGE --mlflow URI`` logs (mirroring is idempotent)."""

    def __init__(self, uri: str, experiment: str, storage: str = "STORAGE") -> None:
        self.uri, self.experiment, self.storage = check_uri(uri), experiment, storage
        self.warned = False
        self._mirror: Mirror | None = None
        for key, value in LIVE_HTTP.items():
            os.environ.setdefault(key, value)

    @classmethod
    def of(cls, cfg: Config) -> "Tracker | None":
        """The tracker ``cfg.tracking`` asks for, or None."""
        t = cfg.tracking
        return cls(t.mlflow_uri, t.experiment, cfg.storage.uri) if t.mlflow_uri else None

    def run(self, folder: RunDir) -> bool:
        """Mirror a run or trial (a trial nested under its campaign's run); False if the server did not take it."""
        return self._sync(lambda m: m.run(folder))

    def campaign(self, campaign: CampaignDir) -> bool:
        """Mirror a campaign's run and every trial under it; False if the server did not take it."""
        return self._sync(lambda m: m.campaign(campaign))

    def _sync(self, mirror: Callable[[Mirror], Any]) -> bool:
        why = probe(self.uri, timeout=3.0)
        if why is None:
            try:
                if self._mirror is None:
                    self._mirror = Mirror(self.uri, self.experiment, index=False)
                mirror(self._mirror)
                return True
            except Exception as err:  # whatever the server or client raised: the run goes on
                self._mirror = None
                why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if not self.warned:
            self.warned = True
            log.warning("MLflow at %s did not answer (%s); training goes on, and `unet-dist collect %s --mlflow %s "
                        "--experiment %s` logs what it missed", self.uri, why, self.storage, self.uri, self.experiment)
        return False


CHAMPION_ALIAS = "champion"


@dataclass
class Registered:
    """What :func:`register_models` did: each exported model's version, which were new, the champion's."""

    name: str
    versions: dict[str, str] = field(default_factory=dict)
    """``{exported model name: version}``."""
    created: list[str] = field(default_factory=list)
    champion: str | None = None

    def summary(self) -> str:
        return (f"MLflow registered model {self.name}: {len(self.versions)} versions ({len(self.created)} new), "
                f"@{CHAMPION_ALIAS} -> version {self.champion}")


def register_models(uri: str, registered: str, cards: list[dict[str, Any]], store_uri: str, champion: str | None,
                    experiment: str) -> Registered:
    """Every exported model (its ``model.json`` card, from a model store MLflow can reach) as a version of the
    registered model ``registered``, the champion under the alias ``champion``. A version points at the exported
    folder (nothing is copied into MLflow) and links the MLflow run of its training run where one mirrors it;
    idempotent by the model's content digest, so exporting again adds no version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=check_uri(uri), registry_uri=uri)
    try:
        client.get_registered_model(registered)
    except MlflowException:
        client.create_registered_model(registered, description="U-Net segmentation models exported by unet-dist")
    known = {v.tags.get(TAG_DIGEST): v.version for v in client.search_model_versions(f"name = '{registered}'")}
    mirror = Mirror(uri, experiment, index=False)
    done = Registered(registered)
    for card in cards:
        digest = content_digest(card.get("files") or {})
        version = known.get(digest)
        if version is None:
            version = client.create_model_version(
                registered, f"{store_uri.rstrip('/')}/{card['name']}", run_id=mirror.find(str(card.get("run"))),
                tags=version_tags(card), description=version_description(card)).version
            done.created.append(card["name"])
        done.versions[card["name"]] = str(version)
    if champion in done.versions:
        client.set_registered_model_alias(registered, CHAMPION_ALIAS, done.versions[champion])
        done.champion = done.versions[champion]
    return done


TAG_DIGEST = "unet_dist.sha256"


def version_tags(card: dict[str, Any]) -> dict[str, str]:
    """A model card's searchable facts as model version tags: name, content digest, source, monitored metric,
    epoch, dataset fingerprint and searched values."""
    monitor = card.get("monitor") or {}
    tags = {"unet_dist.model": card.get("name"), TAG_DIGEST: content_digest(card.get("files") or {}),
            "unet_dist.source": card.get("source"), "unet_dist.run": card.get("run"),
            "unet_dist.metric": monitor.get("metric"), "unet_dist.value": monitor.get("value"),
            "unet_dist.epoch": card.get("epoch"), "unet_dist.dataset": (card.get("dataset") or {}).get("fingerprint"),
            **{f"searched.{k}": v for k, v in (card.get("params") or {}).items()}}
    return {k: param_value(v)[:5000] for k, v in tags.items() if v is not None}


def version_description(card: dict[str, Any]) -> str:
    """The model card in a few lines: what it scored, on what, where it came from."""
    monitor = card.get("monitor") or {}
    value = monitor.get("value")
    searched = ", ".join(f"{k}={v}" for k, v in (card.get("params") or {}).items()) or "none"
    return "\n".join([
        f"{card.get('name')}: {monitor.get('metric')} {value:.4f} at epoch {card.get('epoch')}" if isinstance(
            value, (int, float)) else f"{card.get('name')}: no {monitor.get('metric')} recorded",
        f"searched: {searched}",
        f"trained in {card.get('run')} ({card.get('status')}); dataset {(card.get('dataset') or {}).get('uri')}",
        f"exported by {card.get('exported_by')}; the full card is model.json beside the weights",
    ])
