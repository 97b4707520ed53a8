"""The baseline routers (METHOD.md, "Baselines"): one fixed RM, a random RM, the majority vote, UWO and LASER."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from rmrouter.models.encoder import Pooling
from rmrouter.routers.base import PairBatch, PairJudge, Router, Routing
from rmrouter.routers.baselines import LinUCB, majority_vote
from rmrouter.routers.embedding import LazyEmbedder
from rmrouter.routers.judges import ask_all, ask_by_rm, ask_eligible, preference
from rmrouter.routers.normalizer import QuantileNormalizer


class SeededRouter(Router):
    """A router with its own checkpointed `torch.Generator`.

    Args:
        rm_names: The pool's RM names, in pool order.
        seed: Seed of the router's generator.
    """

    def __init__(self, rm_names: list[str], seed: int) -> None:
        super().__init__(rm_names)
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.generator.set_state(state_dict["generator"])


class SingleRMRouter(Router):
    """Every pair is labelled by one fixed RM.

    Args:
        rm_names: The pool's RM names, in pool order.
        rm: The RM to use; one of `rm_names`.
    """

    def __init__(self, rm_names: list[str], rm: str) -> None:
        super().__init__(rm_names)
        if rm not in self.rm_names:
            raise ValueError(f"SingleRMRouter: rm {rm!r} is not in the pool {self.rm_names}; pick one of those names")
        self.rm_index = self.rm_names.index(rm)

    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        chosen = torch.full((len(pairs),), self.rm_index, dtype=torch.long)
        margins = judge.margins(self.rm_index, pairs).detach().float().cpu()
        return self.count(Routing(preference(margins), chosen, rm_calls=len(pairs)))


class RandomRouter(SeededRouter):
    """Each pair is labelled by an RM drawn uniformly at random among those that can judge it (the judge's `eligible`).

    Args:
        rm_names: The pool's RM names, in pool order.
        seed: Seed of the router's generator.
    """

    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        total, mine = self.global_rows(len(pairs))  # one draw per pair of every rank; this rank keeps its own
        draws = torch.rand(total, len(self.rm_names), generator=self.generator)[mine]
        # uniform over the eligible RMs: the largest of i.i.d. uniform draws among them (all of them if none can judge)
        eligible = ask_eligible(judge, pairs, len(self.rm_names))
        eligible = eligible | ~eligible.any(dim=1, keepdim=True)
        chosen = draws.masked_fill(~eligible, -1.0).argmax(dim=1)
        return self.count(Routing(preference(ask_by_rm(judge, pairs, chosen)), chosen, rm_calls=len(pairs)))


class MajorityVoteRouter(SeededRouter):
    """Every RM labels every pair; the majority wins, a split vote is a fair coin, a pair no RM votes on (all tied or
    abstaining) gets no label. No RM is credited.

    Args:
        rm_names: The pool's RM names, in pool order.
        seed: Seed of the tie-breaking coins.
    """

    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        # The coins are drawn over every rank's pairs (one per pair), so the generators stay in lockstep.
        margins, mine = self.all_gather_rows(ask_all(judge, pairs, len(self.rm_names)))
        labels = majority_vote(margins, self.generator)[mine].float()
        unattributed = torch.full((len(pairs),), -1, dtype=torch.long)
        return self.count(Routing(labels, unattributed, rm_calls=len(self.rm_names) * len(pairs)))


def uwo_margins(margins: Tensor, coeff: float) -> Tensor:
    """`[P]` an uncertainty-weighted ensemble margin per pair, from margins alone (UWO needs scores; see below).

    UWO (Coste et al.) penalises each response's score by the RMs' variance on it; with margins only, a plain
    `mean - coeff * var` would push every disputed pair toward `second`, an arbitrary side of an unordered pair. So:
    each RM's margins are divided by their root mean square over the batch (a common scale that keeps the sign; a
    column of zeros stays 0), and the penalty shrinks the mean toward 0 without crossing it:
    `sign(mean) * max(|mean| - coeff * var, 0)` over the RMs that did not abstain. Disagreement can drop a label
    (0, not trained on), never flip it. A pair every RM abstained on is NaN.

    Args:
        margins: `[P, N]` margins, NaN where an RM abstained.
        coeff: Weight of the variance penalty.
    """
    if margins.ndim != 2:
        raise ValueError(f"margins must be [P, N], got shape {list(margins.shape)}")
    margins = margins.detach().to(torch.float64)
    voted = ~margins.isnan()
    values = torch.where(voted, margins, 0.0)
    rms = (values.square().sum(dim=0) / voted.sum(dim=0).clamp_min(1)).sqrt()
    scaled = torch.where(rms > 0, values / rms.clamp_min(1e-300), 0.0)
    count = voted.sum(dim=1)
    mean = scaled.sum(dim=1) / count
    var = torch.where(voted, scaled - mean.unsqueeze(1), 0.0).square().sum(dim=1) / count
    return torch.sign(mean) * (mean.abs() - coeff * var).clamp_min(0.0)


class UWORouter(Router):
    """Every RM labels every pair; the label is the sign of `uwo_margins` (0, not trained on, when too uncertain).

    Args:
        rm_names: The pool's RM names, in pool order.
        coeff: Weight of the variance penalty (Coste et al.: 0.1 for PPO, 0.5 for best-of-n).
    """

    def __init__(self, rm_names: list[str], coeff: float) -> None:
        super().__init__(rm_names)
        if not (math.isfinite(coeff) and coeff >= 0):
            raise ValueError(f"coeff must be a finite non-negative penalty weight, got {coeff}")
        self.coeff = float(coeff)

    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        # Each RM's scale is its root mean square over the global batch (every rank's pairs), so a pair gets the same
        # label whichever rank it lands on and however the batch is split.
        margins, mine = self.all_gather_rows(ask_all(judge, pairs, len(self.rm_names)))
        aggregated = uwo_margins(margins, self.coeff)[mine]
        unattributed = torch.full((len(pairs),), -1, dtype=torch.long)
        return self.count(Routing(preference(aggregated), unattributed, rm_calls=len(self.rm_names) * len(pairs)))


class LASERRouter(SeededRouter):
    """LASER: ONE RM per batch, chosen by LinUCB on the batch's mean prompt embedding; reward `-mean loss` of the
    batch's trained pairs, quantile-normalised. Exact UCB ties are broken at random by the router's generator. Under
    several processes the batch is the global one (every rank's pairs), so every rank picks the same arm.

    Args:
        rm_names: The pool's RM names, in pool order.
        alpha: LinUCB exploration weight (LASER: 0.1).
        encoder: Text encoder of the prompts (model name or folder).
        pooling: Its pooling (`mean` or `last_token`).
        max_length: Its token limit per prompt.
        warmup: Batch rewards seen before the quantile normaliser starts (0.5 before that).
        seed: Seed of the tie-breaking generator.
    """

    def __init__(
        self, rm_names: list[str], alpha: float, encoder: str, pooling: Pooling, max_length: int, warmup: int, seed: int
    ) -> None:
        super().__init__(rm_names, seed)
        self.alpha = float(alpha)
        self.embedder = LazyEmbedder(encoder, pooling, max_length, None, None)
        self.normalizer = QuantileNormalizer(warmup=warmup)
        self.linucb: LinUCB | None = None  # built once the context size is known

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.embedder.to(pl_module.device)

    def _linucb(self, dim: int) -> LinUCB:
        if self.linucb is None:
            self.linucb = LinUCB(len(self.rm_names), dim, self.alpha)
        return self.linucb

    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        # One arm per GLOBAL batch: the context is the mean prompt embedding over every rank's prompts.
        context = self.all_gather_rows(self.embedder.prompts(pairs))[0].mean(dim=0)
        ucb = self._linucb(context.shape[0]).ucb(context)
        best = torch.nonzero(ucb == ucb.max()).flatten()
        arm = int(best[torch.randint(0, len(best), (1,), generator=self.generator)])
        chosen = torch.full((len(pairs),), arm, dtype=torch.long)
        margins = judge.margins(arm, pairs).detach().float().cpu()
        return self.count(Routing(preference(margins), chosen, rm_calls=len(pairs), context=(arm, context)))

    def observe(self, routing: Routing, losses: Tensor) -> None:
        losses, _ = self.all_gather_rows(losses.detach().to("cpu", torch.float64))  # the global batch's losses
        trained = losses[torch.isfinite(losses)]
        if trained.numel() == 0:
            return
        arm, context = routing.context
        reward = self.normalizer(-trained.mean().reshape(1))
        self._linucb(context.shape[0]).update(arm, context, float(reward[0]))

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "normalizer": self.normalizer.state_dict()}
        if self.linucb is not None:
            state["linucb"] = self.linucb.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "linucb" in state_dict:
            self._linucb(state_dict["linucb"]["vector"].shape[1]).load_state_dict(state_dict["linucb"])
        self.normalizer.load_state_dict(state_dict["normalizer"])
        super().load_state_dict(state_dict)
