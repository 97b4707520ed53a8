"""Anthropic HH-RLHF harmlessness preferences (safety domain).

Each row's `chosen` and `rejected` hold the whole dialogue (`\\n\\nHuman: ... \\n\\nAssistant: ...`) and differ only
in the last Assistant turn, so a pair is made by splitting both at that turn: the shared prefix becomes the prompt (as
chat messages), the two final turns the responses. In the vendored test file 9 of 2,312 rows are not usable that way
(5 whose prefixes differ, 4 whose chosen final turn is empty): read it with `on_error="skip"`.
"""

from __future__ import annotations

import re
from typing import Any

from rmrouter.data.common import early_limit, stable_hash
from rmrouter.data.jsonl import RowError, read_records, required_text
from rmrouter.data.records import Message, PreferenceRecord, PromptRecord
from rmrouter.data.sources import PreferenceSource, PromptSource

SOURCE = "hh-rlhf/harmless-base"
PROMPTS_SOURCE = "hh-rlhf/harmless-base-prompts"
LAST_TURN = "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant):")
ROLES = {"Human": "user", "Assistant": "assistant"}


def split_last_turn(dialogue: str) -> tuple[str, str]:
    """(everything before the last `\\n\\nAssistant:`, the stripped text after it); ValueError without one."""
    prefix, separator, final = dialogue.rpartition(LAST_TURN)
    if not separator:
        raise ValueError("no '\\n\\nAssistant:' turn")
    return prefix, final.strip()


def parse_dialogue(prefix: str) -> list[Message]:
    """The turns of a `\\n\\nHuman: ... \\n\\nAssistant: ...` transcript as chat messages; ValueError if malformed.

    Consecutive turns of one speaker are merged into one message: a few HH-RLHF transcripts repeat an Assistant
    turn, and chat templates require the roles to alternate.
    """
    parts = TURN.split(prefix)
    if parts[0].strip():
        raise ValueError("text before the first Human turn")
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        role, content = ROLES[speaker], content.strip()
        if not content:
            raise ValueError(f"empty {speaker} turn at message {len(messages) + 1}")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the dialogue before the last Assistant turn does not end with a Human turn")
    return messages


def parse_harmless_pair(row: dict[str, Any]) -> list[PreferenceRecord]:
    """One HH-RLHF `{chosen, rejected}` row as a pair; nothing when both final turns are the same text."""
    turns: dict[str, tuple[str, str]] = {}
    for field in ("chosen", "rejected"):
        dialogue = required_text(row, field)
        try:
            turns[field] = split_last_turn(dialogue)
        except ValueError as error:
            raise RowError(field, str(error)) from None
    (prefix, chosen), (rejected_prefix, rejected) = turns["chosen"], turns["rejected"]
    if rejected_prefix != prefix:
        raise RowError("rejected", "the dialogue before the last Assistant turn differs from the one in 'chosen'")
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if not text:
            raise RowError(field, "empty final Assistant turn")
    if chosen == rejected:
        return []
    try:
        prompt = parse_dialogue(prefix)
    except ValueError as error:
        raise RowError("chosen", str(error)) from None
    return [
        PreferenceRecord(
            id=f"hh-rlhf:{stable_hash(row['chosen'], row['rejected'])}",
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            domain="safety",
            source=SOURCE,
        )
    ]


class HHRLHFHarmlessPairs(PreferenceSource):
    """HH-RLHF harmless-base pairs: the dialogue so far as the prompt, the two final Assistant turns as responses.

    There is no reference answer. Ids are `hh-rlhf:<sha1(chosen + rejected)[:12]>`. The vendored test file has 9
    unusable rows (see the module docstring), so configs that read it need `on_error: skip`.

    Args:
        path: An HH-RLHF `{chosen, rejected}` JSON-lines file; None reads the vendored `harmless-base` test split.
        limit: Keep at most this many records (after the split is applied).
        on_error: `raise` stops at the first bad row naming file, line and field; `skip` drops and counts them.
        split: Keep only this split (a key of `split_fractions`); None keeps every record.
        split_fractions: Relative sizes of the splits, e.g. `{train: 0.5, test: 0.5}`, or a scheme of `SPLIT_SCHEMES`.
        split_seed: Seed of the split assignment.
    """

    default_path = "hh-rlhf/harmless-base-test.jsonl.gz"

    def read(self) -> list[PreferenceRecord]:
        return read_records(self.path, parse_harmless_pair, self.on_error, early_limit(self))


def parse_harmless_prompt(row: dict[str, Any]) -> list[PromptRecord]:
    """The dialogue before one HH-RLHF row's last Assistant turn, as a prompt (no reference answer)."""
    dialogue = required_text(row, "chosen")
    try:
        prompt = parse_dialogue(split_last_turn(dialogue)[0])
    except ValueError as error:
        raise RowError("chosen", str(error)) from None
    return [
        PromptRecord(
            id=f"hh-rlhf:{stable_hash(dialogue)}",
            prompt=prompt,
            domain="safety",
            source=PROMPTS_SOURCE,
        )
    ]


class HHRLHFHarmlessPrompts(PromptSource):
    """HH-RLHF harmless-base dialogues, up to their last Human turn, as prompts for online training (safety domain).

    Many are red-teaming requests a harmless policy should decline. Ids are `hh-rlhf:<sha1(chosen)[:12]>`. A few
    vendored rows have malformed dialogues (see the module docstring): read it with `on_error: skip`.

    Args:
        path: An HH-RLHF `{chosen, rejected}` JSON-lines file; None reads the vendored `harmless-base` test split.
        limit: Keep at most this many records (after the split is applied).
        on_error: `raise` stops at the first bad row naming file, line and field; `skip` drops and counts them.
        split: Keep only this split (a key of `split_fractions`); None keeps every record.
        split_fractions: Relative sizes of the splits, e.g. `{train: 0.5, test: 0.5}`, or a scheme of `SPLIT_SCHEMES`.
        split_seed: Seed of the split assignment.
    """

    default_path = HHRLHFHarmlessPairs.default_path

    def read(self) -> list[PromptRecord]:
        return read_records(self.path, parse_harmless_prompt, self.on_error, early_limit(self))
