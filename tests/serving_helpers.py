"""A pool whose scores are known by hand, and routers over it, for the serving tests."""

from __future__ import annotations

import torch

from rmrouter.reward_models import RewardModelPool
from rmrouter.reward_models.base import RewardModel
from rmrouter.routers.baseline_routers import DataLabelRouter
from rmrouter.routers.data_label import DataLabelRouting

RMS = ["a", "b", "ref"]


class LetterCount(RewardModel):
    """Scores a response by how often it contains `letter`; counts the responses it scored."""

    def __init__(self, name: str, letter: str):
        super().__init__(name)
        self.letter = letter
        self.rows_scored = 0

    def _score(self, prompts, responses, references):
        self.rows_scored += len(responses)
        return torch.tensor([float(r.count(self.letter)) for r in responses])


class MatchesReference(RewardModel):
    """1 for a response equal to the reference, else 0; cannot judge without one."""

    needs_reference = True

    def __init__(self, name: str):
        super().__init__(name)
        self.rows_scored = 0

    def _score(self, prompts, responses, references):
        self.rows_scored += len(responses)
        return torch.tensor([float(r == ref) for r, ref in zip(responses, references, strict=True)])


def letter_pool(costs: dict[str, float] | None = None) -> RewardModelPool:
    return RewardModelPool([LetterCount("a", "a"), LetterCount("b", "b"), MatchesReference("ref")], costs=costs)


def label_router() -> DataLabelRouter:
    """Routes `a-task` to RM a, `b-task` to RM b and `exact` to the reference RM (then a, where it cannot judge)."""
    domains = ["a-task", "b-task", "exact", "exact"]
    right = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], dtype=torch.bool)
    routing = DataLabelRouting.fit(domains, ["s"] * 4, right, torch.ones(4, 3, dtype=torch.bool))
    return DataLabelRouter(routing=routing)
