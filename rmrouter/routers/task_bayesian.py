"""Online routing in the task space: Thompson sampling over per-RM rewards per task, with the task-aware offline
router's reliabilities as the prior (`TaskPrior`).

The paper's online router scores a pair by `h^T w_n` with `h` a 32-dimensional embedding whose directions mean nothing
on their own; its posteriors need thousands of rewards to move. Here a pair's features are its task distribution `q`
(`T` values: one-hot when the pair's label is a known task, else the prior's task head on the pair's text), so RM `n`'s
weights `w_n[t]` are simply its expected reward on task `t`. They start at the offline accuracies on the reward's
scale (`2 acc - 1` for centred rewards, `acc` for `[0, 1]` rewards: what an oracle reward, right or wrong, averages
to), and a pair of task `t` updates cell `(t, n)` alone: after `k` rewards of task `t` through RM `n` its mean is
`(lambda0 mu0 + sum r / sigma2) / (lambda0 + k / sigma2)`, so `lambda0 * sigma2` rewards weigh as much as the prior.

Everything else, the reward normalisation, the held warm-up rewards, eligibility and the no-online ablation (route by
the prior's expected accuracy `q acc[:, n]`, the offline router's own routing without its residual), is
`BayesianRouter`'s.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from rmrouter.routers.base import PairBatch, Router
from rmrouter.routers.bayesian import BayesianRouter, checked_forgetting, forgetting_anchor
from rmrouter.routers.cost import checked_cost_weight
from rmrouter.routers.embedding import LazyEmbedder
from rmrouter.routers.normalizer import HeldRewards, QuantileNormalizer
from rmrouter.routers.posterior import GaussianPosteriors
from rmrouter.routers.task_aware import UNKNOWN_TASK, task_indices, task_probabilities
from rmrouter.routers.task_prior import TaskPrior


def reward_scale_means(accuracies: Tensor, centred_rewards: bool) -> Tensor:
    """`[N, T]` prior means from `[T, N]` accuracies: the expected reward of a right-or-wrong signal on its scale."""
    means = accuracies.T.double()
    return 2 * means - 1 if centred_rewards else means


def prior_posteriors(
    means: Tensor, judged: Tensor, lambda0: float | Literal["evidence"], sigma2: float
) -> GaussianPosteriors:
    """Posteriors `N(means[n], diag(1 / lambda[n]))`: `lambda0` for every cell, or for `evidence` each cell's training
    judgements `judged [T, N]` over `sigma2` (at least one judgement each)."""
    if lambda0 != "evidence":
        return GaussianPosteriors.prior(means, float(lambda0), sigma2)
    precision = judged.T.double().clamp_min(1.0) / sigma2  # [N, T]
    return GaussianPosteriors(torch.diag_embed(precision), precision * means.double(), sigma2)


class TaskBayesianRouter(BayesianRouter):
    """Routes each pair to the RM with the highest Thompson score `q^T w_n` among the eligible RMs, `q` the pair's task
    distribution, and learns each RM's reward per task from the pairs' DPO losses (see the module docstring).

    Args:
        rm_names: The pool's RM names, in pool (and prior) order; None takes the pool's (`Router`).
        prior_path: The task-aware offline router's `TaskPrior` file.
        sigma2: Observation noise variance of the normalised rewards.
        lambda0: Prior precision of each cell: a number for every cell (`lambda0 * sigma2` rewards of a task through
            an RM weigh as much as its prior), or `evidence`: each cell's precision is the number of training pairs
            of that task the RM judged over `sigma2`, i.e. the offline judgements count as rewards already seen
            (at least one each).
        warmup: Raw rewards seen before the quantile normaliser starts (0.5 before that).
        seed: Seed of the router's own generator (Thompson draws).
        use_labels: Read a pair's task from its label (`domains`) when it is one of the prior's tasks; false always
            predicts it from the text.
        use_prior: Start the posteriors at the prior's accuracies (false: at 0, the no-prior ablation).
        online_updates: Update the posteriors from the losses (false: route by the prior's accuracies alone).
        warmup_rewards: `held` (learn the warm-up pairs once the normaliser has its scale) or `placeholder`.
        centred_rewards: Learn rewards on `[-1, 1]` instead of `[0, 1]`.
        eligible_only: Choose only among the RMs that can judge each pair.
        forgetting: `g` in `(0, 1]`: each learning step first forgets toward `forget_toward`, so a reward `k`
            steps old weighs `g^k` of what it did; 1 never forgets (`BayesianRouter`'s).
        forget_toward: `prior_mean` (each cell's prior accuracy held with one reward's precision: the offline
            evidence fades too) or `prior` (the prior as it started: only the online rewards fade).
        cost_weight: `lambda`, what one unit of the pool's cost per call (`RewardModelPool.costs`) is worth in
            probability of being right: each RM's score is its (drawn) chance of being right on the pair minus
            `lambda * cost` (`rmrouter.routers.cost`). 0 ignores cost; > 0 needs a pool that declares costs.
    """

    def __init__(
        self,
        rm_names: list[str] | None,
        prior_path: str,
        sigma2: float,
        lambda0: float | Literal["evidence"],
        warmup: int,
        seed: int,
        use_labels: bool = True,
        use_prior: bool = True,
        online_updates: bool = True,
        warmup_rewards: Literal["placeholder", "held"] = "held",
        centred_rewards: bool = True,
        eligible_only: bool = True,
        forgetting: float = 1.0,
        forget_toward: Literal["prior_mean", "prior"] = "prior_mean",
        cost_weight: float = 0.0,
    ) -> None:
        Router.__init__(self, rm_names)
        self.cost_weight = checked_cost_weight(cost_weight)  # its scores are on the reward's scale from the start
        self.forgetting, self.forget_toward = checked_forgetting(forgetting, forget_toward)
        if warmup_rewards not in ("placeholder", "held"):
            raise ValueError(f"warmup_rewards must be 'placeholder' or 'held', got {warmup_rewards!r}")
        if not use_prior and not online_updates:
            raise ValueError("use_prior: false is the no-prior ablation; it needs online_updates: true")
        if isinstance(lambda0, str) and lambda0 != "evidence":
            raise ValueError(f"lambda0 must be a positive number or 'evidence', got {lambda0!r}")
        if lambda0 == "evidence" and not use_prior:
            raise ValueError("lambda0: evidence weighs the offline prior; the no-prior ablation needs a number")
        prior = TaskPrior.load(prior_path)
        self.prior, self.use_labels = prior, use_labels
        self.sigma2, self.lambda0 = float(sigma2), lambda0
        self.warmup_rewards, self.centred_rewards, self.eligible_only = warmup_rewards, centred_rewards, eligible_only
        self.online_updates, self.prior_scale = online_updates, 1.0
        self.integration, self.offline_weight = "prior_injection", 0.0  # BayesianRouter's form, no weighted score
        self._prior_check = prior.check_pool
        self.embedder = LazyEmbedder(prior.encoder, prior.pooling, prior.max_length, prior.mlp_config, prior.mlp_state)
        self.offline_scores = reward_scale_means(prior.accuracies(), centred_rewards)  # [N, T]
        means = self.offline_scores if use_prior else torch.zeros_like(self.offline_scores)
        self.posteriors: GaussianPosteriors | None = prior_posteriors(means, prior.judged, lambda0, self.sigma2)
        self.anchor = (
            forgetting_anchor(means, 1.0, self.sigma2, "prior_mean")
            if forget_toward == "prior_mean"
            else prior_posteriors(means, prior.judged, lambda0, self.sigma2)
        )
        self.normalizer = QuantileNormalizer(warmup=warmup)
        self.generator = torch.Generator().manual_seed(seed)
        self.nonfinite_losses = 0
        self.held = HeldRewards()
        if self.rm_names is not None:
            self.check_rm_names()

    def context(self, pairs: PairBatch) -> Tensor:
        """`[P, T]` float64 CPU task distributions: one-hot for a known task's label, the task head's otherwise (the
        encoder runs only when some pair needs it)."""
        if self.use_labels:
            known = task_indices(pairs.domains, self.prior.tasks)
        else:
            known = torch.full((len(pairs),), UNKNOWN_TASK, dtype=torch.long)
        if (known >= 0).all():
            logits = torch.zeros(len(pairs), len(self.prior.tasks), dtype=torch.float64)
        else:
            logits = self.prior.task_logits(self.embedder.pairs(pairs))
        return task_probabilities(logits.double(), known)
