"""The downstream metrics, as pure functions: GSM8K correctness, a judged win against the starting policy, and the
length-controlled win rate.

A win rate compares two answers to the same instruction: the trained policy's and the starting policy's. The judge
gives each a score; the policy wins (1), loses (0), or ties (1/2: the same text, or the same score). A judge that
likes long answers rewards a policy that only learned to write more, so beside the raw rate sits AlpacaEval 2's
length-controlled one (Dubois et al., 2024): the outcomes regressed on the length difference, read at a difference
of zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rmrouter.reward_models.gsm8k_verifier import final_number


def gsm8k_correct(response: str, reference: str) -> bool:
    """Whether the response's final number is the reference answer's (`#### n`); False when either has none."""
    expected = final_number(reference)
    return expected is not None and final_number(response) == expected


def win_outcome(policy_score: float, base_score: float, same_text: bool) -> float:
    """1 when the judge scores the policy's answer above the starting policy's, 0 below, 1/2 for the same text or
    the same score (a judge cannot prefer an answer to itself)."""
    if same_text or policy_score == base_score:
        return 0.5
    return 1.0 if policy_score > base_score else 0.0


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """`(mean, standard error of the mean)`; the SE is NaN below 2 values, the mean NaN for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def length_controlled_win_rate(
    outcomes: Sequence[float], length_differences: Sequence[float], l2: float = 1e-3, iterations: int = 50
) -> float:
    """The win rate with the length difference regressed out: AlpacaEval 2's length control, without its
    per-instruction terms.

    Fits `P(win) = sigmoid(a + b * tanh(d / sd(d)))` to the outcomes (0, 1/2 or 1: soft targets of the logistic
    loss) by Newton's method, `d` the policy's answer's length minus the starting policy's, and returns `sigmoid(a)`:
    the win rate the fit predicts for answers of equal length. `tanh` bounds the length term, as AlpacaEval's does, so
    a few very long answers do not dominate it. The small `l2` on both weights keeps the fit finite when every
    outcome is the same, and sets `b` to 0 when no length differs.

    Args:
        outcomes: Per instruction, the policy's outcome in [0, 1].
        length_differences: Per instruction, policy length minus starting-policy length (any unit).
        l2: Ridge strength on `a` and `b`.
        iterations: Newton steps (the loss is convex in two weights: a few dozen reach float64 precision).
    """
    if len(outcomes) != len(length_differences):
        raise ValueError(f"one length difference per outcome, got {len(outcomes)} and {len(length_differences)}")
    if not outcomes:
        return math.nan
    y = torch.tensor(outcomes, dtype=torch.float64)
    d = torch.tensor(length_differences, dtype=torch.float64)
    spread = float(d.std()) if len(d) > 1 else 0.0
    feature = torch.tanh(d / spread) if spread > 0 else torch.zeros_like(d)
    x = torch.stack([torch.ones_like(d), feature], dim=1)
    w = torch.zeros(2, dtype=torch.float64)
    ridge = l2 * len(y) * torch.eye(2, dtype=torch.float64)
    for _ in range(iterations):
        p = torch.sigmoid(x @ w)
        gradient = x.T @ (p - y) + ridge @ w
        hessian = (x.T * (p * (1 - p))) @ x + ridge
        w = w - torch.linalg.solve(hessian, gradient)
    return float(torch.sigmoid(w[0]))
