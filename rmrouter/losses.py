"""Losses and pair metrics as plain functions of score tensors: no Trainer, no modules."""

from __future__ import annotations

import torch
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


def disagreement_pairs(agree: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All `(i, n, n')` with `agree[i, n] == 1` and `agree[i, n'] == 0`: RM `n` right and RM `n'` wrong on row `i`.

    Args:
        agree: `[B, N]`, 1.0 where RM `n` ranks pair `i` as its label does, 0.0 where it does not.

    Returns:
        `(rows, better, worse)`, three long tensors of one length, in lexicographic order of `(i, n, n')`.
    """
    if agree.dim() != 2:
        raise ValueError(f"agree must be [batch, rms], got shape {tuple(agree.shape)}")
    right, wrong = agree == 1, agree == 0
    return (right.unsqueeze(2) & wrong.unsqueeze(1)).nonzero(as_tuple=True)


def router_bt_loss(scores: Tensor, agree: Tensor) -> Tensor:
    """The router's Bradley-Terry loss `-mean log sigmoid(s[i, n] - s[i, n'])` over the disagreement pairs of `agree`.

    A batch where every row's RMs all agree (all right or all wrong) has no pairs, and its loss is undefined; it
    returns `scores.sum() * 0` then: a finite zero still connected to every parameter behind `scores`, so the step
    contributes nothing, a mean over steps stays finite, and under DDP every rank still reduces a gradient (zeros)
    for every parameter, as an empty loss without a graph would leave some ranks waiting.

    Args:
        scores: `[B, N]` router logits, one per row and RM.
        agree: `[B, N]`, 1.0 where the RM is right on the row, 0.0 where it is wrong.
    """
    if scores.shape != agree.shape:
        raise ValueError(f"scores and agree must have one shape, got {tuple(scores.shape)} and {tuple(agree.shape)}")
    rows, better, worse = disagreement_pairs(agree)
    if rows.numel() == 0:
        return scores.sum() * 0
    return -F.logsigmoid(scores[rows, better] - scores[rows, worse]).mean()


def majority_vote_credit(margins: Tensor) -> Tensor:
    """Per row: 1 if most voting RMs prefer `chosen`, 0 if most prefer `rejected`, 0.5 on a tie.

    The tensor form of `rmrouter.behaviour.table.majority_credit`: abstentions (NaN) and zero margins cast no vote.

    Args:
        margins: `[B, N]` margins `score(chosen) - score(rejected)`, NaN where the RM abstained.
    """
    votes = torch.nan_to_num(torch.sign(margins), nan=0.0).sum(dim=1)
    return (torch.sign(votes) + 1) / 2
