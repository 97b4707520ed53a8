"""Routing by data label: each pair goes to the RM that was best on its label in training data.

This is how RL stacks route rewards today (verl's `data_source` dispatch, open-instruct, NeMo-RL): a lookup from what
the data says a pair is to one RM, with no learning from the pair's content. A learned router has to beat it to earn
its keep, so every offline table carries it.

The label of a pair is the most specific one seen in training: its `domain` (`math`, `safety`, `koala`, ...), else
its dataset (the first part of its `source`: `gsm8k`, `hh-rlhf`, `alpaca_eval`), else nothing (every training row).
So a chat corpus held out whole still routes by what the training rows of its dataset said. Per label, the RMs are
ranked by their accuracy on the training rows of that label they could judge (ties: coverage, then pool order); a
pair goes to the first RM in its label's ranking that can judge it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

OVERALL = ""  # the label of every training row


def dataset_of(source: str) -> str:
    """The dataset a source belongs to: `alpaca_eval/claude-2` -> `alpaca_eval`."""
    return source.split("/", 1)[0]


def judged_accuracy(right: Tensor, eligible: Tensor) -> Tensor:
    """`[N]` float64: each RM's accuracy on the rows it could judge, -1 for an RM that judged none."""
    judged = eligible.sum(dim=0).double()
    return torch.where(judged > 0, (right & eligible).sum(dim=0).double() / judged.clamp_min(1), -1.0)


def rank_rms(right: Tensor, eligible: Tensor) -> list[int]:
    """RM indices, best first, by accuracy on the rows each could judge; ties by coverage, then index.

    Args:
        right: `[R, N]` bool, RM `n` right on row `r`.
        eligible: `[R, N]` bool, RM `n` could judge row `r`.
    """
    judged = eligible.sum(dim=0).double()
    accuracy = judged_accuracy(right, eligible)
    keys = [(-float(accuracy[n]), -float(judged[n]), n) for n in range(right.shape[1])]
    return [n for _, _, n in sorted(keys)]


@dataclass(frozen=True)
class DataLabelRouting:
    """Per-label RM rankings fitted on training rows (`fit`), and the routing they give (`route`).

    Args:
        rankings: Label (a domain, a dataset, or `OVERALL`) -> RM indices, best first.
        accuracies: Label -> each RM's accuracy on the training rows of that label it could judge (-1: none), in
            pool order; empty when the rankings were given without them.
    """

    rankings: dict[str, list[int]]
    accuracies: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def fit(cls, domains: Sequence[str], sources: Sequence[str], right: Tensor, eligible: Tensor) -> DataLabelRouting:
        """Rankings per domain, per dataset and overall, from the training rows' `right` and `eligible` `[R, N]`."""
        if right.shape != eligible.shape or right.shape[0] != len(domains) or len(domains) != len(sources):
            raise ValueError(
                f"one domain and source per row of right {tuple(right.shape)} and eligible {tuple(eligible.shape)}, "
                f"got {len(domains)} domains and {len(sources)} sources"
            )
        if right.shape[0] == 0:
            raise ValueError("data-label routing needs at least one training row")
        groups: dict[str, list[int]] = {OVERALL: list(range(len(domains)))}
        for row, (domain, source) in enumerate(zip(domains, sources, strict=True)):
            groups.setdefault(f"domain:{domain}", []).append(row)
            groups.setdefault(f"dataset:{dataset_of(source)}", []).append(row)
        rankings = {label: rank_rms(right[rows], eligible[rows]) for label, rows in groups.items()}
        accuracies = {label: judged_accuracy(right[rows], eligible[rows]).tolist() for label, rows in groups.items()}
        return cls(rankings, accuracies)

    def label_of(self, domain: str, source: str) -> str:
        """The most specific label seen in training: the pair's domain, else its dataset, else `OVERALL`."""
        for label in (f"domain:{domain}", f"dataset:{dataset_of(source)}"):
            if label in self.rankings:
                return label
        return OVERALL

    def ranking(self, domain: str, source: str) -> list[int]:
        """The ranking of the most specific label seen in training: domain, else dataset, else overall."""
        return self.rankings[self.label_of(domain, source)]

    def route(self, domains: Sequence[str], sources: Sequence[str], eligible: Tensor) -> Tensor:
        """`[P]` long: per pair, the first RM of its label's ranking that can judge it (`eligible [P, N]`); -1 if none.

        Args:
            domains: Each pair's domain.
            sources: Each pair's source.
            eligible: `[P, N]` bool, RM `n` can judge pair `p`.
        """
        chosen = torch.full((len(domains),), -1, dtype=torch.long)
        for p, (domain, source) in enumerate(zip(domains, sources, strict=True)):
            chosen[p] = next((n for n in self.ranking(domain, source) if eligible[p, n]), -1)
        return chosen

    def describe(self, rm_names: Sequence[str]) -> dict[str, str]:
        """Label -> the name of its top RM, for logs and reports (`OVERALL` shows as `*`)."""
        return {label or "*": rm_names[ranking[0]] for label, ranking in sorted(self.rankings.items())}
