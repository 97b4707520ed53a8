"""The one interface every reward model (RM) in rmrouter implements.

Routers and the online loop see only `score(prompts, responses, references) -> Tensor[batch]`: a float per
response, higher is better, under `torch.no_grad`. An RM that cannot judge a row returns NaN for it (it
abstains); in particular an RM with `needs_reference = True` abstains on every row whose reference is None,
and its `_score` never sees those rows. Callers treat NaN as "this RM gave no preference" (never as a tie
that favours either side).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from rmrouter.data.records import Message, Prompt, as_messages


class RewardModel(nn.Module, ABC):
    """Base class: subclasses implement `_score` on rows that are ready to be scored.

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
    """

    needs_reference: bool = False

    def __init__(self, name: str):
        super().__init__()
        if not name:
            raise ValueError("a reward model needs a non-empty name")
        self.name = name

    @property
    def device(self) -> torch.device:
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def can_judge(self, reference: str | None) -> bool:
        """Whether this RM can score a row with this reference answer (None: the row has none).

        Routers ask this before choosing an RM, so a pair never goes to an RM that would abstain on it.
        """
        return reference is not None or not self.needs_reference

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[Prompt],
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """Scores each (prompt, response) pair; returns float32 `[len(responses)]` on the CPU, NaN = abstain."""
        if len(prompts) != len(responses):
            raise ValueError(f"{self.name}: got {len(prompts)} prompts for {len(responses)} responses")
        if references is None:
            references = [None] * len(responses)
        elif len(references) != len(responses):
            raise ValueError(f"{self.name}: got {len(references)} references for {len(responses)} responses")
        scores = torch.full((len(responses),), float("nan"))
        rows = [i for i, reference in enumerate(references) if self.can_judge(reference)]
        if rows:
            was_training = self.training
            self.eval()
            try:
                scored = self._score(
                    [as_messages(prompts[i]) for i in rows], [responses[i] for i in rows], [references[i] for i in rows]
                )
            finally:
                self.train(was_training)
            scores[rows] = scored.detach().float().cpu()
        return scores

    def score_pairs(
        self,
        prompts: Sequence[Prompt],
        first: Sequence[str],
        second: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides of each pair, `(scores of first, scores of second)`, from one `score` call over the 2B rows.

        A pairwise judge, which sees both responses at once (an LLM judge comparing two outputs), overrides this:
        its score of a side depends on the other side.
        """
        references = list(references) if references is not None else [None] * len(first)
        scores = self.score(list(prompts) * 2, list(first) + list(second), references * 2)
        return scores[: len(first)], scores[len(first) :]

    @abstractmethod
    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        """Scores rows that this RM can judge (references are all set when `needs_reference`)."""

    def extra_repr(self) -> str:
        return f"name={self.name!r}"
