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
