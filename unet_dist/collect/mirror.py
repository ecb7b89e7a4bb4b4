"""`collect --mlflow`: every campaign and single run of a storage mirrored into MLflow (:mod:`unet_dist.tracking`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from unet_dist.collect.scan import find_runs, list_tree
from unet_dist.errors import ConfigError, StorageError
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve
from unet_dist.tracking import Mirror, SyncResult, check_uri


def _probe(uri: str, timeout: float = 5.0) -> None:
    """An HTTP tracking server that does not answer ``/health`` fails in seconds (MLflow's client retries a dead
    server for minutes before it gives up)."""
    import urllib.error
    import urllib.request

    if urlsplit(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered: a server without /health (or behind a proxy) is the client's to judge
    except OSError as err:
        raise _down(uri, str(getattr(err, "reason", err))) from None


def _down(uri: str, why: str) -> StorageError:
    return StorageError(f"MLflow at {uri} did not answer ({why}); storage is unchanged: run this again when the "
                        "server is up")


def sync_storage(root: str, uri: str, experiment: str = "unet-dist", storage: Any = None,
                 campaigns: list[str] | None = None) -> SyncResult:
    """Mirror every campaign and single run under the storage ``root`` into the MLflow experiment at ``uri``."""
    loc = resolve(root, storage)
    runs, _ = find_runs(list_tree(loc))
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("--mlflow needs the MLflow client: pip install mlflow-skinny (or unet-dist[mlflow])") from None
    _probe(check_uri(uri))
    try:
        mirror = Mirror(uri, experiment)
        done = set()
        for run in runs:
            name = run.campaign or run.key
            if campaigns and name not in campaigns or name in done:
                continue
            done.add(name)
            if run.campaign:
                mirror.campaign(CampaignDir(loc / run.campaign))
            else:
                mirror.run(RunDir(loc / run.key))
    except ConfigError:
        raise
    except Exception as err:  # the server down or refusing: one line, storage untouched
        raise _down(uri, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    return mirror.result
