"""Splits that represent the data: which split, and which fold, each pair goes to.

Pairs are placed before any is validated, from traits read cheaply (the mask and the image's header): the
image's size class, its channels and bit depth, and the tertile of its foreground fraction. Pairs with the same
traits form a *stratum*. Every split takes every stratum in proportion, within one image of its share, while
the split totals follow ``ingest.split``. With a group column (a patient, a plate, a slide) the unit placed is
the group, so its images never straddle splits; each stratum is then kept within one group of its share.
``ingest.folds`` deals the non-test units into K folds the same way; fold 0 is the val split.

The order within a stratum comes from a hash of the seed and the unit's name, so a pair's place does not depend
on the order files are listed in, and a pair that fails validation still holds its place: skipping it or fixing
it never moves the others as long as its mask and image header were readable.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from unet_dist.errors import ConfigError

SPLITS = ("train", "val", "test")
UNSTRATIFIED = "all"
UNREADABLE = "unreadable"
TERTILES = ("low", "mid", "high")


@dataclass(frozen=True)
class Traits:
    """What a pair's stratum is made of."""

    height: int
    width: int
    channels: int
    bit_depth: int
    foreground: float  # fraction of mask pixels that are not background


@dataclass
class Unit:
    """What is placed as one: a single pair, or every pair of a group."""

    name: str
    members: list[str]
    stratum: str

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Plan:
    """The placement of every pair: its split, its fold (``-1``: test or no folds) and its stratum."""

    split: dict[str, str]
    fold: dict[str, int] = field(default_factory=dict)
    stratum: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)

    def bucket(self, pair_id: str) -> str:
        """The shard folder a pair is written to: its split, or ``fold-K`` for a non-test pair of a K-fold set."""
        fold = self.fold.get(pair_id, -1)
        return f"fold-{fold}" if fold >= 0 else self.split[pair_id]


def size_class(height: int, width: int) -> str:
    """Octave of the image's side (``sqrt(h*w)``), e.g. ``256-511px``."""
    low = 2 ** int(math.floor(math.log2(max(math.sqrt(height * width), 1.0))))
    return f"{low}-{2 * low - 1}px"


def strata(traits: Mapping[str, Traits | None]) -> dict[str, str]:
    """Each pair's stratum label; foreground tertiles are cut at the set's own 1/3 and 2/3 quantiles (ties stay
    together, so a set of mostly empty masks has a large ``fg-low``)."""
    known = [t.foreground for t in traits.values() if t is not None]
    cuts = np.quantile(known, [1 / 3, 2 / 3], method="lower") if known else np.zeros(2)
    out = {}
    for pair_id, t in traits.items():
        if t is None:
            out[pair_id] = UNREADABLE
            continue
        tertile = TERTILES[int(t.foreground > cuts[0]) + int(t.foreground > cuts[1])]
        out[pair_id] = f"{size_class(t.height, t.width)} {t.channels}ch {t.bit_depth}-bit fg-{tertile}"
    return out


def units(ids: list[str], stratum_of: Mapping[str, str], group_of: Mapping[str, str] | None = None) -> list[Unit]:
    """The units to place: one per group (members sorted, stratum the most common of theirs), else one per pair.
    A pair with an empty group is a unit of its own."""
    by_group: dict[str, list[str]] = {}
    for pair_id in ids:
        group = (group_of or {}).get(pair_id) or ""
        by_group.setdefault(f"group:{group}" if group else f"id:{pair_id}", []).append(pair_id)
    out = []
    for name, members in by_group.items():
        counts = Counter(stratum_of[m] for m in members)
        top = max(counts.values())
        out.append(Unit(name, sorted(members), min(s for s, n in counts.items() if n == top)))
    return out


def _order(name: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()


def _targets(size: int, shares: Mapping[str, float], placed: Counter[str]) -> dict[str, int]:
    """Whole-image targets for one stratum of ``size`` images: each bucket gets the floor or the ceiling of its
    share, the ceilings going where the running totals are furthest below their share of all images so far."""
    quota = {b: s * size for b, s in shares.items()}
    out = {b: int(math.floor(q + 1e-9)) for b, q in quota.items()}
    total = sum(placed.values())
    spare = size - sum(out.values())
    owed = sorted((b for b in shares if quota[b] - out[b] > 1e-9),
                  key=lambda b: (-(shares[b] * (total + size) - placed[b] - out[b]), list(shares).index(b)))
    for b in (owed + sorted(shares, key=lambda b: -shares[b]))[:spare]:  # the tail only covers float round-off
        out[b] += 1
    return out


def apportion(todo: list[Unit], shares: Mapping[str, float], seed: int, need: tuple[str, ...] = ()) -> dict[str, str]:
    """Unit name -> bucket, each stratum dealt in proportion to ``shares``. Single pairs meet whole-image targets
    (:func:`_targets`); groups go one by one to the bucket most owed, by its stratum and by the totals. Buckets in
    ``need`` get at least one unit when there are enough units to go round (taken from the bucket with the most)."""
    out: dict[str, str] = {}
    placed: Counter[str] = Counter()
    by_stratum: dict[str, list[Unit]] = {}
    for unit in todo:
        by_stratum.setdefault(unit.stratum, []).append(unit)
    for stratum in sorted(by_stratum):
        members = sorted(by_stratum[stratum], key=lambda u: (-u.size, _order(u.name, seed)))
        deal = _deal_pairs if all(u.size == 1 for u in members) else _deal_groups
        got = deal(members, shares, placed, out)
        placed.update(got)
    _ensure(out, todo, need, seed)
    return out


def _deal_pairs(members: list[Unit], shares: Mapping[str, float], placed: Counter[str], out: dict[str, str]) -> Counter[str]:
    """One stratum of single pairs, each bucket getting the floor or ceiling of its share."""
    target = _targets(len(members), shares, placed)
    got: Counter[str] = Counter()
    for unit in members:
        bucket = max(shares, key=lambda b: (target[b] - got[b], shares[b]))
        got[bucket] += 1
        out[unit.name] = bucket
    return got


def _deal_groups(members: list[Unit], shares: Mapping[str, float], placed: Counter[str], out: dict[str, str]) -> Counter[str]:
    """One stratum of groups, largest first. A group may go where the stratum stays within its largest group of
    its share; of those buckets, to the one the running totals owe most (then the one the stratum owes most)."""
    got: Counter[str] = Counter()
    total, size, largest = sum(placed.values()), sum(u.size for u in members), members[0].size
    for unit in members:
        done = sum(got.values()) + unit.size
        room = [b for b in shares if got[b] + unit.size <= shares[b] * size + largest
                and _short(shares, got, size, largest, b) <= size - done] or list(shares)
        bucket = max(room, key=lambda b: (shares[b] * (total + done) - placed[b] - got[b], shares[b] * done - got[b], shares[b]))
        got[bucket] += unit.size
        out[unit.name] = bucket
    return got


def _short(shares: Mapping[str, float], got: Counter[str], size: int, largest: int, bucket: str) -> float:
    """Images the other buckets still need to come within ``largest`` of their share, if ``bucket`` takes this group."""
    return sum(max(0.0, shares[b] * size - largest - got[b]) for b in shares if b != bucket)


def _ensure(out: dict[str, str], todo: list[Unit], need: tuple[str, ...], seed: int) -> None:
    """Give each bucket of ``need`` one unit if it has none, from the bucket holding the most units, so a tiny set
    still has a train and a val image."""
    for bucket in need:
        held = Counter(out.values())
        if held[bucket]:
            continue
        donors = [b for b in held if held[b] > (1 if b in need else 0)]
        if not donors:
            continue
        donor = max(donors, key=lambda b: (held[b], b))
        name = max((u.name for u in todo if out[u.name] == donor), key=lambda n: _order(n, seed))
        out[name] = bucket


def plan(ids: list[str], ratios: tuple[float, float, float], seed: int, stratum_of: Mapping[str, str] | None = None,
         group_of: Mapping[str, str] | None = None, folds: int = 0, fixed: Mapping[str, str] | None = None) -> Plan:
    """Place every pair: ``fixed`` (a split column) decides splits where given; the ratios decide the rest;
    with ``folds`` K >= 2 the non-test units are dealt into K equal folds and fold 0 is val."""
    stratum_of = dict(stratum_of or {i: UNSTRATIFIED for i in ids})
    all_units = units(ids, stratum_of, group_of)
    if fixed is not None:
        split = {i: fixed[i] for i in ids}
    elif folds:
        rest = apportion(all_units, {"rest": ratios[0] + ratios[1], "test": ratios[2]}, seed, need=("rest",))
        split = {m: ("test" if rest[u.name] == "test" else "train") for u in all_units for m in u.members}
    else:
        placed = apportion(all_units, dict(zip(SPLITS, ratios)), seed, need=("train", "val") if ratios[1] > 0 else ("train",))
        split = {m: placed[u.name] for u in all_units for m in u.members}
    fold: dict[str, int] = {}
    if folds:
        fold = _folds(all_units, split, folds, seed)
        split = {i: split[i] if i not in fold else ("val" if fold[i] == 0 else "train") for i in ids}
    return Plan(split, fold, stratum_of, {i: g for i, g in (group_of or {}).items() if g})


def _folds(all_units: list[Unit], split: Mapping[str, str], k: int, seed: int) -> dict[str, int]:
    """Pair id -> fold for every non-test unit, dealt like a split into ``k`` equal shares."""
    pool = [u for u in all_units if split[u.members[0]] != "test"]
    if len(pool) < k:
        raise ConfigError(f"ingest.folds: {k} folds need at least {k} non-test images (or groups); found {len(pool)}")
    buckets = [f"fold-{f}" for f in range(k)]
    dealt = apportion(pool, {b: 1 / k for b in buckets}, seed, need=tuple(buckets))
    return {m: buckets.index(dealt[u.name]) for u in pool for m in u.members}


def counts_by_stratum(plan_: Plan, kept: list[str]) -> dict[str, dict[str, int]]:
    """Stratum -> images per split, over the pairs ``kept`` (the valid ones)."""
    out: dict[str, dict[str, int]] = {}
    for pair_id in kept:
        row = out.setdefault(plan_.stratum.get(pair_id, UNSTRATIFIED), dict.fromkeys(SPLITS, 0))
        row[plan_.split[pair_id]] += 1
    return dict(sorted(out.items()))
