"""Candidate pairs of one online DPO step, live (from sampled completions) or simulated (from behaviour batches).

Either way the result is a `Candidates`: the unordered `PairBatch` the router labels, the token ids of both sides
of every pair, and the judge the router asks. The module then trains on the routed labels, identically in both modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rmrouter.data.records import PromptRecord, as_messages
from rmrouter.modules.generation import Completion
from rmrouter.pairs import candidate_pairs, random_pairs
from rmrouter.routers.base import PairBatch, PairJudge
from rmrouter.routers.judges import ask_eligible

Pairing = Literal["random", "all", "best_vs_worst"]


@dataclass
class Candidates:
    """Pairs to route, with what training them needs.

    Attributes:
        pairs: The unordered pairs the router labels.
        prompt_ids: Per pair, the prompt's token ids.
        first_ids: Per pair, the token ids of `pairs.first`.
        second_ids: Per pair, the token ids of `pairs.second`.
        groups: Per pair, the index of its prompt in the batch.
        indices: Per pair, the completion indices `(first, second)` within its prompt.
        judge: What the router asks for RM margins.
        truth: Simulated mode only: `[P]` +1 where `first` is the labelled chosen response, -1 where it is rejected.
    """

    pairs: PairBatch
    prompt_ids: list[list[int]]
    first_ids: list[list[int]]
    second_ids: list[list[int]]
    groups: list[int]
    indices: list[tuple[int, int]]
    judge: PairJudge
    truth: Tensor | None = None


class LiveJudge:
    """Wraps the pool's judge with the module's pairing rules: the missing-EOS penalty and the tie gap.

    A truncated response's score is lowered by `penalty` (`rmrouter.pairs.missing_eos_penalty`), so the margin moves
    by the difference; a margin within `min_gap` becomes 0, which routers read as a tie (no label). Truncation is
    looked up by text, so subsets of the batch (`PairBatch.subset`) are judged the same way.

    Args:
        judge: The pool's judge.
        truncated: Texts of the responses that did not end with EOS.
        penalty: Score subtracted from a truncated response, >= 0.
        min_gap: Largest margin still counted as a tie, >= 0.
        num_rms: RMs in the pool (the width of `eligible`).
    """

    def __init__(self, judge: PairJudge, truncated: set[str], penalty: float, min_gap: float, num_rms: int) -> None:
        self.judge, self.truncated, self.penalty, self.min_gap = judge, truncated, penalty, min_gap
        self.num_rms = num_rms

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

    def _truncated(self, pairs: PairBatch) -> Tensor:
        """`[P, 2]` 1.0 where that side did not end with EOS."""
        rows = [[text in self.truncated for text in side] for side in (pairs.first, pairs.second)]
        return torch.tensor(rows, dtype=torch.float32).T.reshape(len(pairs), 2)

    def eligible(self, pairs: PairBatch) -> Tensor:
        return ask_eligible(self.judge, pairs, self.num_rms)


def index_pairs(texts: Sequence[str], pairing: Pairing, pairs_per_prompt: int, generator: torch.Generator):
    """Index pairs of one prompt's completions; empty completions and identical texts never pair.

    `random` draws `pairs_per_prompt` of them; `all` and `best_vs_worst` take every one (best-vs-worst picks among
    them after routing, see `best_vs_worst_rows`).
    """
    usable = [i for i, text in enumerate(texts) if text.strip()]
    kept = [texts[i] for i in usable]
    local = random_pairs(kept, pairs_per_prompt, generator) if pairing == "random" else candidate_pairs(kept)
    return [(usable[i], usable[j]) for i, j in local]


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
    fields: dict[str, list] = {name: [] for name in ("prompts", "first", "second", "references", "domains")}
    prompt_rows, first_ids, second_ids, groups, indices = [], [], [], [], []
    for g, (record, ids, samples) in enumerate(zip(records, prompts, completions, strict=True)):
        for i, j in index_pairs([s.text for s in samples], pairing, pairs_per_prompt, generator):
            fields["prompts"].append(record.prompt)
            fields["first"].append(samples[i].text)
            fields["second"].append(samples[j].text)
            fields["references"].append(record.reference)
            fields["domains"].append(record.domain)
            prompt_rows.append(ids)
            first_ids.append(samples[i].token_ids)
            second_ids.append(samples[j].token_ids)
            groups.append(g)
            indices.append((i, j))
    return Candidates(PairBatch(**fields), prompt_rows, first_ids, second_ids, groups, indices, judge)


def simulated_candidates(batch: dict, generator: torch.Generator, encode_prompt, encode_response, make_judge):
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
    first = [r if s else c for c, r, s in zip(batch["chosen"], batch["rejected"], swapped, strict=True)]
    second = [c if s else r for c, r, s in zip(batch["chosen"], batch["rejected"], swapped, strict=True)]
    truth = torch.tensor([-1.0 if s else 1.0 for s in swapped])
    recorded = batch["scores"].detach().float().cpu()  # [B, N, 2]: (chosen, rejected)
    scores = torch.where(torch.tensor(swapped)[:, None, None], recorded.flip(-1), recorded)  # (first, second)
    prompts = [as_messages(p) for p in batch["prompt"]]
    pairs = PairBatch(
        prompts=prompts,
        first=first,
        second=second,
        references=[None] * count,
        domains=batch["domain"],
        sources=batch.get("source"),
    )
    return Candidates(
        pairs=pairs,
        prompt_ids=[encode_prompt(p) for p in prompts],
        first_ids=[encode_response(text) for text in first],
        second_ids=[encode_response(text) for text in second],
        groups=list(range(count)),
        indices=[(0, 1)] * count,
        judge=make_judge(scores),
        truth=truth,
    )


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
