"""Heuristic reward models with no learned parameters."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from rmrouter.data.records import Message
from rmrouter.reward_models.base import RewardModel

LengthUnit = Literal["characters", "words"]


class LengthRewardModel(RewardModel):
    """Score = the response's length: stands for the length bias that real reward models have.

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
        unit: `characters` counts characters; `words` counts whitespace-separated words.
    """

    def __init__(self, name: str, unit: LengthUnit = "characters") -> None:
        super().__init__(name)
        if unit not in get_args(LengthUnit):
            raise ValueError(f"{name}: unit must be one of {get_args(LengthUnit)}, got {unit!r}")
        self.unit = unit

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        if self.unit == "words":
            return torch.tensor([float(len(response.split())) for response in responses])
        return torch.tensor([float(len(response)) for response in responses])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, unit={self.unit!r}"
