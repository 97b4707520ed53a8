"""Streams whose RM reliabilities change along the way, built from real held-out pairs on stated principles.

The stationary stream (`PairStream`) replays the held-out pairs in reshuffled passes, so every RM is as reliable at the
first pair as at the last and a fixed lookup is optimal by construction. A drift stream fixes, for each seed, which
record comes at each position (`DriftSchedule.order`) and where an RM's judgement is reversed (`flipped`); each is
built from a rule stated before any router runs, never tuned so that one wins:

- `quality_drift`: AlpacaEval pairs in the order an improving policy would produce them: its answers against the
  reference first while they are weak (the reference against alpaca-7b), then strong (against claude-2), then pairs
  of two models' answers, whose quality is close.
- `task_mix_drift`: the share of each kind of pair moves: math-heavy first, chat-heavy after.
- `rm_degradation`: the stationary mix, with one RM's judgement reversed at a fixed rate from a change point on, as
  when an RM is swapped for a worse checkpoint or the policy learns to exploit it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rmrouter.data.behaviour import BehaviourRecord
from rmrouter.online.pairs import coin_flip_scores
from rmrouter.routers.judges import RecordedJudge
from rmrouter.simulation.stream import PairStream, StreamBatch

CHAT, MATH, SAFETY = "chat", "math", "safety"


def kind_of(record: BehaviourRecord) -> str:
    """`math`, `safety` or `chat` (every other domain: AlpacaEval's instruction subsets)."""
    return record.pair.domain if record.pair.domain in (MATH, SAFETY) else CHAT


@dataclass(frozen=True)
class DriftSchedule:
    """What a drift stream serves at each position.

    Attributes:
        order: `[L]` long, the record at each position.
        flipped: `[L, N]` bool, RM `n`'s judgement reversed at that position (chosen and rejected scores swapped).
        phases: `(name, first position)` of each phase, in order; a router's recovery is measured from each start
            after the first.
    """

    order: Tensor
    flipped: Tensor
    phases: list[tuple[str, int]]

    def __post_init__(self) -> None:
        if self.order.ndim != 1 or self.flipped.shape[0] != len(self.order):
            raise ValueError(f"order [L] and flipped [L, N] must agree, got {list(self.order.shape)} and "
                             f"{list(self.flipped.shape)}")  # fmt: skip
        starts = [start for _, start in self.phases]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)) or starts[-1] >= len(self.order):
            raise ValueError(f"phases must start at 0 and at increasing positions inside the stream, got {self.phases}")


def cycled(indices: Sequence[int], length: int, generator: torch.Generator) -> Tensor:
    """`[length]` of `indices` in reshuffled passes, the last one cut (as `PairStream.order`)."""
    if not indices:
        raise ValueError("a phase needs at least one record")
    pool = torch.as_tensor(list(indices), dtype=torch.long)
    passes = -(-length // len(pool))
    return torch.cat([pool[torch.randperm(len(pool), generator=generator)] for _ in range(passes)])[:length]


def phased(groups: dict[str, list[int]], length: int, num_rms: int, seed: int) -> DriftSchedule:
    """Phases of `length` positions each, in the order of `groups`, each cycling through its own records."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([cycled(indices, length, generator) for indices in groups.values()])
    phases = [(name, i * length) for i, name in enumerate(groups)]
    return DriftSchedule(order, torch.zeros(len(order), num_rms, dtype=torch.bool), phases)


def quality_drift(records: Sequence[BehaviourRecord], num_rms: int, phase_length: int, seed: int) -> DriftSchedule:
    """AlpacaEval pairs: the reference against alpaca-7b, then against claude-2, then two models' answers."""
    groups: dict[str, list[int]] = {"reference vs alpaca-7b": [], "reference vs claude-2": [], "model vs model": []}
    for i, record in enumerate(records):
        source = record.pair.source
        if source == "alpaca_eval/alpaca-7b":
            groups["reference vs alpaca-7b"].append(i)
        elif source == "alpaca_eval/claude-2":
            groups["reference vs claude-2"].append(i)
        elif source.startswith("alpaca_eval/") and "-vs-" in source:
            groups["model vs model"].append(i)
    return phased(groups, phase_length, num_rms, seed)


def task_mix_drift(
    records: Sequence[BehaviourRecord], num_rms: int, phase_length: int, seed: int, heavy: float = 0.8
) -> DriftSchedule:
    """Two phases: a share `heavy` of math pairs, then of chat pairs; the rest split evenly between the other two
    kinds. Each position draws its kind from the phase's shares, then the next record of that kind (reshuffled
    passes per kind)."""
    by_kind: dict[str, list[int]] = {CHAT: [], MATH: [], SAFETY: []}
    for i, record in enumerate(records):
        by_kind[kind_of(record)].append(i)
    generator = torch.Generator().manual_seed(seed)
    queues = {kind: iter(cycled(indices, 2 * phase_length, generator).tolist()) for kind, indices in by_kind.items()}
    kinds = list(by_kind)
    order = []
    for focus in (MATH, CHAT):
        shares = torch.tensor([heavy if kind == focus else (1 - heavy) / 2 for kind in kinds])
        for draw in torch.multinomial(shares, phase_length, replacement=True, generator=generator).tolist():
            order.append(next(queues[kinds[draw]]))
    phases = [("math-heavy", 0), ("chat-heavy", phase_length)]
    return DriftSchedule(torch.tensor(order), torch.zeros(len(order), num_rms, dtype=torch.bool), phases)


def rm_degradation(
    records: Sequence[BehaviourRecord], num_rms: int, rm: int, length: int, change_at: int, flip_rate: float, seed: int
) -> DriftSchedule:
    """The stationary mix of every record (reshuffled passes); from `change_at` on, RM `rm`'s judgement is reversed
    on a seeded share `flip_rate` of the pairs (0.5 makes it a coin: right half the time whatever it was before)."""
    if not 0 < change_at < length:
        raise ValueError(f"change_at must lie inside the stream (0, {length}), got {change_at}")
    if not 0 <= flip_rate <= 1:
        raise ValueError(f"flip_rate must lie in [0, 1], got {flip_rate}")
    generator = torch.Generator().manual_seed(seed)
    order = cycled(range(len(records)), length, generator)
    flipped = torch.zeros(length, num_rms, dtype=torch.bool)
    flipped[change_at:, rm] = torch.rand(length - change_at, generator=generator) < flip_rate
    return DriftSchedule(order, flipped, [("before", 0), ("after", change_at)])


class DriftStream(PairStream):
    """A `PairStream` served by a schedule: `build(seed)` fixes each position's record and reversed judgements.

    Args:
        records: The held-out behaviour records.
        rm_names: The pool's RMs, in pool order.
        build: The schedule of a seed (e.g. `functools.partial(quality_drift, records, N, 800)`).
    """

    def __init__(
        self, records: Sequence[BehaviourRecord], rm_names: Sequence[str], build: Callable[[int], DriftSchedule]
    ) -> None:
        super().__init__(records, rm_names)
        self.build = build

    def schedule(self, seed: int) -> DriftSchedule:
        return self.build(seed)

    def order(self, num_pairs: int, seed: int) -> Tensor:
        order = self.schedule(seed).order
        if not 0 < num_pairs <= len(order):
            raise ValueError(f"this drift stream has {len(order)} positions, asked for {num_pairs}")
        return order[:num_pairs]

    def scores_at(self, schedule: DriftSchedule) -> Tensor:
        """`[L, N, 2]` each position's (chosen, rejected) scores, reversed where the schedule says."""
        scores = self.scores[schedule.order]
        return torch.where(schedule.flipped.unsqueeze(-1), scores.flip(-1), scores)

    def right_at(self, seed: int) -> tuple[Tensor, Tensor]:
        """`[L, N]` bool each RM right at each position, and `[L, N]` bool whether it could judge the pair."""
        scores = self.scores_at(self.schedule(seed))
        eligible = ~scores.isnan().any(dim=-1)
        return eligible & (scores[..., 0] > scores[..., 1]), eligible

    def batches(self, num_pairs: int, batch_size: int, seed: int) -> Iterator[StreamBatch]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        schedule = self.schedule(seed)
        order, scores = self.order(num_pairs, seed), self.scores_at(schedule)
        flips = torch.rand(num_pairs, generator=torch.Generator().manual_seed(seed + 7_919)) < 0.5
        for step, start in enumerate(range(0, num_pairs, batch_size)):
            positions = slice(start, start + batch_size)
            batch = self.batch(step, order[positions], flips[positions])
            oriented = coin_flip_scores(scores[positions], flips[positions]).float()
            yield StreamBatch(batch.step, batch.rows, batch.pairs, RecordedJudge(oriented), batch.truth)
