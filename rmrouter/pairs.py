"""Preference pairs from the `k` responses sampled for one prompt, as plain deterministic functions.

Rules shared by every function here (METHOD.md "Pair construction from k samples"):

- Identical response texts never pair: DPO on `(y, y)` has zero gradient and teaches nothing, and it would waste
  an RM call and a router update on a pair with no preference.
- A score that is not finite abstains (NaN is how an RM abstains; an infinite score has no usable margin) and
  never decides a pair.
- A pair whose scores are tied (a gap of at most `min_gap`) is not used.

Random pairs are drawn from indices alone, before any RM scores them, because the router picks one RM per pair from
the pair's content; `order_pair` then orders the pair by the routed RM's scores. Best-vs-worst needs every response
scored by one RM, so that RM is chosen before the pair exists (e.g. per prompt).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def candidate_pairs(responses: Sequence[str]) -> list[tuple[int, int]]:
    """Every unordered index pair `(i, j)`, `i < j`, of responses with different texts, in lexicographic order."""
    return [(i, j) for i in range(len(responses)) for j in range(i + 1, len(responses)) if responses[i] != responses[j]]


def best_vs_worst(scores: Tensor) -> tuple[int, int] | None:
    """`(best, worst)`: the indices of the highest and lowest finite score, or None when there is no preference.

    None when fewer than two scores are finite or all finite scores are equal. Equal best (or worst) scores go to the
    lowest index. A deterministic RM gives identical texts one score, so `best` and `worst` then differ in text;
    with a stochastic RM, deduplicate the texts before scoring.

    Args:
        scores: `[k]` one RM's scores of one prompt's responses, NaN where it abstained.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D [k], got shape {tuple(scores.shape)}")
    finite = scores.isfinite()
    if int(finite.sum()) < 2:
        return None
    # Abstentions are pushed out of reach of each argmax rather than removed, so indices stay the caller's.
    best = int(torch.where(finite, scores, float("-inf")).argmax())
    worst = int(torch.where(finite, scores, float("inf")).argmin())
    if scores[best] == scores[worst]:
        return None
    return best, worst


def random_pairs(responses: Sequence[str], num_pairs: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Up to `num_pairs` distinct index pairs of distinct texts, drawn uniformly without replacement.

    Drawn before any scoring: route each pair, score it with its RM, then `order_pair` it; tied pairs drop out
    there, so a prompt can end with fewer pairs than asked (the authors' code: `k = 6` responses, 4 pairs). When
    fewer than `num_pairs` candidates exist (duplicate texts, small `k`), all of them are returned, shuffled.
    Only `generator` is consumed, never the global RNG, so the same generator state gives the same pairs.

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


def order_pair(i: int, j: int, score_i: float, score_j: float, min_gap: float) -> tuple[int, int] | None:
    """`(chosen, rejected)` from two scores, or None when the scores do not separate the pair.

    None when either score is not finite (an abstention) or `|score_i - score_j| <= min_gap`, so `min_gap = 0`
    drops exact ties only.

    Args:
        i: Index of the first response.
        j: Index of the second response, different from `i`.
        score_i: The routed RM's score of response `i`.
        score_j: The routed RM's score of response `j`.
        min_gap: Largest gap still counted as a tie, >= 0; compare it with the scores on their own scale.
    """
    if i == j:
        raise ValueError(f"a pair needs two responses, got index {i} twice")
    if not min_gap >= 0:  # also refuses NaN
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    score_i, score_j = float(score_i), float(score_j)
    if not (math.isfinite(score_i) and math.isfinite(score_j)) or abs(score_i - score_j) <= min_gap:
        return None
    return (i, j) if score_i > score_j else (j, i)


def missing_eos_penalty(scores: Tensor, has_eos: Tensor, penalty: float) -> Tensor:
    """`scores` with `penalty` subtracted where the response did not end with EOS (it was cut at the length limit).

    As TRL's `missing_eos_penalty`: a truncated response is unfinished, and without the penalty an RM that likes
    long answers would teach the policy never to stop. Returns a new tensor; NaN (abstain) stays NaN.

    Args:
        scores: `[k]` (or any shape) scores of the responses.
        has_eos: Bool tensor of the shape of `scores`, true where the response ended with EOS.
        penalty: Amount subtracted, >= 0 (0 leaves the scores as they are).
    """
    if scores.shape != has_eos.shape:
        raise ValueError(
            f"scores and has_eos must have one shape, got {tuple(scores.shape)} and {tuple(has_eos.shape)}"
        )
    if not (math.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"penalty must be a finite number >= 0 (it is subtracted), got {penalty}")
    return torch.where(has_eos.bool(), scores, scores - penalty)
