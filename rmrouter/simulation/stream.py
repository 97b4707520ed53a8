"""The simulated online stream: held-out labelled pairs, routed in batches, their sides in a coin-flip order.

A stream is built from behaviour records the offline prior never trained on. Each pass over them is a fresh
permutation, and passes repeat until the stream has the number of pairs asked for, so a stream longer than the
held-out set routes each pair several times (the report says how many). The order and the coin flips depend on the
stream's seed alone, so every router run on one seed sees exactly the same batches: their outcomes pair row by row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rmrouter.data.behaviour import BehaviourRecord
from rmrouter.online.pairs import coin_flip_scores, coin_flip_sides
from rmrouter.routers.base import PairBatch
from rmrouter.routers.judges import RecordedJudge


@dataclass(frozen=True)
class StreamBatch:
    """One routed batch of the stream.

    Attributes:
        step: The batch's index in the stream.
        rows: `[B]` long, each pair's record index in the stream's records.
        pairs: The unordered pairs the router sees.
        judge: The recorded scores of `pairs`, oriented as `first` / `second`.
        truth: `[B]` +1 where `first` is the labelled chosen response, -1 where it is the rejected one.
    """

    step: int
    rows: Tensor
    pairs: PairBatch
    judge: RecordedJudge
    truth: Tensor


class PairStream:
    """Labelled pairs and every RM's recorded scores of both sides, served as a seeded stream of batches.

    Args:
        records: The held-out behaviour records.
        rm_names: The pool's RMs, in pool order (each record must have scores for them).
    """

    def __init__(self, records: Sequence[BehaviourRecord], rm_names: Sequence[str]) -> None:
        if not records:
            raise ValueError("a stream needs at least one behaviour record")
        missing = sorted({name for record in records for name in rm_names if name not in record.scores})
        if missing:
            raise ValueError(f"the behaviour records have no scores of RMs {missing}; pick RMs the file was scored by")
        self.records = list(records)
        self.rm_names = list(rm_names)
        rows = [[record.scores[name] for name in self.rm_names] for record in self.records]
        self.scores = torch.tensor(rows, dtype=torch.float64)  # [M, N, 2]: (chosen, rejected)
        self.eligible = ~self.scores.isnan().any(dim=-1)
        self.right = self.eligible & (self.scores[..., 0] > self.scores[..., 1])
        self.domains = [record.pair.domain for record in self.records]
        self.sources = [record.pair.source for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def order(self, num_pairs: int, seed: int) -> Tensor:
        """`[num_pairs]` record indices: whole reshuffled passes, the last one cut."""
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be positive, got {num_pairs}")
        generator = torch.Generator().manual_seed(seed)
        passes = math.ceil(num_pairs / len(self))
        return torch.cat([torch.randperm(len(self), generator=generator) for _ in range(passes)])[:num_pairs]

    def batches(self, num_pairs: int, batch_size: int, seed: int) -> Iterator[StreamBatch]:
        """The stream's batches: `order(num_pairs, seed)` cut into batches, each side order a seeded coin flip."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        order = self.order(num_pairs, seed)
        flips = torch.rand(num_pairs, generator=torch.Generator().manual_seed(seed + 7_919)) < 0.5
        for step, start in enumerate(range(0, num_pairs, batch_size)):
            rows, swapped = order[start : start + batch_size], flips[start : start + batch_size]
            yield self.batch(step, rows, swapped)

    def batch(self, step: int, rows: Tensor, swapped: Tensor) -> StreamBatch:
        """The pairs `rows`, with `first` the rejected response where `swapped`."""
        records = [self.records[int(r)] for r in rows]
        chosen = [record.pair.chosen for record in records]
        rejected = [record.pair.rejected for record in records]
        first, second, truth = coin_flip_sides(chosen, rejected, swapped.tolist())
        pairs = PairBatch(
            prompts=[record.pair.prompt for record in records],
            first=first,
            second=second,
            references=[record.pair.reference for record in records],
            domains=[self.domains[int(r)] for r in rows],
            sources=[self.sources[int(r)] for r in rows],
        )
        oriented = coin_flip_scores(self.scores[rows], swapped).float()
        return StreamBatch(step, rows, pairs, RecordedJudge(oriented), truth)
