"""Reward models whose scores are known by hand: letter counts and exact match with the reference."""

from __future__ import annotations

import torch

from rmrouter.reward_models.base import RewardModel


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
