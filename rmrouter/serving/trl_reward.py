"""A routed reward for TRL: one callable in `reward_funcs` that scores each prompt's completions with one RM of a pool.

    from rmrouter.serving import RoutedReward
    from trl import GRPOConfig, GRPOTrainer

    reward = RoutedReward.from_config("configs/serve.yaml")  # the pool and the router, as `cli.py serve` reads them
    trainer = GRPOTrainer(model=..., reward_funcs=reward, args=GRPOConfig(...), train_dataset=dataset)

TRL calls a reward function with `prompts`, `completions` and every other dataset column as keyword lists, one entry
per completion, and takes one float (or None: no reward) per completion. `RoutedReward` gathers the completions of each
prompt into a group (`GRPOTrainer`'s group of `num_generations`; `OnlineDPOTrainer`'s pair), lets the router choose one
RM per group, so the rewards a group is normalised over share one scale, and returns that RM's scores. A dataset
column named by `label_column` (the task, e.g. `math`) is what routing by label and the task-aware router read; one
named by `reference_column` goes to the RMs that judge against a reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import Router
from rmrouter.serving.groups import CompletionGroups
from rmrouter.serving.scorer import RoutedScorer


class RoutedReward:
    """A TRL reward function that routes each prompt's completions to one RM (see the module docstring).

    Each call logs, through TRL's `log_metric` hook where the trainer passes one (`GRPOTrainer` does), each RM's share
    of the call's groups (`routing/share/<rm>`), the completions scored per completion given (`routing/rm_calls`), and,
    with declared costs, the cost per completion (`routing/cost_per_completion`).

    Args:
        pool: The reward models.
        router: Any rmrouter router (e.g. `TaskBayesianRouter` from its prior with `online_updates: false`, or
            `DataLabelRouter`).
        label_column: The dataset column holding each prompt's data label; absent from a batch: no labels.
        reference_column: The dataset column holding each prompt's reference answer; absent: none.
        source_column: The dataset column holding each prompt's data source, for routing by source; absent: none.
    """

    __name__ = "routed_reward"  # TRL names a reward function's metrics by its __name__

    def __init__(
        self,
        pool: RewardModelPool,
        router: Router,
        label_column: str = "domain",
        reference_column: str = "reference",
        source_column: str = "source",
    ) -> None:
        self.scorer = RoutedScorer(pool, router)
        self.label_column, self.reference_column, self.source_column = label_column, reference_column, source_column

    @classmethod
    def from_config(cls, path: str | Path, **overrides: Any) -> RoutedReward:
        """The pool and router of a serve config (`configs/serve.yaml`), built as `python cli.py serve` builds them."""
        from rmrouter.serving.config import load_pool_and_router

        pool, router = load_pool_and_router(path)
        return cls(pool, router, **overrides)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], None] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        groups = CompletionGroups.of(
            prompts,
            completions,
            references=columns.get(self.reference_column),
            domains=columns.get(self.label_column),
            sources=columns.get(self.source_column),
        )
        scored = self.scorer.score(groups)
        if log_metric is not None:
            names = self.scorer.pool.names
            chosen = scored.rm_index[scored.rm_index >= 0].tolist()
            for n, name in enumerate(names):
                log_metric(f"routing/share/{name}", chosen.count(n) / max(len(groups), 1))
            log_metric("routing/rm_calls", sum(scored.scored.values()) / max(groups.size, 1))
            if scored.cost is not None:
                log_metric("routing/cost_per_completion", scored.cost / max(groups.size, 1))
        return scored.rewards
