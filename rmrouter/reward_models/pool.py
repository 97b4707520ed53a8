"""A pool of reward models: the set a router chooses from, in a fixed order."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rmrouter.data.records import Prompt
from rmrouter.reward_models.base import RewardModel


class RewardModelPool(nn.Module):
    """An ordered set of reward models with unique names.

    Args:
        reward_models: The RMs, in the order routers and behaviour records use.
    """

    def __init__(self, reward_models: list[RewardModel]):
        super().__init__()
        if not reward_models:
            raise ValueError("a reward-model pool needs at least one reward model")
        names = [rm.name for rm in reward_models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"reward-model names must be unique in a pool; repeated: {duplicates}")
        self.reward_models = nn.ModuleList(reward_models)

    @property
    def names(self) -> list[str]:
        return [rm.name for rm in self.reward_models]

    def __len__(self) -> int:
        return len(self.reward_models)

    def __getitem__(self, index: int) -> RewardModel:
        return self.reward_models[index]

    def score_pairs(
        self,
        rm: RewardModel,
        prompts: Sequence[Prompt],
        first: Sequence[str],
        second: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One RM's scores for both sides of each pair (`RewardModel.score_pairs`: one `score` call over 2B rows, or
        a pairwise judge's own)."""
        return rm.score_pairs(prompts, first, second, references)

    def margins(
        self,
        prompts: Sequence[Prompt],
        first: Sequence[str],
        second: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """`[B, N]` score margins `score(first) - score(second)` of every RM; NaN where an RM abstains."""
        columns = [self.score_pairs(rm, prompts, first, second, references) for rm in self.reward_models]
        return torch.stack([a - b for a, b in columns], dim=1)
