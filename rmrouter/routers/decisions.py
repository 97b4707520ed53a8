"""How routers decide, as pure functions of tensors: the best eligible RM, LASER's LinUCB over RMs, UWO ensemble
scores and margins, and the majority vote. No Trainer here; the routers in `bayesian.py`, `baseline_routers.py` and
`task_bayesian.py` and the offline routers' metrics call these."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from rmrouter.routers.posterior import GaussianPosteriors


def best_eligible(scores: Tensor, eligible: Tensor) -> Tensor:
    """`[B]` long: per row, the column of the highest score among the eligible ones (the routed RM); with no eligible
    column, column 0, whose RM then yields no label."""
    return scores.masked_fill(~eligible, float("-inf")).argmax(dim=1)


def majority_vote_credit(margins: Tensor) -> Tensor:
    """Per row: 1 if most voting RMs prefer `chosen`, 0 if most prefer `rejected`, 0.5 on a tie.

    The tensor form of `rmrouter.behaviour.table.majority_credit`: abstentions (NaN) and zero margins cast no vote.

    Args:
        margins: `[B, N]` margins `score(chosen) - score(rejected)`, NaN where the RM abstained.
    """
    votes = torch.nan_to_num(torch.sign(margins), nan=0.0).sum(dim=1)
    return (torch.sign(votes) + 1) / 2


class LinUCB:
    """LASER's router: LinUCB with one arm per RM and ONE pull per batch, context `x` the batch's mean embedding.

    Arm `n` keeps `A_n = I + sum x x^T` and `b_n = sum r x`; `UCB_n = x^T theta_n + alpha sqrt(x^T A_n^-1 x)` with
    `theta_n = A_n^-1 b_n`. That is exactly a Gaussian posterior with `Lambda = A`, prior mean 0, `lambda0 = 1` and
    `sigma2 = 1`, so the arms are a `GaussianPosteriors` (Cholesky solves, all-or-nothing updates, checkpointable
    state) and UCB is its score mean plus `alpha` score standard deviations.

    Args:
        num_arms: Number of RMs.
        dim: Context dimension `d`.
        alpha: Exploration weight (LASER: 0.1).
    """

    def __init__(self, num_arms: int, dim: int, alpha: float) -> None:
        if num_arms < 1 or dim < 1:
            raise ValueError(f"need at least one arm and one dimension, got num_arms={num_arms}, dim={dim}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a finite non-negative exploration weight, got {alpha!r}")
        self.alpha = float(alpha)
        self.arms = GaussianPosteriors.prior(torch.zeros(num_arms, dim), lambda0=1.0, sigma2=1.0)

    def ucb(self, x: Tensor) -> Tensor:
        """`[N]` upper confidence bounds of every arm for context `x [d]`."""
        mean, var = self.arms.score_moments(self._check_x(x).unsqueeze(0))
        return (mean + self.alpha * var.sqrt()).squeeze(0)

    def select(self, x: Tensor) -> int:
        """The arm with the highest UCB for context `x [d]`; exact ties go to the lowest index (`argmax` takes the
        first maximum), so untouched arms, all equal, are tried in index order."""
        return int(self.ucb(x).argmax())

    def update(self, arm: int, x: Tensor, reward: float) -> None:
        """`A_arm += x x^T`, `b_arm += reward x`; invalid input raises `ValueError` and changes nothing."""
        if isinstance(arm, bool) or not isinstance(arm, int) or not 0 <= arm < self.arms.num_rms:
            raise ValueError(f"arm must be an int in [0, {self.arms.num_rms}), got {arm!r}")
        index = torch.tensor([arm])
        self.arms.update(index, self._check_x(x).unsqueeze(0), torch.tensor([float(reward)]))

    def state_dict(self) -> dict[str, Any]:
        """`A` as `precision`, `b` as `vector` (and the fixed `sigma2 = 1`); `alpha` is configuration, not state."""
        return self.arms.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.arms.load_state_dict(state)

    def _check_x(self, x: Tensor) -> Tensor:
        if x.ndim != 1:
            raise ValueError(f"the context must be one vector [d], got shape {list(x.shape)}")
        return x


def uwo_scores(scores: Tensor, coeff: float) -> Tensor:
    """UWO (Coste et al. 2023): per row, the mean across RMs minus `coeff` times their variance, on a common scale.

    RMs' raw scores have unrelated offsets and scales, so each RM's column is first z-scored over the batch (its
    mean and population standard deviation over the rows it scored); a column with no spread there (one score, or all
    equal) carries no ranking information within the batch and becomes 0 on its scored rows. The mean and population
    variance across RMs then ignore abstentions (NaN), so a row scored by one RM gets that RM's z-score; a row where
    every RM abstains is NaN. The batch should be the responses being compared (e.g. the k samples of a prompt, or all
    of a step's samples), since z-scores are relative to it.

    Args:
        scores: `[B, N]` RM scores, NaN where an RM abstained.
        coeff: Weight of the variance penalty (Coste et al.: 0.1 for PPO, 0.5 for best-of-n).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be [B, N], got shape {list(scores.shape)}")
    scores = scores.detach().to(torch.float64)
    voted = ~scores.isnan()
    count_per_rm = voted.sum(dim=0)
    column_mean = scores.nansum(dim=0) / count_per_rm.clamp_min(1)
    centred = torch.where(voted, scores - column_mean, 0.0)
    column_std = (centred.square().sum(dim=0) / count_per_rm.clamp_min(1)).sqrt()
    z = torch.where(column_std > 0, centred / column_std.clamp_min(1e-300), 0.0)
    count_per_row = voted.sum(dim=1)
    row_mean = z.sum(dim=1) / count_per_row
    row_var = torch.where(voted, z - row_mean.unsqueeze(1), 0.0).square().sum(dim=1) / count_per_row
    return row_mean - coeff * row_var


def majority_vote(margins: Tensor, generator: torch.Generator) -> Tensor:
    """`LongTensor[B]`: +1 where most voting RMs prefer `chosen`, -1 where most prefer `rejected`, 0 where none votes.

    Votes are counted by `rmrouter.losses.majority_vote_credit` (NaN abstentions and zero margins cast no vote); a
    split vote is a fair coin from `generator`. A row where no RM votes (every RM tied or abstained) gets no label, as
    a tie never becomes a training pair. One coin is drawn per row whatever the votes, so the generator advances by
    the same amount for every batch of a given size.

    Args:
        margins: `[B, N]` margins `score(chosen) - score(rejected)`, NaN where the RM abstained.
        generator: Source of the tie-breaking coins.
    """
    if margins.ndim != 2:
        raise ValueError(f"margins must be [B, N], got shape {list(margins.shape)}")
    credit = majority_vote_credit(margins.detach())
    coins = torch.randint(0, 2, (margins.shape[0],), generator=generator, device=generator.device)
    coins = coins.to(margins.device) * 2 - 1
    voters = (torch.nan_to_num(margins.detach(), nan=0.0) != 0).sum(dim=1)
    labels = torch.where(credit == 0.5, coins, (2 * credit - 1).long())
    return torch.where(voters > 0, labels, torch.zeros_like(labels))


def uwo_pair_margins(scores: Tensor, coeff: float) -> Tensor:
    """`[P]` UWO margins `uwo(first) - uwo(second)`, each response's UWO reward taken over the batch's `2P` responses.

    UWO (Coste et al. 2023) rewards each response by the mean minus `coeff` times the variance of the RMs' scores on a
    common scale (`uwo_scores`: each RM standardised over the batch's responses), and a pair
    is ordered by its two responses' rewards. Every pair gets a label unless every RM abstained on it or the two
    rewards tie. A pair every RM abstained on is NaN.

    Args:
        scores: `[P, N, 2]` RM `n`'s scores of pair `i`'s `first` and `second`, NaN where it abstained.
        coeff: Weight of the variance penalty.
    """
    if scores.ndim != 3 or scores.shape[2] != 2:
        raise ValueError(f"scores must be [P, N, 2], got shape {list(scores.shape)}")
    pairs = scores.shape[0]
    responses = torch.cat([scores[:, :, 0], scores[:, :, 1]])  # [2P, N]: every first, then every second
    rewards = uwo_scores(responses, coeff)
    return rewards[:pairs] - rewards[pairs:]
