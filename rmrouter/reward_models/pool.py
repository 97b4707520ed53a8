"""A pool of reward models: the set a router chooses from, in a fixed order."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rmrouter.data.records import Prompt
from rmrouter.reward_models.base import RewardModel


class RewardModelPool(nn.Module):
    """An ordered set of reward models with unique names.

    Args:
        reward_models: The RMs, in the order routers and behaviour records use.
        costs: Each RM's cost per call, by name, in any one unit (seconds per pair, parameters, price), or the JSON
            file `benchmarks/rm_cost.py` writes (its `seconds_per_pair`, measured on a named machine); routers then
            count what their calls cost. None: no costs, only RM calls are counted.
    """

    def __init__(self, reward_models: list[RewardModel], costs: dict[str, float] | str | None = None):
        super().__init__()
        if not reward_models:
            raise ValueError("a reward-model pool needs at least one reward model")
        names = [rm.name for rm in reward_models]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"reward-model names must be unique in a pool; repeated: {duplicates}")
        self.reward_models = nn.ModuleList(reward_models)
        self.costs = None if costs is None else pool_costs(costs, names)

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


def pool_costs(costs: dict[str, float] | str, names: list[str]) -> torch.Tensor:
    """`[N]` float64 costs per call in pool order, from a mapping or a `benchmarks/rm_cost.py` JSON file."""
    where = "costs"
    if isinstance(costs, str):
        where = costs
        costs = json.loads(Path(costs).read_text(encoding="utf-8"))["seconds_per_pair"]
    missing = [name for name in names if name not in costs]
    if missing:
        raise ValueError(f"{where}: no cost for the pool's RMs {missing}")
    values = [costs[name] for name in names]
    bad = {name: value for name, value in zip(names, values, strict=True)
           if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0)}  # fmt: skip
    if bad:
        raise ValueError(f"{where}: costs must be finite numbers >= 0, got {bad}")
    return torch.tensor(values, dtype=torch.float64)
