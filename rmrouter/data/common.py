"""Small helpers the loaders share: stable ids, seeded choices, and how far a source may read."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import TypeVar

from rmrouter.data.sources import Source

T = TypeVar("T")


def stable_hash(*parts: str) -> str:
    """The first 12 hex digits of the SHA-1 of `parts` joined by NUL.

    Python's `hash()` is salted per process, so ids and seeds are built from this instead: the same text gives the
    same value on every run and machine.
    """
    return hashlib.sha1("\0".join(parts).encode("utf-8")).hexdigest()[:12]


def seeded_pick(candidates: Sequence[T], k: int | None, seed: str) -> list[T]:
    """Up to `k` of `candidates` (all when `k` is None), chosen by an RNG seeded with `seed`, in their original order.

    Seeding with a hash of the row (not a global seed) makes each row's choice independent of file order and of
    which other rows are present.
    """
    if k is None or k >= len(candidates):
        return list(candidates)
    # str seeds go through SHA-512 inside `random.seed`, so they are not affected by PYTHONHASHSEED.
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), k))
    return [candidates[i] for i in chosen]


def early_limit(source: Source) -> int | None:
    """How many records `read` may stop after: `limit` itself, unless a split is applied after reading."""
    return source.limit if source.split is None else None


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1 (or None for no cap), got {value}")
