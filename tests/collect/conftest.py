"""The collector tests read the session's shared campaign and run (``shared_campaign`` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def collect_tree(shared_campaign: dict) -> dict:
    """The shared result tree: a 4-trial ASHA campaign and a single run on the S3 server, plus a local copy."""
    return shared_campaign
