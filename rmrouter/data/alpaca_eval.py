"""AlpacaEval: GPT-4-turbo judgements turned into preference pairs, and the instruction set as prompts.

Each `annotations/<generator>.jsonl.gz` row compares a model's answer (`output_2`) with the GPT-4-turbo reference
answer (`output_1`); `preference` in [1, 2] is near 1 when the judge preferred the reference, near 2 when it preferred
the model. It is strongly bimodal: on the six vendored generators 90 % of values are below 1.08 and 5 % above 1.65,
and about 3 % fall within 0.25 of 1.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from rmrouter.data.common import check_positive, early_limit, seeded_pick, stable_hash
from rmrouter.data.jsonl import DataError, RowError, read_records, required, required_text
from rmrouter.data.records import PreferenceRecord, PromptRecord, as_messages
from rmrouter.data.sources import PreferenceSource, PromptSource

Pairing = Literal["reference_vs_model", "model_vs_model"]
SUFFIX = ".jsonl.gz"


@dataclass(frozen=True)
class Judgement:
    """One annotation row: how the judge rated `generator`'s `output` against the `reference` answer."""

    instruction: str
    dataset: str
    reference: str
    generator: str
    output: str
    preference: float


def parse_judgement(row: dict[str, Any]) -> list[Judgement]:
    """One annotation row, checked: every text present and `preference` a number in [1, 2]."""
    preference = required(row, "preference")
    if isinstance(preference, bool) or not isinstance(preference, (int, float)):
        raise RowError("preference", f"expected a number in [1, 2], got {type(preference).__name__}")
    if not 1.0 <= preference <= 2.0:  # also rejects NaN
        raise RowError("preference", f"{preference} is outside [1, 2]")
    return [
        Judgement(
            instruction=required_text(row, "instruction"),
            dataset=required_text(row, "dataset"),
            reference=required_text(row, "output_1"),
            generator=required_text(row, "generator_2"),
            output=required_text(row, "output_2"),
            preference=float(preference),
        )
    ]


def reference_vs_model_pair(judgement: Judgement, min_margin: float) -> list[PreferenceRecord]:
    """The judged pair itself, or nothing for a near-tie (|preference - 1.5| <= `min_margin`) or identical texts.

    The record carries no reference: one side IS the reference answer, so a reference-based RM would be shown
    the answer to its own question.
    """
    if abs(judgement.preference - 1.5) <= min_margin or judgement.output.strip() == judgement.reference.strip():
        return []
    model_won = judgement.preference > 1.5
    return [
        PreferenceRecord(
            id=f"alpaca_eval:{stable_hash(judgement.instruction)}:{judgement.generator}",
            prompt=as_messages(judgement.instruction),
            chosen=judgement.output if model_won else judgement.reference,
            rejected=judgement.reference if model_won else judgement.output,
            domain=judgement.dataset,
            source=f"alpaca_eval/{judgement.generator}",
        )
    ]


def parse_reference_vs_model(row: dict[str, Any], min_margin: float) -> list[PreferenceRecord]:
    """Row parser of the `reference_vs_model` pairing: one annotation row, at most one pair."""
    return [pair for judgement in parse_judgement(row) for pair in reference_vs_model_pair(judgement, min_margin)]


def model_vs_model_pairs(
    judgements: list[Judgement], min_margin: float, max_pairs: int | None = None
) -> list[PreferenceRecord]:
    """Pairs between the answers of two generators to one instruction, judged against the same reference.

    The answer the judge preferred more strongly against the reference is chosen; pairs whose preferences differ by
    `min_margin` or less, and pairs of identical texts, are dropped. The reference is kept for the RMs, since
    neither side is the reference. At most `max_pairs` survive, chosen by a seed derived from the instruction.
    """
    ordered = sorted(judgements, key=lambda judgement: judgement.generator)
    candidates = [
        (first, second)
        for i, first in enumerate(ordered)
        for second in ordered[i + 1 :]
        if first.generator != second.generator
        and abs(first.preference - second.preference) > min_margin
        and first.output.strip() != second.output.strip()
    ]
    if not candidates:
        return []
    instruction_hash = stable_hash(ordered[0].instruction)
    records = []
    for first, second in seeded_pick(candidates, max_pairs, instruction_hash):
        chosen, rejected = (first, second) if first.preference > second.preference else (second, first)
        name = f"{first.generator}-vs-{second.generator}"
        records.append(
            PreferenceRecord(
                id=f"alpaca_eval:{instruction_hash}:{name}",
                prompt=as_messages(first.instruction),
                chosen=chosen.output,
                rejected=rejected.output,
                domain=first.dataset,
                source=f"alpaca_eval/{name}",
                reference=first.reference,
            )
        )
    return records


def parse_reference_output(row: dict[str, Any]) -> list[PromptRecord]:
    """One `reference_outputs` row as a prompt; its reference is the GPT-4-turbo answer."""
    instruction = required_text(row, "instruction")
    return [
        PromptRecord(
            id=f"alpaca_eval:{stable_hash(instruction)}",
            prompt=as_messages(instruction),
            domain=required_text(row, "dataset"),
            source="alpaca_eval/reference",
            reference=required_text(row, "output"),
        )
    ]


class AlpacaEvalPairs(PreferenceSource):
    """Preference pairs from AlpacaEval annotations; `domain` is the instruction's subset (`koala`, `oasst`, ...).

    `reference_vs_model` yields one pair per annotation row, the GPT-4-turbo reference against the model's answer,
    with no reference attached (one side is the reference); the judge prefers the reference 84-98 % of the time, so
    the chosen side is lopsided. `model_vs_model` pairs two non-reference generators' answers to the same
    instruction, chosen = the one the judge preferred more against the reference, and keeps the reference.

    Records always store chosen and rejected in that order: consumers that show the two sides in order (a judge
    prompt, a pairwise RM) must shuffle the sides, or position bias will look like skill.

    Args:
        generators: Which annotation files to read (`<path>/<name>.jsonl.gz`); None reads every one in `path`.
        pairing: `reference_vs_model` or `model_vs_model`, as above.
        min_margin: Near-tie threshold. `reference_vs_model` drops rows with |preference - 1.5| <= min_margin;
            `model_vs_model` drops pairs whose two preferences differ by min_margin or less.
        max_pairs_per_prompt: `model_vs_model` only: at most this many pairs per instruction (None: all), chosen by
            a seed derived from the instruction.
        **kwargs: The arguments of `Source`: `path` (the annotations folder, or one annotation file, and then
            `generators` must be None; None reads the vendored folder), `limit`, `on_error`, `split`,
            `split_fractions`, `split_seed`, `subsplit` and `subsplit_fractions`.
    """

    default_path = "alpaca_eval/annotations"

    def __init__(
        self,
        generators: list[str] | None = None,
        pairing: Pairing = "reference_vs_model",
        min_margin: float = 0.25,
        max_pairs_per_prompt: int | None = None,
        **kwargs: Any,
    ):
        if pairing not in ("reference_vs_model", "model_vs_model"):
            raise ValueError(f"pairing must be 'reference_vs_model' or 'model_vs_model', got {pairing!r}")
        top = 0.5 if pairing == "reference_vs_model" else 1.0  # preferences lie in [1, 2]
        if not 0.0 <= min_margin < top:
            raise ValueError(f"min_margin must be in [0, {top}) for {pairing}, got {min_margin}")
        if generators is not None and len(set(generators)) != len(generators):
            raise ValueError(f"generators lists a name twice: {generators}")
        check_positive("max_pairs_per_prompt", max_pairs_per_prompt)
        super().__init__(**kwargs)
        self.generators = generators
        self.pairing = pairing
        self.min_margin = min_margin
        self.max_pairs_per_prompt = max_pairs_per_prompt

    def files(self) -> list[Path]:
        """The annotation files to read, in the order of `generators` (sorted by name when None)."""
        if self.path.is_file():
            if self.generators is not None:
                raise ValueError(f"{self.path} is one file; set path to its folder to choose generators")
            return [self.path]
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such annotations folder or file")
        available = sorted(file.name[: -len(SUFFIX)] for file in self.path.glob(f"*{SUFFIX}"))
        missing = sorted(set(self.generators or []) - set(available))
        if missing or not available:
            raise DataError(f"{self.path}: no annotations for {missing or 'any generator'}; available: {available}")
        return [self.path / f"{name}{SUFFIX}" for name in (self.generators or available)]

    def read(self) -> list[PreferenceRecord]:
        if self.pairing == "reference_vs_model":
            parse = partial(parse_reference_vs_model, min_margin=self.min_margin)
            records: list[PreferenceRecord] = []
            limit = early_limit(self)
            for file in self.files():
                remaining = None if limit is None else limit - len(records)
                if remaining == 0:
                    break
                records.extend(read_records(file, parse, self.on_error, remaining))
            return records
        # Pairs need every generator's answer to an instruction, so all files are read before any pair is made.
        groups: dict[tuple[str, str], list[Judgement]] = {}
        for file in self.files():
            for judgement in read_records(file, parse_judgement, self.on_error):
                groups.setdefault((judgement.instruction, judgement.reference), []).append(judgement)
        return [
            record
            for judgements in groups.values()
            for record in model_vs_model_pairs(judgements, self.min_margin, self.max_pairs_per_prompt)
        ]


class AlpacaEvalPrompts(PromptSource):
    """The 805 AlpacaEval instructions as prompts, the GPT-4-turbo answer as reference, the subset as domain.

    Args:
        path: A `reference_outputs` JSON-lines file; None reads the vendored copy.
        limit: Keep at most this many records (after the split is applied).
        on_error: `raise` stops at the first bad row naming file, line and field; `skip` drops and counts them.
        split: Keep only this split (a key of `split_fractions`); None keeps every record.
        split_fractions: Relative sizes of the splits, e.g. `{train: 0.5, test: 0.5}`, or a scheme of `SPLIT_SCHEMES`.
        split_seed: Seed of the split assignment.
    """

    default_path = "alpaca_eval/reference_outputs.jsonl.gz"

    def read(self) -> list[PromptRecord]:
        return read_records(self.path, parse_reference_output, self.on_error, early_limit(self))
