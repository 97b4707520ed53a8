"""Candidate pairs of an online step: pairing rules, the coin-flip side order, and the live judge's pairing rules."""

from __future__ import annotations

import pytest
import torch

from rmrouter.online.pairs import LiveJudge, candidate_pairs, coin_flip_scores, coin_flip_sides, random_pairs
from rmrouter.routers.base import PairBatch


def test_identical_texts_never_pair():
    assert candidate_pairs(["a", "b", "a", "c"]) == [(0, 1), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert candidate_pairs(["same"] * 4) == [] and candidate_pairs(["only"]) == [] and candidate_pairs([]) == []


def test_random_pairs_are_reproducible_distinct_and_never_repeat():
    responses = ["a", "b", "c", "a", "d", "e"]  # k = 6 with one duplicate: 14 candidates
    draw = [random_pairs(responses, 4, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert draw[0] == draw[1] and len(draw[0]) == 4 and len(set(draw[0])) == 4
    assert draw[0] != draw[2]  # a different seed draws differently (fixed seeds: not a flaky check)
    generator = torch.Generator().manual_seed(3)
    state = torch.get_rng_state()
    for _ in range(50):
        pairs = random_pairs(responses, 4, generator)
        assert len(set(pairs)) == 4 and all(i < j and responses[i] != responses[j] for i, j in pairs)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never consumed


def test_random_pairs_returns_every_candidate_when_there_are_few():
    pairs = random_pairs(["a", "b", "a", "c"], 10, torch.Generator().manual_seed(0))
    assert sorted(pairs) == candidate_pairs(["a", "b", "a", "c"])
    assert random_pairs(["x", "x"], 4, torch.Generator().manual_seed(0)) == []
    assert random_pairs(["a", "b"], 0, torch.Generator().manual_seed(0)) == []
    with pytest.raises(ValueError, match="num_pairs"):
        random_pairs(["a", "b"], -1, torch.Generator())


def test_coin_flip_puts_the_rejected_side_first_where_swapped_and_says_so_in_truth():
    first, second, truth = coin_flip_sides(["c0", "c1", "c2"], ["r0", "r1", "r2"], [False, True, False])
    assert first == ["c0", "r1", "c2"] and second == ["r0", "c1", "r2"]
    assert truth.tolist() == [1.0, -1.0, 1.0]
    scores = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]])  # [P, N=1, (chosen, rejected)]
    oriented = coin_flip_scores(scores, torch.tensor([False, True, False]))
    assert oriented[:, 0].tolist() == [[1.0, 2.0], [4.0, 3.0], [5.0, 6.0]]


class FixedJudge:
    def margins(self, rm_index, pairs):
        return torch.full((len(pairs),), 0.5)

    def scores(self, rm_index, pairs):
        return torch.tensor([[1.0, 0.5]] * len(pairs))


def live_pairs(first_ended: list[bool], second_ended: list[bool], texts: list[str]) -> PairBatch:
    count = len(first_ended)
    return PairBatch(
        prompts=[[{"role": "user", "content": "q"}]] * count, first=texts, second=["other"] * count,
        references=[None] * count, domains=["chat"] * count, first_ended=first_ended, second_ended=second_ended,
    )  # fmt: skip


def test_the_live_judge_penalises_the_side_cut_at_the_length_limit_by_its_own_end_state():
    judge = LiveJudge(FixedJudge(), penalty=2.0, min_gap=0.0, num_rms=1)
    # the same text ended in one pair and was cut in another: each side is judged by its own end state
    pairs = live_pairs([True, False, True], [True, True, False], ["same", "same", "x"])
    assert judge.margins(0, pairs).tolist() == [0.5, -1.5, 2.5]
    assert judge.scores(0, pairs).tolist() == [[1.0, 0.5], [-1.0, 0.5], [1.0, -1.5]]
    assert judge.margins(0, pairs.subset([1])).tolist() == [-1.5]  # a router's subset keeps the end states


def test_the_live_judge_turns_a_margin_within_the_tie_gap_into_no_label():
    judge = LiveJudge(FixedJudge(), penalty=0.0, min_gap=0.5, num_rms=1)
    assert judge.margins(0, live_pairs([True], [True], ["a"])).tolist() == [0.0]
    with pytest.raises(ValueError, match="ended"):
        LiveJudge(FixedJudge(), 0.0, 0.0, 1).margins(0, PairBatch([[]], ["a"], ["b"], [None], ["chat"]))
