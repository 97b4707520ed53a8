"""The contract between the online DPO loop and every router (BayesianRouter and the baselines).

Each training step the OnlineDPOModule builds candidate pairs (two responses to one prompt, not yet ordered) and asks
the router to label them: `route(pairs, judge)` returns, per pair, which response is preferred and by which RM (each
router writes `label`; `route` adds the counting). The router calls RMs only through `judge`, so the same router runs
live (the judge scores with a `RewardModelPool`) and in the simulated mode (the judge reads recorded behaviour
scores). After the DPO forward pass, and before the optimizer step, the module hands the per-pair losses back with
`observe`, which is where learning routers update. Routers are Lightning callbacks: their state (posteriors, normaliser
history, counters, RNG) is checkpointed through `state_dict` and restored by `--ckpt_path`.

Under DDP/FSDP every rank holds its own copy of the router and must keep it IDENTICAL to the others (each rank saves
and restores it). So a router works on the GLOBAL batch: `all_gather_rows` collects a per-pair tensor from every rank
(in rank order), every draw from the router's generator is made over the gathered rows, identically on every rank,
and each rank keeps its own slice (`global_rows`); `observe` gathers what it learns from and every rank applies the
same update; the counters count every rank's pairs. Judge calls stay local: each rank scores its own pairs. With one
process all of this is a no-op.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from rmrouter.data.records import Message
from rmrouter.routers.cost import routing_cost


@dataclass(frozen=True)
class PairBatch:
    """Unordered candidate pairs: `first[i]` and `second[i]` answer `prompts[i]`.

    The one record of a pair from sampling to the DPO loss: the texts the RMs and the router read, and, where a
    policy trains on the pair, both sides' token ids (`prompt_ids`, `first_ids`, `second_ids`) and whether each side
    ended with EOS (`first_ended`, `second_ended`; a live judge penalises a side cut at the length limit). Those are
    None where nothing trains on the pairs (the simulated streams' oracle and log-linear learners).

    `sources` are the pairs' data sources (`gsm8k/...`), where known, for routing by data label. `rows` is None for
    a batch the module built, and for a `subset` the positions of its pairs in that batch, so a judge holding
    per-batch data (`RecordedJudge`) can answer for any subset a router sends it.
    """

    prompts: list[list[Message]]
    first: list[str]
    second: list[str]
    references: list[str | None]
    domains: list[str]
    rows: list[int] | None = None
    sources: list[str] | None = None
    prompt_ids: list[list[int]] | None = None
    first_ids: list[list[int]] | None = None
    second_ids: list[list[int]] | None = None
    first_ended: list[bool] | None = None
    second_ended: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.first)

    def subset(self, rows: list[int]) -> PairBatch:
        """The pairs `rows`, every field cut alike, `rows` pointing back into the batch the pairs were built in."""
        origin = rows if self.rows is None else [self.rows[i] for i in rows]
        fields = {
            f.name: None if getattr(self, f.name) is None else [getattr(self, f.name)[i] for i in rows]
            for f in dataclasses.fields(self)
            if f.name != "rows"
        }
        return PairBatch(**fields, rows=list(origin))

    def chosen_and_rejected(self, rows: list[int], preference: Tensor) -> tuple[list[list[int]], list[list[int]]]:
        """The token ids of the chosen and the rejected side of each pair of `rows` by the labels `preference`
        (`[P]`: +1 `first` is chosen, -1 `second` is)."""
        if self.first_ids is None or self.second_ids is None:
            raise ValueError("these pairs carry no token ids: build them with the policy's tokens to train on them")
        first = [preference[row] > 0 for row in rows]
        chosen = [self.first_ids[r] if f else self.second_ids[r] for r, f in zip(rows, first, strict=True)]
        rejected = [self.second_ids[r] if f else self.first_ids[r] for r, f in zip(rows, first, strict=True)]
        return chosen, rejected


class PairJudge(Protocol):
    """Scores pairs with one RM of the pool.

    A judge may also say, before any RM is called, which RMs can judge each pair: `eligible(pairs) -> [P, N]` bool
    (an RM that needs a reference answer cannot judge a pair without one). Routers ask through
    `rmrouter.routers.judges.ask_eligible`, which treats a judge without that method as one whose RMs judge everything.
    """

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        """`[len(pairs)]` float: RM `rm_index`'s `score(first) - score(second)`; NaN where it abstains."""
        ...


class ScoringJudge(PairJudge, Protocol):
    """A judge that also gives each response's own score, which score-level ensembles (UWO) need."""

    def scores(self, rm_index: int, pairs: PairBatch) -> Tensor:
        """`[len(pairs), 2]` float: RM `rm_index`'s `(score(first), score(second))`; NaN where it abstains."""
        ...


@dataclass
class Routing:
    """A router's decision for a batch of pairs.

    Attributes:
        preference: `[P]` float: +1 `first` is preferred, -1 `second` is preferred, 0 no usable label (the RM
            abstained or tied): such pairs are not trained on.
        rm_index: `[P]` long: the RM whose label was used, -1 when the label aggregates several RMs (majority, UWO).
        rm_calls: RM calls made for this batch, counted per pair and RM (`P` for one RM per pair, `N * P` for all).
        context: Whatever the router needs again in `observe` (e.g. the pair embeddings `h`), or None.
        calls_by_rm: `[N]` the calls per RM, where they are not what `rm_index` says (a cascade asks a first RM on
            pairs another RM labels); None: each labelled pair called its RM, any other call is spread over the RMs.
    """

    preference: Tensor
    rm_index: Tensor
    rm_calls: int
    context: Any = None
    calls_by_rm: Tensor | None = None


class Router(Callback, ABC):
    """Base of all routers: counts selections and RM calls, logs them, and checkpoints its state.

    The RM names come from the pool: `OnlineDPOModule` hands them over (`connect_pool`) when it gives the router to
    the trainer, so a config names the pool's RMs once, in the pool. A router built with `rm_names` keeps them, and
    then the pool must have exactly those RMs, in that order.

    Args:
        rm_names: The pool's RM names, in pool order; None (the configs' way) takes them from the pool.
    """

    def __init__(self, rm_names: list[str] | None = None):
        self.rm_names: list[str] | None = None
        self.pairs_routed = 0
        self.rm_calls = 0
        self.costs: Tensor | None = None  # the pool's cost per call of each RM, once known (`connect_pool`)
        self.cost_total = 0.0
        self.selections = torch.zeros(0, dtype=torch.long)
        self._strategy: Any = None  # the trainer's strategy, from `setup`: how to reach the other ranks
        if rm_names is not None:
            self._set_rm_names(rm_names)

    def _set_rm_names(self, rm_names: Sequence[str]) -> None:
        names = list(rm_names)
        if not names:
            raise ValueError("a router needs the names of the pool's RMs")
        self.rm_names = names
        self.selections = torch.zeros(len(names), dtype=torch.long)

    def declared_costs(self) -> Tensor:
        """The pool's cost per call of each RM, for a router that weighs cost; refused where the pool declares none."""
        if self.costs is None:
            raise ValueError(
                f"{type(self).__name__}: cost_weight > 0 needs the pool's costs per call (RewardModelPool costs)"
            )
        return self.costs

    def connect_pool(self, rm_names: Sequence[str], where: str = "the pool's", costs: Tensor | None = None) -> None:
        """Takes the pool's RM names (in pool order) if the router has none yet; else checks they are its own.

        Args:
            rm_names: The pool's RM names.
            where: Whose names they are, for the error message (e.g. `the behaviour file's`).
            costs: The pool's cost per call of each RM (`RewardModelPool.costs`), to count what routing costs.
        """
        if costs is not None:
            self.costs = costs.detach().double().cpu()
        names = list(rm_names)
        if self.rm_names is None:
            self._set_rm_names(names)
            self.check_rm_names()
        elif names != self.rm_names:
            raise ValueError(
                f"{type(self).__name__}: its rm_names {self.rm_names} differ from {where} {names}: leave the "
                "router's rm_names out (it takes the pool's), or list the same RMs in the same order"
            )

    def check_rm_names(self) -> None:
        """Checks of the router's own settings against its RM names, run once the names are known (at `__init__`
        when given there, else at `connect_pool`); the default checks nothing."""

    def require_rm_names(self) -> list[str]:
        """The RM names; an error that says how to give them when the router has none yet."""
        if self.rm_names is None:
            raise ValueError(
                f"{type(self).__name__} has no RM names yet: give it rm_names, or let the module that routes with it "
                "hand over its pool's (OnlineDPOModule does, in configure_callbacks)"
            )
        return self.rm_names

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Keeps the trainer's strategy for `all_gather_rows`; subclasses that override this call it too."""
        self._strategy = trainer.strategy

    def world_size(self) -> int:
        """Processes sharing this router: the strategy's world size, else torch.distributed's, else 1."""
        strategy = getattr(self, "_strategy", None)
        if strategy is not None:
            return int(getattr(strategy, "world_size", 1))
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1

    def _rank(self) -> int:
        strategy = getattr(self, "_strategy", None)
        if strategy is not None and hasattr(strategy, "global_rank"):
            return int(strategy.global_rank)
        return dist.get_rank()

    def _gather_device(self) -> torch.device:
        """Where collectives run: the strategy's device (NCCL needs CUDA tensors), else CUDA only under NCCL."""
        strategy = getattr(self, "_strategy", None)
        if strategy is not None and hasattr(strategy, "root_device"):
            return torch.device(strategy.root_device)
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _gather_sizes(self, size: int) -> list[int]:
        local = torch.tensor([size], dtype=torch.long, device=self._gather_device())
        sizes = [torch.zeros_like(local) for _ in range(self.world_size())]
        dist.all_gather(sizes, local)
        return [int(s) for s in sizes]

    def global_rows(self, size: int) -> tuple[int, slice]:
        """`(total, mine)`: the number of pairs over all ranks, and this rank's `size` pairs' slice of them (rows are
        in rank order). With one process: `(size, slice(0, size))`."""
        if self.world_size() == 1:
            return size, slice(0, size)
        sizes = self._gather_sizes(size)
        start = sum(sizes[: self._rank()])
        return sum(sizes), slice(start, start + size)

    def all_gather_rows(self, rows: Tensor) -> tuple[Tensor, slice]:
        """`(gathered, mine)`: every rank's `rows` (`[P_rank, ...]`, any `P_rank`, same trailing shape and dtype on
        every rank) concatenated in rank order, on `rows`' device, and this rank's slice of them.

        A collective: every rank must call it, in the same order. With one process it returns `rows` itself.
        """
        if self.world_size() == 1:
            return rows, slice(0, rows.shape[0])
        sizes = self._gather_sizes(rows.shape[0])
        start = sum(sizes[: self._rank()])
        mine = slice(start, start + rows.shape[0])
        longest = max(sizes)
        if longest == 0:
            return rows, mine
        is_bool = rows.dtype == torch.bool  # not every backend gathers bool
        local = rows.detach().to(self._gather_device(), torch.uint8 if is_bool else rows.dtype)
        padded = local.new_zeros((longest, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        gathered = torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
        return gathered.to(rows.device, torch.bool if is_bool else rows.dtype), mine

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{','.join(self.require_rm_names())}]"

    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        """Labels every pair (`label`) and adds the batch to the counters."""
        self.require_rm_names()
        return self.count(self.label(pairs, judge))

    @abstractmethod
    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        """Each router's own decision: which RM labels each pair, and the labels it gives."""

    def observe(self, routing: Routing, losses: Tensor) -> None:
        """Learns from the per-pair DPO losses (`[P]`, NaN for pairs not trained on); the default learns nothing."""

    def count(self, routing: Routing) -> Routing:
        """Adds the batch to the counters; under several processes, every rank's batch (a collective)."""
        rm_index, _ = self.all_gather_rows(routing.rm_index.detach().long().cpu())
        calls, _ = self.all_gather_rows(torch.tensor([routing.rm_calls], dtype=torch.long))
        chosen = rm_index[rm_index >= 0]
        self.selections += torch.bincount(chosen, minlength=len(self.rm_names))
        self.pairs_routed += len(rm_index)
        self.rm_calls += int(calls.sum())
        if self.costs is not None:
            if routing.calls_by_rm is not None:  # every rank's counts, summed
                by_rm, _ = self.all_gather_rows(routing.calls_by_rm.detach().double().cpu().reshape(1, -1))
                self.cost_total += float((by_rm.sum(dim=0) * self.costs).sum())
            else:
                self.cost_total += routing_cost(rm_index, int(calls.sum()), self.costs)
        return routing

    def metrics(self) -> dict[str, float]:
        """`router/select_rate/<rm>` and `router/rm_calls_per_pair` over the whole run so far."""
        total = max(int(self.selections.sum()), 1)
        names = self.require_rm_names()
        rates = {f"router/select_rate/{name}": int(n) / total for name, n in zip(names, self.selections, strict=True)}
        values = {**rates, "router/rm_calls_per_pair": self.rm_calls / max(self.pairs_routed, 1)}
        if self.costs is not None:  # in the pool's unit of cost
            values.update({"router/cost_per_pair": self.cost_total / max(self.pairs_routed, 1),
                           "router/cost_total": self.cost_total})  # fmt: skip
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"pairs_routed": self.pairs_routed, "rm_calls": self.rm_calls, "selections": self.selections.clone(),
                "cost_total": self.cost_total}  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pairs_routed = int(state_dict["pairs_routed"])
        self.rm_calls = int(state_dict["rm_calls"])
        self.cost_total = float(state_dict.get("cost_total", 0.0))  # checkpoints written before costs: none
        self.selections = state_dict["selections"].clone()
