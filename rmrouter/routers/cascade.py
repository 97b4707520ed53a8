"""A cascade as a router: every pair asks a cheap RM first, and the RM routing by data label would pick only where
the cheap RM's margin says it is likely wrong (`rmrouter.routers.cost`, docs/cost_frontier.md measures the idea).

The rule is the expected-value one, with no threshold to tune: a pair of label `l` on which the first RM's margin gives
it a chance `p1` of being right (`MarginCalibration`, per task on the behaviour file's train split) goes on to the
lookup's RM, right on `l` with chance `p2` in training, when `p2 - p1 > cost_weight * cost(second)`; with no weight,
whenever the second RM is the likelier to be right.
"""

from __future__ import annotations

import torch

from rmrouter.data.behaviour_split import BehaviourSplit
from rmrouter.routers.base import PairBatch, PairJudge, Router, Routing
from rmrouter.routers.cost import MarginCalibration, checked_cost_weight, escalate
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.routers.judges import ask_by_rm, ask_eligible, preference


class CascadeRouter(Router):
    """Two stages: the RM `first` on every pair it can judge, then the lookup's RM where escalating is worth it (see
    the module docstring). A pair takes the label of the last RM called; the first RM's calls are counted too
    (`Routing.calls_by_rm`), so the cost a run logs is what both stages cost. It learns nothing online.

    Args:
        rm_names: The pool's RM names, in pool order; None takes the pool's (`Router`).
        first: The RM asked first (e.g. the pool's cheapest).
        behaviour: A behaviour file; the lookup and the first RM's calibration are fitted on its `train` split once
            the pool's RM names are known. Or give both `lookup` and `calibration`.
        split: The offline router's split of that file (`configs/splits/`).
        lookup: Routing by data label, fitted on training rows, with its per-label accuracies.
        calibration: The first RM's `MarginCalibration`, fitted on training rows.
        cost_weight: `lambda`, what one unit of the pool's cost per call is worth in probability of being right; > 0
            needs a pool that declares costs.
    """

    def __init__(
        self,
        rm_names: list[str] | None = None,
        first: str = "length",
        behaviour: str | None = None,
        split: BehaviourSplit | None = None,
        lookup: DataLabelRouting | None = None,
        calibration: MarginCalibration | None = None,
        cost_weight: float = 0.0,
    ) -> None:
        if (behaviour is None) == (lookup is None or calibration is None):
            raise ValueError("CascadeRouter needs either `behaviour` (a file to fit on) or both `lookup` and "
                             "`calibration`")  # fmt: skip
        self.first, self.cost_weight = first, checked_cost_weight(cost_weight)
        self.lookup, self.calibration = lookup, calibration
        self._behaviour = {"path": behaviour, "split": split}
        self.first_index = -1
        super().__init__(rm_names)
        if self.rm_names is not None:
            self.check_rm_names()

    def check_rm_names(self) -> None:
        if self.first not in self.rm_names:
            raise ValueError(f"CascadeRouter: first {self.first!r} is not in the pool {self.rm_names}")
        self.first_index = self.rm_names.index(self.first)
        if self.lookup is not None and self.calibration is not None:
            return
        from rmrouter.data.behaviour_datamodule import BehaviourDataModule

        data = BehaviourDataModule(rm_names=self.rm_names, **self._behaviour)
        data.setup("fit")
        train, n = data.splits["train"], self.first_index
        self.lookup = data.data_label_routing
        self.calibration = MarginCalibration.fit(train.domains, train.margin[:, n].double(), train.agree[:, n].bool())

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        num_rms, n = len(self.rm_names), self.first_index
        costs = self.declared_costs() if self.cost_weight else None
        eligible = ask_eligible(judge, pairs, num_rms)
        sources = pairs.sources if pairs.sources is not None else [""] * len(pairs)
        asked_first = eligible[:, n]
        margins = torch.full((len(pairs),), float("nan"))
        margins[asked_first] = self.ask(judge, pairs, asked_first, torch.full((len(pairs),), n))
        # stage two: the lookup's RM, where its training accuracy on the label beats the first RM's calibrated chance
        # by more than its price
        second = self.lookup.route(pairs.domains, sources, eligible)
        worth = torch.tensor([self.second_accuracy(d, s, int(rm)) for d, s, rm in zip(pairs.domains, sources, second,
                                                                                      strict=True)])  # fmt: skip
        if costs is not None:
            worth = worth - self.cost_weight * costs[second.clamp_min(0)]
        confidence = self.calibration.probability(pairs.domains, margins)
        onward = escalate(preference(margins), confidence, worth) & (second >= 0) & (second != n)
        chosen = torch.where(asked_first, n, -1)
        chosen[onward] = second[onward]
        margins[onward] = self.ask(judge, pairs, onward, second)
        calls = torch.bincount(second[onward], minlength=num_rms).double()
        calls[n] += int(asked_first.sum())
        return Routing(preference(margins), chosen, rm_calls=int(calls.sum()), calls_by_rm=calls)

    @staticmethod
    def ask(judge: PairJudge, pairs: PairBatch, rows: torch.Tensor, rm_index: torch.Tensor) -> torch.Tensor:
        """The margins of the pairs `rows` (bool `[P]`) from their RMs `rm_index`, asking only about those pairs."""
        picked = torch.nonzero(rows).flatten()
        if not len(picked):
            return torch.empty(0)
        return ask_by_rm(judge, pairs.subset(picked.tolist()), rm_index[picked])

    def second_accuracy(self, domain: str, source: str, rm: int) -> float:
        """The lookup RM's training accuracy on the pair's label (-1 when there is no such RM, never escalated to)."""
        if rm < 0:
            return -1.0
        return self.lookup.accuracies[self.lookup.label_of(domain, source)][rm]
