"""The records every data path in rmrouter speaks: a preference pair and a prompt for online training."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Message = dict[str, str]
Prompt = str | list[Message]


def as_messages(prompt: Prompt) -> list[Message]:
    """A prompt as chat messages: plain text becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(message) for message in prompt]


def as_text(prompt: Prompt) -> str:
    """A prompt as plain text, for models without a chat template: turns joined with their roles."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in prompt)


@dataclass(frozen=True)
class PreferenceRecord:
    """One labelled preference pair: `chosen` is preferred over `rejected` for `prompt`.

    Args:
        id: Unique within its source, stable across runs (used for splits and resume).
        prompt: The conversation so far, as chat messages (plain text is one user turn).
        chosen: The preferred response.
        rejected: The other response.
        domain: What kind of pair this is (`math`, `safety`, an AlpacaEval subset, ...).
        source: Where it came from (file or data set name).
        reference: A reference answer, when one exists and may be shown to reward models.
    """

    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    domain: str
    source: str
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> PreferenceRecord:
        return cls(**{**row, "prompt": as_messages(row["prompt"])})


@dataclass(frozen=True)
class PromptRecord:
    """One prompt for online training.

    Args:
        id: Unique within its source, stable across runs.
        prompt: The conversation so far, as chat messages.
        domain: What kind of prompt this is (`math`, an AlpacaEval subset, an MT-Bench category, ...).
        source: Where it came from.
        reference: A reference answer, when the source has one.
        metadata: Anything else the source knows (e.g. MT-Bench's question id).
    """

    id: str
    prompt: list[Message]
    domain: str
    source: str
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
