"""MT-Bench: the first turn of its 80 questions as prompts, with GPT-4 reference answers where MT-Bench has them.

The category (writing, roleplay, reasoning, math, coding, extraction, stem, humanities) is the domain. Only the 30
math, reasoning and coding questions have a reference answer (`reference_answer_gpt-4.jsonl`); the rest have None,
which reference-based reward models treat as "abstain".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from rmrouter.data.jsonl import RowError, read_records, required, required_text
from rmrouter.data.records import PromptRecord, as_messages
from rmrouter.data.sources import PromptSource

SOURCE = "mt_bench"
REFERENCES_FILE = "reference_answer_gpt-4.jsonl"


def _question_id(row: dict[str, Any]) -> int:
    question_id = required(row, "question_id")
    if isinstance(question_id, bool) or not isinstance(question_id, int):
        raise RowError("question_id", f"expected an integer, got {type(question_id).__name__}")
    return question_id


def _first_turn(turns: Any, field: str) -> str:
    if not isinstance(turns, list) or not turns:
        raise RowError(field, "expected a non-empty list of turns")
    if not isinstance(turns[0], str) or not turns[0].strip():
        raise RowError(field, "the first turn is not a non-empty text")
    return turns[0]


def record_id(question_id: int) -> str:
    return f"{SOURCE}:{question_id}"


def parse_question(row: dict[str, Any]) -> list[PromptRecord]:
    """One `question.jsonl` row as a prompt of its first turn, without reference (see `parse_reference`)."""
    question_id = _question_id(row)
    return [
        PromptRecord(
            id=record_id(question_id),
            prompt=as_messages(_first_turn(required(row, "turns"), "turns")),
            domain=required_text(row, "category"),
            source=SOURCE,
        )
    ]


def parse_reference(row: dict[str, Any]) -> list[tuple[str, str]]:
    """One reference-answer row as (record id, first turn of its first choice)."""
    question_id = _question_id(row)
    choices = required(row, "choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise RowError("choices", "expected a non-empty list of {index, turns} objects")
    return [(record_id(question_id), _first_turn(choices[0].get("turns"), "choices.turns"))]


class MTBenchPrompts(PromptSource):
    """MT-Bench first-turn prompts; ids are `mt_bench:<question_id>`.

    Args:
        references_path: A `reference_answer_gpt-4.jsonl` file; None uses the one next to the questions file when
            there is one (and no references when there is none).
        **kwargs: The arguments of `Source`: `path` (a `question.jsonl` file; None reads the vendored copy),
            `limit`, `on_error` (it applies to both files), `split`, `split_fractions`, `split_seed`, `subsplit` and
            `subsplit_fractions`.
    """

    default_path = "mt_bench/question.jsonl"

    def __init__(
        self,
        references_path: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        sibling = self.path.parent / REFERENCES_FILE
        if references_path is not None:
            self.references_path: Path | None = Path(references_path)
        else:
            self.references_path = sibling if sibling.is_file() else None

    def read(self) -> list[PromptRecord]:
        # The 80 questions are read whole: `limit` is cheap to apply afterwards, and `load` does it.
        records = read_records(self.path, parse_question, self.on_error)
        if self.references_path is None:
            return records
        references = dict(read_records(self.references_path, parse_reference, self.on_error))
        return [dataclasses.replace(record, reference=references.get(record.id)) for record in records]
