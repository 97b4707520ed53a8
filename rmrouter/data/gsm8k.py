"""GSM8K: correct-vs-incorrect model solutions as preference pairs (math domain), and test questions as prompts.

`example_model_solutions.jsonl.gz` holds four real model solutions per test question, each marked correct or not
against a verified ground truth; a pair is a correct solution (chosen) against an incorrect one (rejected) for the
same question. Only 731 of the 1,319 questions have both kinds.

Two GPT-3 models wrote the solutions, 6B and 175B parameters, each twice (a fine-tuned sample and the sample its
verifier picked). Pairs may be restricted to one model's two solutions, e.g. to train on one model's answers and
evaluate on the other's.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from rmrouter.data.common import check_positive, early_limit, seeded_pick, stable_hash
from rmrouter.data.jsonl import RowError, read_records, required, required_text
from rmrouter.data.records import PreferenceRecord, PromptRecord, as_messages
from rmrouter.data.sources import PreferenceSource, PromptSource

SOLUTION_KEYS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
Model = Literal["6b", "175b"]
MODELS: tuple[Model, ...] = ("6b", "175b")
PAIRS_SOURCE = "gsm8k/example_model_solutions"
PROMPTS_SOURCE = "gsm8k/test"


def _solution(row: dict[str, Any], key: str) -> tuple[str, bool]:
    """(solution text, is_correct) of one model's entry, with errors naming e.g. `6b_finetuning.solution`."""
    entry = required(row, key)
    if not isinstance(entry, dict):
        raise RowError(key, f"expected an object with 'solution' and 'is_correct', got {type(entry).__name__}")
    try:
        text = required_text(entry, "solution")
    except RowError as error:
        raise RowError(f"{key}.{error.field}", error.problem) from None
    is_correct = entry.get("is_correct")
    if not isinstance(is_correct, bool):
        problem = "missing" if is_correct is None else f"expected true or false, got {type(is_correct).__name__}"
        raise RowError(f"{key}.is_correct", problem)
    return text, is_correct


def pairs_source(model: Model | None) -> str:
    """The `source` of the pairs: `gsm8k/example_model_solutions`, with `/<model>` when one model wrote both sides."""
    return PAIRS_SOURCE if model is None else f"{PAIRS_SOURCE}/{model}"


def parse_solution_pairs(
    row: dict[str, Any], max_pairs_per_question: int = 1, model: Model | None = None
) -> list[PreferenceRecord]:
    """The correct-vs-incorrect pairs of one question of `example_model_solutions.jsonl.gz`.

    Args:
        row: One JSON object with `question`, `ground_truth` and the four `SOLUTION_KEYS`.
        max_pairs_per_question: Keep at most this many of the question's pairs, chosen by a seed derived from the
            question, so the choice is the same on every run.
        model: Pair only the solutions of this model (`6b` or `175b`); None pairs any two of the four.

    Returns:
        Nothing when every solution is correct, every one is wrong, or every correct one is textually identical to
        every wrong one (a filter, not an error).
    """
    question = required_text(row, "question")
    ground_truth = required_text(row, "ground_truth")
    solutions = {key: _solution(row, key) for key in SOLUTION_KEYS}
    keys = [key for key in SOLUTION_KEYS if model is None or key.startswith(f"{model}_")]
    candidates = [
        (good, bad)
        for good in keys
        if solutions[good][1]
        for bad in keys
        if not solutions[bad][1] and solutions[good][0].strip() != solutions[bad][0].strip()
    ]
    question_hash = stable_hash(question)
    return [
        PreferenceRecord(
            id=f"gsm8k:{question_hash}:{good}>{bad}",
            prompt=as_messages(question),
            chosen=solutions[good][0],
            rejected=solutions[bad][0],
            domain="math",
            source=pairs_source(model),
            reference=ground_truth,
        )
        for good, bad in seeded_pick(candidates, max_pairs_per_question, question_hash)
    ]


def parse_question(row: dict[str, Any]) -> list[PromptRecord]:
    """One GSM8K `{question, answer}` row as a prompt whose reference is the worked answer (ending `#### n`)."""
    question = required_text(row, "question")
    answer = required_text(row, "answer")
    return [
        PromptRecord(
            id=f"gsm8k:{stable_hash(question)}",
            prompt=as_messages(question),
            domain="math",
            source=PROMPTS_SOURCE,
            reference=answer,
        )
    ]


class GSM8KSolutionPairs(PreferenceSource):
    """Correct-vs-incorrect GSM8K model solutions; the reference is the verified ground-truth solution.

    Record ids are `gsm8k:<sha1(question)[:12]>:<chosen key>><rejected key>`, e.g.
    `gsm8k:0a1b2c3d4e5f:175b_verification>6b_finetuning`; the source is `pairs_source(model)`.

    Args:
        max_pairs_per_question: At most this many pairs per question (each question has at most 4: 2 correct x 2
            wrong); which ones is fixed by a hash of the question.
        model: Pair only the two solutions of this model (`6b` or `175b`), so a question yields at most one pair;
            None pairs any two of the four.
        **kwargs: The arguments of `Source`: `path` (an `example_model_solutions.jsonl(.gz)` file; None reads the
            vendored copy), `limit`, `on_error`, `split`, `split_fractions`, `split_seed`, `subsplit` and
            `subsplit_fractions`.
    """

    default_path = "gsm8k/example_model_solutions.jsonl.gz"

    def __init__(
        self,
        max_pairs_per_question: int = 1,
        model: Model | None = None,
        **kwargs: Any,
    ):
        check_positive("max_pairs_per_question", max_pairs_per_question)
        if model is not None and model not in MODELS:
            raise ValueError(f"model must be one of {MODELS} or None (any two of the four solutions), got {model!r}")
        super().__init__(**kwargs)
        self.max_pairs_per_question = max_pairs_per_question
        self.model = model

    def read(self) -> list[PreferenceRecord]:
        parse = partial(parse_solution_pairs, max_pairs_per_question=self.max_pairs_per_question, model=self.model)
        return read_records(self.path, parse, self.on_error, early_limit(self))


class GSM8KPrompts(PromptSource):
    """GSM8K questions as prompts for online training, the worked answer (ending `#### n`) as reference.

    Args:
        path: A GSM8K `{question, answer}` JSON-lines file; None reads the vendored test split.
        limit: Keep at most this many records (after the split is applied).
        on_error: `raise` stops at the first bad row naming file, line and field; `skip` drops and counts them.
        split: Keep only this split (a key of `split_fractions`); None keeps every record.
        split_fractions: Relative sizes of the splits, e.g. `{train: 0.5, test: 0.5}`, or a scheme of `SPLIT_SCHEMES`.
        split_seed: Seed of the split assignment.
    """

    default_path = "gsm8k/test.jsonl.gz"

    def read(self) -> list[PromptRecord]:
        return read_records(self.path, parse_question, self.on_error, early_limit(self))
