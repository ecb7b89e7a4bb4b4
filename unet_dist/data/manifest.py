"""The dataset manifest (``dataset.json``): what an ingested dataset is, and the one way to read it.

A dataset exists only where its manifest does; ingest writes it last. Consumers read it once per run
(:func:`read_manifest`) and pass the dict on, so nothing re-reads ``dataset.json`` behind their back.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from unet_dist.config import StorageConfig
from unet_dist.errors import DataError
from unet_dist.runs import DATASET_RECORD
from unet_dist.storage import Location, resolve

SCHEMA_VERSION = 1
MANIFEST = DATASET_RECORD
SPLITS = ("train", "val", "test")

PARQUET_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.binary()),
    ("mask", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("channels", pa.int8()),
    ("bit_depth", pa.int8()),
    ("source", pa.string()),
    ("mask_source", pa.string()),
    ("split", pa.string()),
])


def dataset_exists(uri: str, storage: StorageConfig | None = None) -> bool:
    """True when a complete dataset (its dataset.json) is at ``uri``."""
    return resolve(uri, storage).join(MANIFEST).exists()


def _missing(loc: Location) -> DataError:
    """Why there is no manifest at ``loc``, and the command that makes one."""
    if loc.exists() and loc.join("images").isdir():
        return DataError(f"{loc.uri} is a raw image folder (it has images/), not an ingested dataset: ingest it into a "
                         f"separate destination, e.g. `unet-dist ingest {loc.uri} {loc.uri.rstrip('/')}-dataset`, "
                         "and pass that destination")
    leftovers = [c.name for c in loc.ls() if c.name.startswith((".tmp-", "data-"))] if loc.exists() else []
    if leftovers:
        return DataError(f"no complete dataset at {loc.uri}: dataset.json is missing (an ingest was interrupted); "
                         f"re-run `unet-dist ingest SRC {loc.uri}`")
    return DataError(f"no dataset at {loc.uri}: dataset.json not found; create one with `unet-dist ingest SRC {loc.uri}`")


def read_manifest(uri: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    """The manifest of a complete dataset at ``uri`` (plus ``uri``); DataError if none is there."""
    loc = resolve(uri, storage)
    path = loc.join(MANIFEST)
    if not path.exists():
        raise _missing(loc)
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path.uri} is not valid JSON ({err}); re-run ingest") from None
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(f"{path.uri} has schema_version {version!r}; this unet-dist reads {SCHEMA_VERSION}: re-run ingest")
    manifest["uri"] = loc.uri
    return manifest


def split_paths(manifest: dict[str, Any], split: str, storage: StorageConfig | None = None) -> tuple[list[str], Any]:
    """``(paths, pyarrow filesystem)`` of one split's Parquet shards, for ``ray.data.read_parquet``/``pq.read_table``."""
    loc = resolve(manifest["uri"], storage)
    return [loc.join(f).path for f in manifest["splits"][split]["files"]], loc.arrow
