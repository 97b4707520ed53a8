"""A pairwise LLM judge whose verdicts were recorded: LLMBar's GPT-4, ChatGPT, PaLM2 and LLaMA2 judges as RMs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rmrouter.data.llmbar import ORDERS, read_verdicts, text_key
from rmrouter.data.records import Message, Prompt, as_messages
from rmrouter.reward_models.base import RewardModel
from rmrouter.reward_models.judge_cost import JudgeCost, pair_cost, unit_counter


class RecordedJudgeRewardModel(RewardModel):
    """One judge configuration of LLMBar's recorded verdicts (`rmrouter.data.llmbar`), as a pairwise RM.

    A side's score is the share of the two presentation orders in which the judge preferred it, so the margin is +1
    or -1 when both orders agree and 0 when they disagree (a position-biased verdict, which behaviour records count
    as not agreeing with the label). A pair the judge has no verdict on in either order (or that is not in the file)
    gets NaN on both sides: the judge is ineligible there. It judges pairs only: `score` of single responses
    abstains.

    Args:
        name: How this RM is called in pools, behaviour records and tables.
        judge: The judge configuration, `<LLM>/<strategy>`, e.g. `GPT-4/Vanilla_NoRules`.
        path: The judgements file; None reads the vendored one.
        cost: What one verdict costs (`JudgeCost`); None: not priced.
    """

    def __init__(self, name: str, judge: str, path: str | None = None, cost: JudgeCost | None = None):
        super().__init__(name)
        verdicts = read_verdicts(path)
        known = {judge for instance in verdicts.values() for judge in instance}
        if judge not in known:
            raise ValueError(f"{name}: judge {judge!r} gave no verdict in the file; its judges: {sorted(known)}")
        self.judge, self.path, self.cost = judge, path, cost

    def score_pairs(
        self,
        prompts: Sequence[Prompt],
        first: Sequence[str],
        second: Sequence[str],
        references: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._shares(instruction(prompt), a, b) for prompt, a, b in zip(prompts, first, second, strict=True)]
        scores = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 2)
        return scores[:, 0], scores[:, 1]

    def _shares(self, instruction: str, first: str, second: str) -> tuple[float, float]:
        verdicts = read_verdicts(self.path)
        found = verdicts.get(text_key(instruction, first, second))
        names = ("1", "2")
        if found is None:
            found, names = verdicts.get(text_key(instruction, second, first)), ("2", "1")
        orders = (found or {}).get(self.judge) or {}
        winners = [orders.get(order) for order in ORDERS]
        if found is None or None in winners:
            return float("nan"), float("nan")
        return tuple(sum(winner == name for winner in winners) / len(winners) for name in names)

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        return torch.full((len(responses),), float("nan"))  # a verdict is on a pair, never on one response

    def cost_per_pair(self, prompt: Prompt, first: str, second: str) -> float:
        """USD of this judge's verdict on a pair (both orders), by `cost`; NaN when unpriced."""
        if self.cost is None:
            return float("nan")
        return pair_cost(self.cost, instruction(prompt), first, second, unit_counter(self.cost))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, judge={self.judge!r}"


def instruction(prompt: Prompt) -> str:
    """The instruction a judge saw: the prompt's one user turn (LLMBar's instances are single-turn)."""
    messages = as_messages(prompt)
    if len(messages) != 1 or messages[0]["role"] != "user":
        return "\n\n".join(message["content"] for message in messages)  # not an LLMBar pair: found in no file
    return messages[0]["content"]
