"""A pool whose scores are known by hand, and routers over it, for the serving tests."""

from __future__ import annotations

import torch
from letter_rms import LetterCount, MatchesReference

from rmrouter.reward_models import RewardModelPool
from rmrouter.routers.baseline_routers import DataLabelRouter
from rmrouter.routers.data_label import DataLabelRouting

RMS = ["a", "b", "ref"]


def letter_pool(costs: dict[str, float] | None = None) -> RewardModelPool:
    return RewardModelPool([LetterCount("a", "a"), LetterCount("b", "b"), MatchesReference("ref")], costs=costs)


def label_router() -> DataLabelRouter:
    """Routes `a-task` to RM a, `b-task` to RM b and `exact` to the reference RM (then a, where it cannot judge)."""
    domains = ["a-task", "b-task", "exact", "exact"]
    right = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    routing = DataLabelRouting.fit(domains, ["s"] * 4, right, torch.ones(4, 3, dtype=torch.bool))
    return DataLabelRouter(routing=routing)
