"""The baseline routers: one fixed RM, a random RM, the majority vote, UWO and LASER (docs/concepts/method.md,
"Baselines")."""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from rmrouter.data.behaviour_split import BehaviourSplit
from rmrouter.models.encoder import Pooling
from rmrouter.routers.base import PairBatch, PairJudge, Router, Routing
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.routers.decisions import LinUCB, majority_vote, uwo_pair_margins
from rmrouter.routers.embedding import LazyEmbedder
from rmrouter.routers.judges import ask_all, ask_all_scores, ask_by_rm, ask_eligible, preference
from rmrouter.routers.normalizer import HeldRewards, QuantileNormalizer, centred


class SeededRouter(Router):
    """A router with its own checkpointed `torch.Generator`.

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        seed: Seed of the router's generator.
    """

    def __init__(self, rm_names: list[str] | None, seed: int) -> None:
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
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        rm: The RM to use; one of `rm_names`.
    """

    def __init__(self, rm_names: list[str] | None, rm: str) -> None:
        super().__init__(rm_names)
        self.rm = rm
        self.rm_index = -1  # set by check_rm_names once the names are known
        if self.rm_names is not None:
            self.check_rm_names()

    def check_rm_names(self) -> None:
        if self.rm not in self.rm_names:
            raise ValueError(
                f"SingleRMRouter: rm {self.rm!r} is not in the pool {self.rm_names}; pick one of those names"
            )
        self.rm_index = self.rm_names.index(self.rm)

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        chosen = torch.full((len(pairs),), self.rm_index, dtype=torch.long)
        margins = judge.margins(self.rm_index, pairs).detach().float().cpu()
        return Routing(preference(margins), chosen, rm_calls=len(pairs))


class RandomRouter(SeededRouter):
    """Each pair is labelled by an RM drawn uniformly at random among those that can judge it (the judge's `eligible`).

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        seed: Seed of the router's generator.
    """

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        total, mine = self.global_rows(len(pairs))  # one draw per pair of every rank; this rank keeps its own
        draws = torch.rand(total, len(self.rm_names), generator=self.generator)[mine]
        # uniform over the eligible RMs: the largest of i.i.d. uniform draws among them (all of them if none can judge)
        eligible = ask_eligible(judge, pairs, len(self.rm_names))
        eligible = eligible | ~eligible.any(dim=1, keepdim=True)
        chosen = draws.masked_fill(~eligible, -1.0).argmax(dim=1)
        return Routing(preference(ask_by_rm(judge, pairs, chosen)), chosen, rm_calls=len(pairs))


class DataLabelRouter(Router):
    """Routing by data label (verl's `data_source` dispatch): each pair goes to the RM best on its label in training
    data (`rmrouter.routers.data_label.DataLabelRouting`), the first of its label's ranking that can judge it. It
    learns nothing online. A batch without `sources` routes by domain, else by the overall ranking.

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        routing: The rankings, fitted on training rows (`DataLabelRouting.fit`); or None, and `behaviour` names the
            behaviour file to fit them on.
        behaviour: A behaviour file (`python cli.py collect`); the rankings are fitted on its `train` split, the
            rows the offline router trains on, once the pool's RM names are known.
        split: The offline router's split of that file (in a config, the same `configs/splits/` file its config
            names), so the lookup is fitted on exactly the rows the prior was trained on.
    """

    def __init__(
        self,
        rm_names: list[str] | None = None,
        routing: DataLabelRouting | None = None,
        behaviour: str | None = None,
        split: BehaviourSplit | None = None,
    ) -> None:
        if (routing is None) == (behaviour is None):
            raise ValueError(
                "DataLabelRouter needs exactly one of `routing` (fitted rankings) and `behaviour` (a file)"
            )
        self.routing = routing
        self._behaviour = {"path": behaviour, "split": split}
        super().__init__(rm_names)
        if self.rm_names is not None:
            self.check_rm_names()

    def check_rm_names(self) -> None:
        if self.routing is not None:
            return
        from rmrouter.data.behaviour_datamodule import BehaviourDataModule

        data = BehaviourDataModule(rm_names=self.rm_names, **self._behaviour)
        data.setup("fit")
        self.routing = data.data_label_routing

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        eligible = ask_eligible(judge, pairs, len(self.rm_names))
        sources = pairs.sources if pairs.sources is not None else [""] * len(pairs)
        chosen = self.routing.route(pairs.domains, sources, eligible)
        routed = chosen >= 0
        margins = torch.full((len(pairs),), float("nan"))
        margins[routed] = ask_by_rm(judge, pairs.subset(torch.nonzero(routed).flatten().tolist()), chosen[routed])
        return Routing(preference(margins), chosen, rm_calls=int(routed.sum()))


class MajorityVoteRouter(SeededRouter):
    """Every RM labels every pair; the majority wins, a split vote is a fair coin, a pair no RM votes on (all tied or
    abstaining) gets no label. No RM is credited.

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        seed: Seed of the tie-breaking coins.
    """

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        # The coins are drawn over every rank's pairs (one per pair), so the generators stay in lockstep.
        margins, mine = self.all_gather_rows(ask_all(judge, pairs, len(self.rm_names)))
        labels = majority_vote(margins, self.generator)[mine].float()
        unattributed = torch.full((len(pairs),), -1, dtype=torch.long)
        return Routing(labels, unattributed, rm_calls=len(self.rm_names) * len(pairs))


class UWORouter(Router):
    """UWO: every RM scores both responses of every pair; the pair is ordered by the responses' UWO rewards
    (`uwo_pair_margins`). O(N) RM calls per pair; no RM is credited.

    The common scale is each RM's standardised score over the batch's responses, so the batch is the unit UWO works
    on: under several processes the global batch (every rank's pairs), so a pair gets the same label whichever rank it
    lands on.

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        coeff: Weight of the variance penalty (Coste et al.: 0.1 for PPO, 0.5 for best-of-n).
    """

    def __init__(self, rm_names: list[str] | None, coeff: float) -> None:
        super().__init__(rm_names)
        if not (math.isfinite(coeff) and coeff >= 0):
            raise ValueError(f"coeff must be a finite non-negative penalty weight, got {coeff}")
        self.coeff = float(coeff)

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        scores, mine = self.all_gather_rows(ask_all_scores(judge, pairs, len(self.rm_names)))
        margins = uwo_pair_margins(scores, self.coeff)[mine]
        unattributed = torch.full((len(pairs),), -1, dtype=torch.long)
        return Routing(preference(margins), unattributed, rm_calls=len(self.rm_names) * len(pairs))


class LASERRouter(SeededRouter):
    """LASER (Nguyen et al. 2024): ONE RM per batch, chosen by LinUCB on the batch's mean prompt embedding; the reward
    is `-mean loss` of the batch's trained pairs, quantile-normalised over the history of batch rewards.

    Three things the LASeR paper's LinUCB relies on, each a switch:
    - the warm-up is counted in batch rewards (one per batch), and the batches routed before the normaliser has
      `warmup` of them are learned once it has, with their normalised rewards, never as placeholders;
    - `round_robin`: the first `N` batches try each arm once, in pool order, so no arm wins by a tie-break;
    - `centred_rewards`: rewards on `[-1, 1]` (`2r - 1` of the normalised `r`), so the arms' zero start is the
      average reward rather than the worst; `false` keeps `[0, 1]`, LASeR's code, on which an arm once pulled
      outscores every untried one and the first arm tends to stay.

    Exact UCB ties are broken at random by the router's generator. Under several processes the batch is the global
    one (every rank's pairs), so every rank picks the same arm.

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        alpha: LinUCB exploration weight (LASER: 0.1).
        encoder: Text encoder of the prompts (model name or folder).
        pooling: Its pooling (`mean` or `last_token`).
        max_length: Its token limit per prompt.
        warmup: Batch rewards seen before the quantile normaliser starts (LASeR's code: 2).
        seed: Seed of the tie-breaking generator.
        round_robin: Try each arm once, in order, before LinUCB chooses.
        centred_rewards: Learn from rewards on `[-1, 1]` instead of `[0, 1]`.
    """

    def __init__(
        self,
        rm_names: list[str] | None,
        alpha: float,
        encoder: str,
        pooling: Pooling,
        max_length: int,
        warmup: int,
        seed: int,
        round_robin: bool = True,
        centred_rewards: bool = True,
    ) -> None:
        super().__init__(rm_names, seed)
        self.alpha = float(alpha)
        self.round_robin, self.centred_rewards = round_robin, centred_rewards
        self.embedder = LazyEmbedder(encoder, pooling, max_length, None, None)
        self.normalizer = QuantileNormalizer(warmup=warmup)
        self.linucb: LinUCB | None = None  # built once the context size is known
        self.batches_routed = 0
        self.held = HeldRewards()  # batches routed before the normaliser warmed up

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.embedder.to(pl_module.device)

    def _linucb(self, dim: int) -> LinUCB:
        if self.linucb is None:
            self.linucb = LinUCB(len(self.rm_names), dim, self.alpha)
        return self.linucb

    def _arm(self, context: Tensor) -> int:
        if self.round_robin and self.batches_routed < len(self.rm_names):
            return self.batches_routed
        ucb = self._linucb(context.shape[0]).ucb(context)
        best = torch.nonzero(ucb == ucb.max()).flatten()
        return int(best[torch.randint(0, len(best), (1,), generator=self.generator)])

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        # One arm per GLOBAL batch: the context is the mean prompt embedding over every rank's prompts.
        context = self.all_gather_rows(self.embedder.prompts(pairs))[0].mean(dim=0)
        arm = self._arm(context)
        self.batches_routed += 1
        chosen = torch.full((len(pairs),), arm, dtype=torch.long)
        margins = judge.margins(arm, pairs).detach().float().cpu()
        return Routing(preference(margins), chosen, rm_calls=len(pairs), context=(arm, context))

    def observe(self, routing: Routing, losses: Tensor) -> None:
        losses, _ = self.all_gather_rows(losses.detach().to("cpu", torch.float64))  # the global batch's losses
        trained = losses[torch.isfinite(losses)]
        if trained.numel() == 0:
            return
        arm, context = routing.context
        raw = -trained.mean().reshape(1)
        self.normalizer(raw)
        released = self.held.release(self.normalizer, torch.tensor([arm]), context.unsqueeze(0), raw)
        if released is None:
            return
        arms, contexts, rewards = released
        if self.centred_rewards:
            rewards = centred(rewards)
        linucb = self._linucb(context.shape[0])
        for n, x, r in zip(arms.tolist(), contexts, rewards.tolist(), strict=True):
            linucb.update(n, x, r)

    def state_dict(self) -> dict[str, Any]:
        state = {
            **super().state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "batches_routed": self.batches_routed,
            "held": self.held.state_dict(),
        }
        if self.linucb is not None:
            state["linucb"] = self.linucb.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "linucb" in state_dict:
            self._linucb(state_dict["linucb"]["vector"].shape[1]).load_state_dict(state_dict["linucb"])
        self.normalizer.load_state_dict(state_dict["normalizer"])
        self.batches_routed = int(state_dict["batches_routed"])
        self.held.load_state_dict(state_dict["held"])
        super().load_state_dict(state_dict)
