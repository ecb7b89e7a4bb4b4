"""The README's config reference is generated from the schema; this keeps it in sync.

Regenerate with `make docs` (runs this file with UPDATE_DOCS=1).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from unet_dist.config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def test_readme_config_reference_matches_schema():
    text = README.read_text()
    fresh = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{config_reference()}\n{END}", text, flags=re.S)
    if os.environ.get("UPDATE_DOCS") == "1" and fresh != text:
        README.write_text(fresh)
        text = fresh
    assert text == fresh, "README config reference is stale: run `make docs`"


def test_readme_leads_with_the_two_commands():
    head = README.read_text()[:1500]
    assert "make demo" in head and "make test" in head
