"""`collect --mlflow`: every campaign and single run of a storage mirrored into MLflow (:mod:`unet_dist.tracking`)."""

from __future__ import annotations

from typing import Any

from unet_dist.collect.scan import find_runs, list_tree
from unet_dist.errors import ConfigError, StorageError
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve
from unet_dist.tracking import Mirror, SyncResult, check_uri, probe, require_client


def _down(uri: str, why: str) -> StorageError:
    return StorageError(f"MLflow at {uri} did not answer ({why}); storage is unchanged: run this again when the "
                        "server is up")


def sync_storage(root: str, uri: str, experiment: str = "unet-dist", storage: Any = None,
                 campaigns: list[str] | None = None) -> SyncResult:
    """Mirror every campaign and single run under the storage ``root`` into the MLflow experiment at ``uri``."""
    loc = resolve(root, storage)
    runs, _ = find_runs(list_tree(loc))
    require_client()
    if why := probe(check_uri(uri)):
        raise _down(uri, why)
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
