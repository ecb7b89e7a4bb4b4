"""Stratified, grouped and k-fold placement (unet_dist.data.splits): shares per stratum, groups kept whole."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from unet_dist.data.splits import SPLITS, Traits, counts_by_stratum, plan, size_class, strata

RATIOS = [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.2, 0.2)]


def _traits(rng: np.random.Generator, n: int) -> dict[str, Traits]:
    """A heterogeneous set: three size classes, gray and RGB, 8 and 16 bit, mostly sparse foreground."""
    return {f"p{i:04d}": Traits(int(rng.choice([64, 200, 520])), int(rng.choice([64, 200, 520])), int(rng.choice([1, 3])),
                                int(rng.choice([8, 16])), float(rng.random() ** 3)) for i in range(n)}


def _grouped(rng: np.random.Generator, n: int) -> tuple[dict[str, Traits], dict[str, str]]:
    """Groups of 1-3 images sharing their traits (a slide scanned at one size and depth, one density)."""
    traits, groups = {}, {}
    while len(traits) < n:
        g, size = len(groups), int(rng.integers(1, 4))
        side, channels, fg = int(rng.choice([64, 520])), int(rng.choice([1, 3])), float(rng.random() ** 3)
        for j in range(size):
            traits[f"g{g:03d}-{j}"] = Traits(side, side, channels, 8, fg)
            groups[f"g{g:03d}-{j}"] = f"slide{g}"
    return traits, groups


def _deviation(counts: dict[str, dict[str, int]], shares: dict[str, float]) -> float:
    return max(abs(row[sp] - share * sum(row.values())) for row in counts.values() for sp, share in shares.items())


@pytest.mark.parametrize("seed", range(6))
def test_every_split_holds_every_stratum_within_one_image_of_its_share(seed):
    rng = np.random.default_rng(seed)
    traits = _traits(rng, int(rng.integers(40, 400)))
    ratios = RATIOS[seed % 3]
    placed = plan(list(traits), ratios, seed, strata(traits))
    counts = counts_by_stratum(placed, list(traits))
    assert len(counts) > 10
    assert _deviation(counts, dict(zip(SPLITS, ratios))) < 1
    totals = Counter(placed.split.values())
    assert all(abs(totals[sp] - r * len(traits)) < 1.5 for sp, r in zip(SPLITS, ratios)), totals


@pytest.mark.parametrize("seed", range(4))
def test_groups_never_straddle_and_strata_stay_within_one_group_of_their_share(seed):
    rng = np.random.default_rng(100 + seed)
    traits, groups = _grouped(rng, 150)
    placed = plan(list(traits), RATIOS[1], seed, strata(traits), groups)
    members: dict[str, set[str]] = {}
    for pair_id, group in groups.items():
        members.setdefault(group, set()).add(placed.split[pair_id])
    assert all(len(splits) == 1 for splits in members.values())
    assert _deviation(counts_by_stratum(placed, list(traits)), dict(zip(SPLITS, RATIOS[1]))) <= 3  # the largest group
    assert all(Counter(placed.split.values())[sp] for sp in SPLITS)


@pytest.mark.parametrize("grouped", [False, True])
def test_folds_deal_the_non_test_pairs_in_proportion_and_fold_zero_is_val(grouped):
    rng = np.random.default_rng(7)
    traits, groups = _grouped(rng, 120) if grouped else (_traits(rng, 120), {})
    placed = plan(list(traits), (0.7, 0.15, 0.15), 3, strata(traits), groups, folds=4)
    test = {i for i, sp in placed.split.items() if sp == "test"}
    assert test and set(placed.fold) == set(traits) - test
    assert all(placed.split[i] == ("val" if f == 0 else "train") for i, f in placed.fold.items())
    assert all(placed.bucket(i) == f"fold-{f}" for i, f in placed.fold.items()) and all(placed.bucket(i) == "test" for i in test)
    per_fold: dict[str, dict[str, int]] = {}
    for i, f in placed.fold.items():
        per_fold.setdefault(placed.stratum[i], Counter())[f"fold-{f}"] += 1
    counts = {s: {f"fold-{k}": row[f"fold-{k}"] for k in range(4)} for s, row in per_fold.items()}
    assert _deviation(counts, {f"fold-{k}": 0.25 for k in range(4)}) < (3 if grouped else 1)
    if grouped:
        assert all(len({placed.fold.get(i) for i in traits if groups[i] == g}) == 1 for g in set(groups.values()))


def test_a_split_column_is_kept_and_only_its_non_test_pairs_are_folded():
    ids = [f"x{i}" for i in range(30)]
    fixed = {i: ("test" if n < 6 else "val" if n < 10 else "train") for n, i in enumerate(ids)}
    placed = plan(ids, (0.8, 0.1, 0.1), 0, fixed=fixed, folds=3)
    assert {i for i in ids if placed.split[i] == "test"} == {i for i in ids if fixed[i] == "test"}
    assert sorted(Counter(placed.fold.values()).values()) == [8, 8, 8]


def test_placement_does_not_depend_on_listing_order_and_the_seed_changes_it():
    traits = _traits(np.random.default_rng(3), 80)
    ids = list(traits)
    a = plan(ids, RATIOS[0], 1, strata(traits))
    assert plan(list(reversed(ids)), RATIOS[0], 1, strata(traits)).split == a.split
    assert plan(ids, RATIOS[0], 2, strata(traits)).split != a.split


def test_strata_labels_and_an_unreadable_pair_of_its_own():
    traits = {"a": Traits(512, 512, 1, 8, 0.0), "b": Traits(100, 300, 3, 16, 0.5), "c": Traits(40, 40, 1, 8, 0.9), "d": None}
    labels = strata(traits)
    assert labels == {"a": "512-1023px 1ch 8-bit fg-low", "b": "128-255px 3ch 16-bit fg-mid",
                      "c": "32-63px 1ch 8-bit fg-high", "d": "unreadable"}
    assert size_class(1, 1) == "1-1px"


def test_folds_need_as_many_units_as_folds():
    from unet_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="ingest.folds: 5 folds need at least 5"):
        plan([f"x{i}" for i in range(4)], (1.0, 0.0, 0.0), 0, folds=5)
