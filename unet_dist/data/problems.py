"""Why an image/mask pair is invalid: a kind to count by, a reason to read, and the grouped report.

Counting and classification use :class:`ProblemKind`, never message text. A systematic problem (every
mask fails the same check) prints as one line per kind with a few examples; the full list goes to a
JSON-lines file whose path the error names.
"""

from __future__ import annotations

import enum
import json
import posixpath
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from unet_dist.errors import DataError

EXAMPLES_SHOWN = 3
EXAMPLES_IN_ERROR = 2


class ProblemKind(enum.Enum):
    """What is wrong with a pair; the value is the label shown to users."""

    MISSING_MASK = "missing mask"
    MISSING_IMAGE = "mask without image"
    DUPLICATE = "duplicate id"
    BAD_ROW = "bad CSV row"
    UNREADABLE = "unreadable file"
    UNDECODABLE = "undecodable file"
    SIZE_MISMATCH = "image/mask size mismatch"
    BAD_MASK_VALUES = "bad mask values"
    BAD_CHANNELS = "unsupported channels"
    BAD_DTYPE = "unsupported pixel type"
    NON_FINITE = "NaN or infinite pixels"


class PairError(DataError):
    """A DataError about one file, carrying its :class:`ProblemKind`."""

    def __init__(self, kind: ProblemKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def prefixed(self, prefix: str) -> "PairError":
        """The same kind, with ``prefix`` naming which file of the pair failed."""
        return PairError(self.kind, f"{prefix}: {self}")


@dataclass
class Problem:
    """Why a pair is invalid: the file, what kind of problem, and the reason in words."""

    file: str
    reason: str
    kind: ProblemKind

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "kind": self.kind.name, "reason": self.reason}


def _name(file: str) -> str:
    return posixpath.basename(file.rstrip("/")) or file


def by_kind(problems: Iterable[Problem]) -> dict[ProblemKind, list[Problem]]:
    """Problems grouped by kind, largest group first (ties in enum order)."""
    groups: dict[ProblemKind, list[Problem]] = {}
    for p in problems:
        groups.setdefault(p.kind, []).append(p)
    order = list(ProblemKind)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), order.index(kv[0]))))


def count(problems: Iterable[Problem], kind: ProblemKind) -> int:
    """How many problems are of ``kind``."""
    return Counter(p.kind for p in problems)[kind]


def summary_lines(problems: list[Problem]) -> list[str]:
    """One line per kind: its count, up to three example files and the first example's reason."""
    lines = []
    for kind, group in by_kind(problems).items():
        shown = ", ".join(_name(p.file) for p in group[:EXAMPLES_SHOWN])
        more = ", ..." if len(group) > EXAMPLES_SHOWN else ""
        lines.append(f"{kind.value}: {len(group)} ({shown}{more}) e.g. {group[0].reason}")
    return lines


def write_list(problems: list[Problem], path: str | None = None) -> Path:
    """Write every problem as one JSON line to ``path`` (default: a new file in the system temp dir)."""
    out = Path(path) if path else Path(tempfile.gettempdir()) / f"unet-dist-invalid-pairs-{uuid.uuid4().hex[:8]}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p.to_json()) + "\n" for p in problems))
    return out


def problems_error(problems: list[Problem], src: str, total: int, listing: Path) -> DataError:
    """One short line: kinds with counts and a couple of examples, where the full list is, and what to do."""
    kinds = "; ".join(f"{kind.value} x{len(group)} (e.g. {', '.join(_name(p.file) for p in group[:EXAMPLES_IN_ERROR])})"
                      for kind, group in by_kind(problems).items())
    err = DataError(f"{len(problems)} of {total} pairs in {src} are invalid, nothing written: {kinds}; "
                    f"full list in {listing}; fix them or pass --skip-invalid")
    err.problems = problems  # type: ignore[attr-defined]
    return err
