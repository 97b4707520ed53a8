"""Putting the offline prior on the online reward's scale: the factor `c` in `mu0 = c * E_bt`, fitted on held-out rows.

The offline BT head scores RM `n` on pair `h` as `s = h . E_bt[n]`, a cosine in `[-1, 1]` whose gaps between RMs are
tenths; the online router's centred reward for routing a pair to an RM is `+1` when its label is right and `-1` when
it is wrong (the oracle's reward; a DPO loss's reward has that sign on average). Scaling the prior means by the
least-squares `c` of `2 * right - 1 ~ c * s`, over the (pair, RM) cells where the RM could judge the pair, makes the
prior's scores predictions of that reward, so the first online updates refine them instead of dragging every chosen
RM toward the reward's mean. Fit it on rows the offline router did not train on (its validation split).
"""

from __future__ import annotations

from torch import Tensor


def fit_prior_scale(scores: Tensor, right: Tensor, eligible: Tensor) -> float:
    """`c = max(sum(s y) / sum(s^2), 0)` with `y = 2 * right - 1`, over the eligible cells.

    Clipped at 0: offline scores that do not predict which RM is right carry no prior information, and `c = 0` starts
    the posteriors at 0, the no-prior ablation.

    Args:
        scores: `[P, N]` offline scores `h_p . E_bt[n]`.
        right: `[P, N]` bool, RM `n`'s label of pair `p` is right.
        eligible: `[P, N]` bool, RM `n` could judge pair `p`.
    """
    if not (scores.shape == right.shape == eligible.shape) or scores.ndim != 2:
        raise ValueError(
            f"scores, right and eligible must share one [P, N] shape, got {list(scores.shape)}, "
            f"{list(right.shape)} and {list(eligible.shape)}"
        )
    s = scores.detach().double()[eligible]
    y = 2.0 * right[eligible].double() - 1.0
    if s.numel() == 0 or float(s.square().sum()) == 0.0:
        raise ValueError("no eligible cell with a non-zero offline score: nothing to fit the prior's scale on")
    return max(float((s * y).sum() / s.square().sum()), 0.0)
