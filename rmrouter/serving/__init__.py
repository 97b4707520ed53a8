"""Routed rewards where people already train: a TRL reward function and a reward server (OpenRLHF, verl).

`groups` holds what both share: completions gathered per prompt, one RM per group chosen by an rmrouter router.
"""

from rmrouter.serving.groups import CompletionGroups
from rmrouter.serving.scorer import GroupRewards, RoutedScorer
from rmrouter.serving.trl_reward import RoutedReward

__all__ = ["CompletionGroups", "GroupRewards", "RoutedReward", "RoutedScorer"]
