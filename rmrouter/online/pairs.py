"""Candidate pairs of one online DPO step, live (from sampled completions) or simulated (from behaviour batches).

Either way the result is a `Candidates`: the unordered `PairBatch` the router labels, which carries both sides'
texts, token ids and end state, and the judge the router asks. The module then trains on the routed labels,
identically in both modes.

Pairing rules (docs/concepts/method.md, "Pairs from k samples"): identical response texts never pair (DPO on `(y, y)`
has no gradient, and it would waste an RM call and a router update); random pairs are drawn from indices alone, before
any RM scores them, because the router picks the RM from the pair's content; a margin within the tie gap is no label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rmrouter.data.records import Message, PromptRecord, as_messages
from rmrouter.policy.generation import Completion
from rmrouter.routers.base import PairBatch, PairJudge
from rmrouter.routers.judges import ask_eligible

Pairing = Literal["random", "all", "best_vs_worst"]


@dataclass
class Candidates:
    """Pairs to route, with what training them needs.

    Attributes:
        pairs: The unordered pairs the router labels, with their token ids.
        groups: Per pair, the index of its prompt in the batch.
        indices: Per pair, the completion indices `(first, second)` within its prompt.
        judge: What the router asks for RM margins.
        truth: Simulated mode only: `[P]` +1 where `first` is the labelled chosen response, -1 where it is rejected.
    """

    pairs: PairBatch
    groups: list[int]
    indices: list[tuple[int, int]]
    judge: PairJudge
    truth: Tensor | None = None


class LiveJudge:
    """Wraps the pool's judge with the module's pairing rules: the missing-EOS penalty and the tie gap.

    As TRL's `missing_eos_penalty`, a side cut at the length limit (`PairBatch.first_ended` / `second_ended` false) has
    its score lowered by `penalty`, so the margin moves by the difference: without it an RM that likes long answers
    would teach the policy never to stop. A margin within `min_gap` becomes 0, which routers read as a tie (no label).

    Args:
        judge: The pool's judge.
        penalty: Score subtracted from a truncated response, >= 0.
        min_gap: Largest margin still counted as a tie, >= 0.
        num_rms: RMs in the pool (the width of `eligible`).
    """

    def __init__(self, judge: PairJudge, penalty: float, min_gap: float, num_rms: int) -> None:
        self.judge, self.penalty, self.min_gap, self.num_rms = judge, penalty, min_gap, num_rms

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        margins = self.judge.margins(rm_index, pairs).detach().float().cpu()
        cut = self._truncated(pairs)
        margins = margins - self.penalty * (cut[:, 0] - cut[:, 1])
        return torch.where(margins.abs() <= self.min_gap, torch.zeros_like(margins), margins)

    def scores(self, rm_index: int, pairs: PairBatch) -> Tensor:
        """`[P, 2]` each side's score, a truncated side's lowered by the penalty, for score-level routers (UWO). The
        tie gap is a margin's and is left to the router."""
        scores = getattr(self.judge, "scores", None)
        if scores is None:
            raise ValueError(
                f"{type(self.judge).__name__} gives margins only: a score-level router (UWO) needs each response's "
                "score"
            )
        return scores(rm_index, pairs).detach().float().cpu() - self.penalty * self._truncated(pairs)

    @staticmethod
    def _truncated(pairs: PairBatch) -> Tensor:
        """`[P, 2]` 1.0 where that side did not end with EOS."""
        if pairs.first_ended is None or pairs.second_ended is None:
            raise ValueError("live pairs must say whether each side ended with EOS (PairBatch.first_ended)")
        ended = torch.tensor([pairs.first_ended, pairs.second_ended], dtype=torch.bool).T.reshape(len(pairs), 2)
        return (~ended).float()

    def eligible(self, pairs: PairBatch) -> Tensor:
        return ask_eligible(self.judge, pairs, self.num_rms)


def candidate_pairs(responses: Sequence[str]) -> list[tuple[int, int]]:
    """Every unordered index pair `(i, j)`, `i < j`, of responses with different texts, in lexicographic order."""
    return [(i, j) for i in range(len(responses)) for j in range(i + 1, len(responses)) if responses[i] != responses[j]]


def random_pairs(responses: Sequence[str], num_pairs: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Up to `num_pairs` distinct index pairs of distinct texts, drawn uniformly without replacement.

    Drawn before any scoring; tied pairs drop out once routed, so a prompt can end with fewer trained pairs than
    asked (the authors' code: `k = 6` responses, 4 pairs). When fewer than `num_pairs` candidates exist (duplicate
    texts, small `k`), all of them are returned, shuffled. Only `generator` is consumed, never the global RNG.

    Args:
        responses: The `k` response texts of one prompt.
        num_pairs: Most pairs to return, >= 0.
        generator: A CPU `torch.Generator`, seeded by the caller (e.g. from seed, rank and step).

    Returns:
        Pairs `(i, j)` with `i < j` in draw order; no pair appears twice.
    """
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    candidates = candidate_pairs(responses)
    if num_pairs == 0 or not candidates:
        return []
    order = torch.randperm(len(candidates), generator=generator)[:num_pairs]
    return [candidates[int(index)] for index in order]


def coin_flip_sides(chosen: Sequence, rejected: Sequence, swapped: Sequence[bool]) -> tuple[list, list, Tensor]:
    """`(first, second, truth)`: each labelled pair's sides in a drawn order, so a router never sees which side was
    chosen; `first` is the rejected side where `swapped`, and `truth` (`[P]`) is -1 there, +1 elsewhere."""
    first = [r if s else c for c, r, s in zip(chosen, rejected, swapped, strict=True)]
    second = [c if s else r for c, r, s in zip(chosen, rejected, swapped, strict=True)]
    return first, second, torch.tensor([-1.0 if s else 1.0 for s in swapped])


def coin_flip_scores(scores: Tensor, swapped: Tensor) -> Tensor:
    """Recorded `[P, N, 2]` scores of `(chosen, rejected)` as scores of `(first, second)` of `coin_flip_sides`."""
    return torch.where(swapped[:, None, None], scores.flip(-1), scores)


def index_pairs(texts: Sequence[str], pairing: Pairing, pairs_per_prompt: int, generator: torch.Generator):
    """Index pairs of one prompt's completions; empty completions and identical texts never pair.

    `random` draws `pairs_per_prompt` of them; `all` and `best_vs_worst` take every one (best-vs-worst picks among
    them after routing, see `best_vs_worst_rows`).
    """
    usable = [i for i, text in enumerate(texts) if text.strip()]
    kept = [texts[i] for i in usable]
    local = random_pairs(kept, pairs_per_prompt, generator) if pairing == "random" else candidate_pairs(kept)
    return [(usable[i], usable[j]) for i, j in local]


# The `PairBatch` fields of a live pair, in the order `live_candidates` fills them.
LIVE_FIELDS = (
    "prompts", "first", "second", "references", "domains",
    "prompt_ids", "first_ids", "second_ids", "first_ended", "second_ended",
)  # fmt: skip


def live_candidates(
    records: list[PromptRecord],
    prompts: list[list[int]],
    completions: list[list[Completion]],
    pairing: Pairing,
    pairs_per_prompt: int,
    generator: torch.Generator,
    judge: PairJudge,
) -> Candidates:
    """The candidate pairs of a batch of prompts and their `k` completions each."""
    fields: dict[str, list] = {name: [] for name in LIVE_FIELDS}
    groups, indices = [], []
    for g, (record, ids, samples) in enumerate(zip(records, prompts, completions, strict=True)):
        for i, j in index_pairs([s.text for s in samples], pairing, pairs_per_prompt, generator):
            first, second = samples[i], samples[j]
            row = (record.prompt, first.text, second.text, record.reference, record.domain, ids, first.token_ids,
                   second.token_ids, first.has_eos, second.has_eos)  # fmt: skip
            for name, value in zip(LIVE_FIELDS, row, strict=True):
                fields[name].append(value)
            groups.append(g)
            indices.append((i, j))
    return Candidates(PairBatch(**fields), groups, indices, judge)


def simulated_candidates(
    batch: dict,
    generator: torch.Generator,
    encode_prompt: Callable[[list[Message]], list[int]],
    encode_response: Callable[[str], list[int]],
    make_judge: Callable[[Tensor], PairJudge],
) -> Candidates:
    """Labelled pairs with each side order drawn by coin flip, so the router never sees which side was chosen.

    Args:
        batch: A `BehaviourDataModule` batch (`prompt`, `chosen`, `rejected`, `domain`, `source` lists; `scores`
            `[B, N, 2]` of chosen and rejected).
        generator: Draws the side order.
        encode_prompt: Chat messages to prompt ids.
        encode_response: Response text to response ids.
        make_judge: Recorded scores `[B, N, 2]` (of `first` and `second`) to a judge.
    """
    count = len(batch["chosen"])
    swapped = (torch.rand(count, generator=generator) < 0.5).tolist()
    first, second, truth = coin_flip_sides(batch["chosen"], batch["rejected"], swapped)
    scores = coin_flip_scores(batch["scores"].detach().float().cpu(), torch.tensor(swapped))
    prompts = [as_messages(p) for p in batch["prompt"]]
    pairs = PairBatch(
        prompts=prompts,
        first=first,
        second=second,
        references=[None] * count,
        domains=batch["domain"],
        sources=batch.get("source"),
        prompt_ids=[encode_prompt(p) for p in prompts],
        first_ids=[encode_response(text) for text in first],
        second_ids=[encode_response(text) for text in second],
    )
    return Candidates(pairs, groups=list(range(count)), indices=[(0, 1)] * count, judge=make_judge(scores), truth=truth)


def best_vs_worst_rows(groups: list[int], pairs: list[tuple[int, int]], preference: Tensor) -> list[int]:
    """Per prompt, the one labelled pair that best separates its completions by the routed labels.

    Each completion scores its wins minus losses over the prompt's labelled pairs (the routed RMs' judgements, one
    RM per pair, so no RM scores all `k` completions); the pair kept is the one whose winner minus loser score is
    largest, first in order on a tie.

    Args:
        groups: Per pair, its prompt.
        pairs: Per pair, the completion indices `(first, second)` within its prompt.
        preference: `[P]` routed labels (+1 first wins, -1 second wins, 0 none).
    """
    wins: dict[tuple[int, int], float] = {}
    for g, (i, j), p in zip(groups, pairs, preference.tolist(), strict=True):
        wins[g, i] = wins.get((g, i), 0.0) + p
        wins[g, j] = wins.get((g, j), 0.0) - p
    best: dict[int, tuple[float, int]] = {}
    for row, (g, (i, j), p) in enumerate(zip(groups, pairs, preference.tolist(), strict=True)):
        if p == 0:
            continue
        spread = (wins[g, i] - wins[g, j]) * p
        if g not in best or spread > best[g][0]:
            best[g] = (spread, row)
    return sorted(row for _, row in best.values())
