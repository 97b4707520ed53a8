"""A rule-based verifier for GSM8K-style maths: does the response's final number match the reference's?"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import torch

from rmrouter.data.records import Message
from rmrouter.reward_models.base import RewardModel

# A number as written in GSM8K text: optional minus and dollar sign, thousands commas, decimals. The look-behind
# keeps `16-3` from reading as `-3` and `v1.5` or `x2` from reading as numbers.
_NUMBER = re.compile(r"(?<![\w.])(-?)\$?((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
# GSM8K's calculator annotations `<<9*2=18>>` repeat numbers of the working, not the answer.
_CALCULATOR = re.compile(r"<<[^<>]*>>")
# Explicit answer markers, most explicit first; the number is the first one after the marker's last occurrence.
_MARKERS = (
    re.compile(r"####"),  # GSM8K train/test answers
    re.compile(r"\\boxed\{"),  # LaTeX-style model outputs
    re.compile(r"answer is", re.IGNORECASE),
    re.compile(r"(?<![A-Za-z])A:"),  # GSM8K example model solutions
)


def normalise_number(text: str) -> str | None:
    """`"1,234.50"` -> `"1234.5"`, `"18.00"` -> `"18"`, `"-0"` -> `"0"`; None when `text` is not a number."""
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return normalise_number(match.group(1) + match.group(2)) if match else None


def final_number(text: str) -> str | None:
    """The final answer of a GSM8K-style solution, normalised; None when the text has no number.

    Looks, in order, for `#### n`, `\\boxed{n}`, `... answer is n` and `A: n` (the first number on the line after
    the marker's last occurrence), then falls back to the last number in the text. Commas, `$`, units and a final
    `.` are dropped; `18.0` reads as `18`; negatives and decimals are kept.
    """
    text = _CALCULATOR.sub(" ", text)
    for marker in _MARKERS:
        matches = list(marker.finditer(text))
        if matches:
            line = text[matches[-1].end() :].split("\n", 1)[0]
            number = _first_number(line)
            if number is not None:
                return number
    numbers = list(_NUMBER.finditer(text))
    return normalise_number(numbers[-1].group(1) + numbers[-1].group(2)) if numbers else None


class GSM8KVerifierRewardModel(RewardModel):
    """1.0 when the response's final number equals the reference's, else 0.0 (also when the response has none).

    Abstains (NaN) on rows whose reference has no number, and on rows without a reference.

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
    """

    needs_reference = True

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        scores = []
        for response, reference in zip(responses, references, strict=True):
            expected = final_number(reference)
            if expected is None:
                scores.append(float("nan"))
            else:
                scores.append(float(final_number(response) == expected))
        return torch.tensor(scores)
