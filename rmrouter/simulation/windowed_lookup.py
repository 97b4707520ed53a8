"""The simple adaptive baseline of the drift benchmark: routing by data label, re-fitted online on a sliding window.

It is the static lookup (`DataLabelRouting`: each label's best RM on the training rows) with one change: per label and
RM, it keeps the last `window` pairs it routed there and whether each got the right label, and estimates the RM's
accuracy on the label from those pairs once it has `min_pairs` of them (the training accuracy until then). Each pair
goes to the eligible RM of highest estimate (ties: the static ranking's order). It is greedy: an RM it stops choosing
keeps the estimate it had, so it notices an RM getting worse, not one getting better.

Its feedback is the oracle's: `observe` reads each routed pair's loss as 1 for a wrong label and 0 for a right one
(`rmrouter.simulation.OracleLearner`), which only a simulation has; it is a baseline for the benchmark, not a router
for `OnlineDPOModule`, whose DPO losses are no such signal.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from torch import Tensor

from rmrouter.routers.base import PairBatch, PairJudge, Router, Routing
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.routers.judges import ask_by_rm, ask_eligible, preference


class WindowedLabelRouter(Router):
    """Routing by data label whose per-label RM accuracies are re-estimated on the last `window` pairs routed to each.

    Args:
        rm_names: The pool's RM names, in pool order.
        routing: The static lookup, fitted on the training rows (`DataLabelRouting.fit`, with its accuracies).
        window: Routed pairs per label and RM the estimates are taken from.
        min_pairs: Pairs an RM needs in a label's window before its estimate replaces the training accuracy.
    """

    def __init__(self, rm_names: list[str], routing: DataLabelRouting, window: int = 200, min_pairs: int = 10):
        super().__init__(rm_names)
        if not routing.accuracies:
            raise ValueError("WindowedLabelRouter needs the lookup's training accuracies (DataLabelRouting.fit)")
        if window < 1 or not 1 <= min_pairs <= window:
            raise ValueError(f"need window >= 1 and 1 <= min_pairs <= window, got {window} and {min_pairs}")
        self.routing, self.window, self.min_pairs = routing, window, min_pairs
        self.recent: dict[str, list[deque[float]]] = {}  # label -> per RM, 1 right / 0 wrong, oldest first

    def estimates(self, label: str) -> Tensor:
        """`[N]` float64: per RM, its accuracy over its pairs in the label's window, or the training accuracy."""
        estimate = torch.tensor(self.routing.accuracies[label], dtype=torch.float64)
        for n, outcomes in enumerate(self.recent.get(label, ())):
            if len(outcomes) >= self.min_pairs:
                estimate[n] = sum(outcomes) / len(outcomes)
        return estimate

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        eligible = ask_eligible(judge, pairs, len(self.rm_names))
        sources = pairs.sources if pairs.sources is not None else [""] * len(pairs)
        labels = [self.routing.label_of(domain, source) for domain, source in zip(pairs.domains, sources, strict=True)]
        chosen = torch.full((len(pairs),), -1, dtype=torch.long)
        for p, label in enumerate(labels):
            estimate, order = self.estimates(label), self.routing.rankings[label]
            candidates = [n for n in order if eligible[p, n]]
            if candidates:
                chosen[p] = max(candidates, key=lambda n: (float(estimate[n]), -order.index(n)))
        routed = chosen >= 0
        margins = torch.full((len(pairs),), float("nan"))
        margins[routed] = ask_by_rm(judge, pairs.subset(torch.nonzero(routed).flatten().tolist()), chosen[routed])
        return Routing(preference(margins), chosen, rm_calls=int(routed.sum()), context=labels)

    def observe(self, routing: Routing, losses: Tensor) -> None:
        for label, rm, loss in zip(routing.context, routing.rm_index.tolist(), losses.tolist(), strict=True):
            if rm >= 0 and loss == loss:  # a pair with no label (NaN loss) says nothing about its RM
                windows = self.recent.setdefault(label, [deque(maxlen=self.window) for _ in self.rm_names])
                windows[rm].append(1.0 - float(loss))

    def state_dict(self) -> dict[str, Any]:
        recent = {label: [list(outcomes) for outcomes in windows] for label, windows in self.recent.items()}
        return {**super().state_dict(), "recent": recent}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.recent = {
            label: [deque(outcomes, maxlen=self.window) for outcomes in windows]
            for label, windows in state_dict["recent"].items()
        }
