"""The contract between the online DPO loop and every router (BayesianRouter and the baselines).

Each training step the OnlineDPOModule builds candidate pairs (two responses to one prompt, not yet ordered) and asks
the trainer's router to label them: `route(pairs, judge)` returns, per pair, which response is preferred and by which
RM. The router calls RMs only through `judge`, so the same router runs live (the judge scores with a
`RewardModelPool`) and in the simulated mode (the judge reads recorded behaviour margins). After the DPO forward
pass, and before the optimizer step, the module hands the per-pair losses back with `observe`, which is where
learning routers update. Routers are Lightning callbacks: their state (posteriors, normaliser history, counters, RNG)
is checkpointed through `state_dict` and restored by `--ckpt_path`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from lightning.pytorch import Callback
from torch import Tensor

from rmrouter.data.records import Message


@dataclass(frozen=True)
class PairBatch:
    """Unordered candidate pairs: `first[i]` and `second[i]` answer `prompts[i]`.

    `rows` is None for a batch the module built, and for a `subset` the positions of its pairs in that batch, so a
    judge holding per-batch data (`RecordedJudge`) can answer for any subset a router sends it.
    """

    prompts: list[list[Message]]
    first: list[str]
    second: list[str]
    references: list[str | None]
    domains: list[str]
    rows: list[int] | None = None

    def __len__(self) -> int:
        return len(self.first)

    def subset(self, rows: list[int]) -> PairBatch:
        fields = ("prompts", "first", "second", "references", "domains")
        origin = rows if self.rows is None else [self.rows[i] for i in rows]
        return PairBatch(*([getattr(self, f)[i] for i in rows] for f in fields), rows=list(origin))


class PairJudge(Protocol):
    """Scores pairs with one RM of the pool."""

    def margins(self, rm_index: int, pairs: PairBatch) -> Tensor:
        """`[len(pairs)]` float: RM `rm_index`'s `score(first) - score(second)`; NaN where it abstains."""
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
    """

    preference: Tensor
    rm_index: Tensor
    rm_calls: int
    context: Any = None


class Router(Callback, ABC):
    """Base of all routers: counts selections and RM calls, logs them, and checkpoints its state.

    Args:
        rm_names: The pool's RM names, in pool order.
    """

    def __init__(self, rm_names: list[str]):
        if not rm_names:
            raise ValueError("a router needs the names of the pool's RMs")
        self.rm_names = list(rm_names)
        self.pairs_routed = 0
        self.rm_calls = 0
        self.selections = torch.zeros(len(rm_names), dtype=torch.long)

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{','.join(self.rm_names)}]"

    @abstractmethod
    def route(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        """Labels every pair; implementations call `self.count(routing)` before returning."""

    def observe(self, routing: Routing, losses: Tensor) -> None:
        """Learns from the per-pair DPO losses (`[P]`, NaN for pairs not trained on); the default learns nothing."""

    def count(self, routing: Routing) -> Routing:
        chosen = routing.rm_index[routing.rm_index >= 0]
        self.selections += torch.bincount(chosen.cpu(), minlength=len(self.rm_names))
        self.pairs_routed += len(routing.preference)
        self.rm_calls += routing.rm_calls
        return routing

    def metrics(self) -> dict[str, float]:
        """`router/select_rate/<rm>` and `router/rm_calls_per_pair` over the whole run so far."""
        total = max(int(self.selections.sum()), 1)
        rates = {
            f"router/select_rate/{name}": int(n) / total for name, n in zip(self.rm_names, self.selections, strict=True)
        }
        return {**rates, "router/rm_calls_per_pair": self.rm_calls / max(self.pairs_routed, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"pairs_routed": self.pairs_routed, "rm_calls": self.rm_calls, "selections": self.selections.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pairs_routed = int(state_dict["pairs_routed"])
        self.rm_calls = int(state_dict["rm_calls"])
        self.selections = state_dict["selections"].clone()
