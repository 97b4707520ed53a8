"""Helpers shared by the router tests: toy pairs where RM 0 is right on math prompts and RM 1 on the others."""

from __future__ import annotations

import random

from rmrouter.routers.base import PairBatch

RMS = ["math_rm", "chat_rm"]
WORDS = "sea bread dog river song cake tree blue quick lazy brown".split()


def make_pairs(rng: random.Random, size: int) -> PairBatch:
    """Half math prompts (RM 0 is right on them), half chat prompts (RM 1 is right)."""
    prompts, first, second = [], [], []
    for _ in range(size):
        if rng.random() < 0.5:
            prompts.append(f"math: compute {rng.randint(1, 99)} + {rng.randint(1, 99)} * {rng.randint(1, 9)}")
        else:
            prompts.append(f"tell me about the {' '.join(rng.sample(WORDS, 3))}")
        first.append(" ".join(rng.sample(WORDS, 4)))
        second.append(" ".join(rng.sample(WORDS, 4)))
    messages = [[{"role": "user", "content": p}] for p in prompts]
    return PairBatch(messages, first, second, [None] * size, ["toy"] * size)
