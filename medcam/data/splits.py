"""Deterministic train/validation/test splits (plain and stratified by class)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

from medcam.errors import UserError

T = TypeVar("T")
SPLITS = ("train", "val", "test")


def _counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Item counts per split: rounded train and val sizes, the rest to test."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1")
    n_train = round(n * fractions[0])
    n_val = min(n - n_train, round(n * fractions[1]))
    return [n_train, n_val, n - n_train - n_val]


def random_split(items: Sequence[T], fractions: Sequence[float], seed: int) -> dict[str, list[T]]:
    """Shuffle ``items`` with ``seed`` and cut them into train/val/test by ``fractions``."""
    order = np.random.default_rng(seed).permutation(len(items))
    counts = _counts(len(items), fractions)
    out, start = {}, 0
    for name, count in zip(SPLITS, counts, strict=True):
        out[name] = [items[int(i)] for i in order[start : start + count]]
        start += count
    return out


def stratified_split(
    items: Sequence[T], classes: Sequence[Hashable], fractions: Sequence[float], seed: int
) -> dict[str, list[T]]:
    """Split every class separately (same fractions, same seed) so each split keeps the class balance.

    Within a class, items keep their given order before shuffling, so the split depends
    only on the file names, not on the file system's listing order.
    """
    if len(items) != len(classes):
        raise UserError(f"{len(items)} items but {len(classes)} class labels")
    rng = np.random.default_rng(seed)
    out: dict[str, list[T]] = {name: [] for name in SPLITS}
    for cls in sorted(set(classes), key=str):
        members = [item for item, c in zip(items, classes, strict=True) if c == cls]
        order = rng.permutation(len(members))
        start = 0
        for name, count in zip(SPLITS, _counts(len(members), fractions), strict=True):
            out[name].extend(members[int(i)] for i in order[start : start + count])
            start += count
    return out
