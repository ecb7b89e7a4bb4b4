"""MLflow from storage (:mod:`unet_dist.tracking`): `collect --mlflow` mirrors every campaign and single run of a
storage; `export --mlflow` registers the exported models in the Model Registry."""

from __future__ import annotations

import json
from typing import Any

from unet_dist.collect.export import ExportResult
from unet_dist.collect.scan import find_runs, list_tree
from unet_dist.errors import ConfigError, StorageError
from unet_dist.runs import MODEL_CARD, CampaignDir, RunDir, report_location
from unet_dist.storage import resolve
from unet_dist.tracking import Mirror, Registered, SyncResult, check_uri, probe, register_models, require_client


def _down(uri: str, why: str) -> StorageError:
    return StorageError(f"MLflow at {uri} did not answer ({why}); storage is unchanged: run this again when the "
                        "server is up")


def _check_server(uri: str) -> None:
    """The client installed, a URI without credentials, a server that answers: or one line, in seconds."""
    require_client()
    if why := probe(check_uri(uri)):
        raise _down(uri, why)


def sync_storage(root: str, uri: str, experiment: str = "unet-dist", storage: Any = None,
                 campaigns: list[str] | None = None) -> SyncResult:
    """Mirror every campaign and single run under the storage ``root`` into the MLflow experiment at ``uri``."""
    loc = resolve(root, storage)
    runs, _ = find_runs(list_tree(loc))
    _check_server(uri)
    try:
        mirror = Mirror(uri, experiment)
        done = set()
        for run in runs:
            name = run.campaign or run.key
            if campaigns and name not in campaigns or name in done:
                continue
            done.add(name)
            folder = loc / name
            if run.campaign:
                mirror.campaign(CampaignDir(folder), report=report_location(loc, folder))
            else:
                mirror.run(RunDir(folder), report=report_location(loc, folder))
    except ConfigError:
        raise
    except Exception as err:  # the server down or refusing: one line, storage untouched
        raise _down(uri, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    return mirror.result


def check_registry(uri: str, dest: str, storage: Any = None) -> None:
    """Before ``export --mlflow`` copies anything: the client installed, a URI without credentials, a server that
    answers, and a model store MLflow's users can reach (a registered version points at its exported folder)."""
    if not resolve(dest, storage).is_s3:
        raise ConfigError(f"export --mlflow: the model store {dest} is a local folder, which only this machine can "
                          "read, and MLflow refuses local model version sources; export to s3://BUCKET/PREFIX")
    _check_server(uri)


def register_export(result: ExportResult, uri: str, registered: str, experiment: str, storage: Any = None) -> Registered:
    """The models an export wrote, as versions of ``registered`` in MLflow's Model Registry (the champion under the
    alias ``champion``), each linked to its training run's MLflow run in ``experiment`` where one mirrors it."""
    cards = []
    for model in result.models:
        card = resolve(model.uri, storage) / MODEL_CARD
        cards.append(json.loads(card.read_text()))
    try:
        return register_models(uri, registered, cards, result.dest, result.champion, experiment)
    except Exception as err:  # the export stands; registering again is safe
        raise StorageError(f"exported to {result.dest}, but MLflow at {uri} did not register it ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else ''}); run the same export again once the "
                           "server answers: nothing is copied twice and no version is added twice") from None
