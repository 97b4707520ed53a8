"""Losses and pair metrics as plain functions of score tensors: no Trainer, no modules."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check_pair_scores(chosen_scores: Tensor, rejected_scores: Tensor) -> None:
    if chosen_scores.shape != rejected_scores.shape:
        raise ValueError(
            f"chosen and rejected scores must have one shape, got {tuple(chosen_scores.shape)} and "
            f"{tuple(rejected_scores.shape)}"
        )
    if chosen_scores.numel() == 0:
        raise ValueError("got no pairs: the loss and accuracy of an empty batch are undefined")


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """The Bradley-Terry negative log-likelihood `-mean log sigmoid(chosen - rejected)` over pairs.

    `logsigmoid` keeps it finite and exact for large margins of either sign (a naive `log(sigmoid(m))` gives
    `-inf` once `sigmoid(m)` underflows to 0).
    """
    _check_pair_scores(chosen_scores, rejected_scores)
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def pair_accuracy(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """The share of pairs whose chosen score is higher; an exact tie counts 1/2 (a coin flip, not a win)."""
    _check_pair_scores(chosen_scores, rejected_scores)
    wins = (chosen_scores > rejected_scores).float()
    ties = (chosen_scores == rejected_scores).float()
    return (wins + 0.5 * ties).mean()


def disagreement_pairs(agree: Tensor, eligible: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """All `(i, n, n')` with RM `n` right and RM `n'` wrong on row `i`, both able to judge it.

    Args:
        agree: `[B, N]`, 1.0 where RM `n` ranks pair `i` as its label does, 0.0 where it does not.
        eligible: `[B, N]` bool, False where RM `n` cannot judge pair `i` (it abstained): such an RM is neither right
            nor wrong there, so it is in no pair of that row. None: every RM judged every row.

    Returns:
        `(rows, better, worse)`, three long tensors of one length, in lexicographic order of `(i, n, n')`.
    """
    if agree.dim() != 2:
        raise ValueError(f"agree must be [batch, rms], got shape {tuple(agree.shape)}")
    right, wrong = agree == 1, agree == 0
    if eligible is not None:
        if eligible.shape != agree.shape:
            raise ValueError(f"eligible {tuple(eligible.shape)} must have agree's shape {tuple(agree.shape)}")
        right, wrong = right & eligible, wrong & eligible
    return (right.unsqueeze(2) & wrong.unsqueeze(1)).nonzero(as_tuple=True)


def router_bt_loss(scores: Tensor, agree: Tensor, eligible: Tensor | None = None) -> Tensor:
    """The router's Bradley-Terry loss `-mean log sigmoid(s[i, n] - s[i, n'])` over the disagreement pairs of `agree`.

    A batch where every row's RMs all agree (all right or all wrong) has no pairs, and its loss is undefined; it
    returns `scores.sum() * 0` then: a finite zero still connected to every parameter behind `scores`, so the step
    contributes nothing, a mean over steps stays finite, and under DDP every rank still reduces a gradient (zeros)
    for every parameter, as an empty loss without a graph would leave some ranks waiting.

    Args:
        scores: `[B, N]` router logits, one per row and RM.
        agree: `[B, N]`, 1.0 where the RM is right on the row, 0.0 where it is wrong.
        eligible: `[B, N]` bool, False where the RM cannot judge the row (see `disagreement_pairs`); None: all can.
    """
    if scores.shape != agree.shape:
        raise ValueError(f"scores and agree must have one shape, got {tuple(scores.shape)} and {tuple(agree.shape)}")
    rows, better, worse = disagreement_pairs(agree, eligible)
    if rows.numel() == 0:
        return scores.sum() * 0
    # index_select, not scores[rows, better]: a score is in several pairs, and the gradient of advanced indexing adds
    # its parts with atomic adds on the CPU, in an order that changes from run to run; index_select's adds in order.
    flat, width = scores.reshape(-1), scores.shape[1]
    margin = flat.index_select(0, rows * width + better) - flat.index_select(0, rows * width + worse)
    return -F.logsigmoid(margin).mean()


def masked_bce_with_logits(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Binary cross-entropy averaged over the entries where `mask` is True; a finite zero with a graph when none is."""
    if not (logits.shape == targets.shape == mask.shape):
        raise ValueError(f"logits {tuple(logits.shape)}, targets and mask {tuple(mask.shape)} must have one shape")
    weight = mask.to(logits.dtype)
    total = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="sum")
    return total / weight.sum().clamp_min(1.0)
