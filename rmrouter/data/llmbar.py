"""LLMBar: instruction-following pairs with an objectively better output, and the verdicts of real LLM judges on them.

`judgements.jsonl.gz` (Zeng et al., "Evaluating Large Language Models at Evaluating Instruction Following", ICLR
2024; MIT) holds 885 pairs in 8 subsets: LLMBar Natural, its four adversarial subsets (Neighbor, GPTInst, GPTOut,
Manual), and FairEval, LLMEval^2 and MT-Bench as relabelled by LLMBar's authors. `label` names the better output
(`"1"` or `"2"`); `judges` maps `<LLM>/<strategy>` to that judge's winner in both presentation orders
(`swap=False`: output 1 shown first; `swap=True`: output 2 first; the winner is always in the file's numbering;
null: no verdict). GPT-4, ChatGPT, PaLM2 and LLaMA2-70B-chat judged every pair with two strategies
(`Vanilla_NoRules`, and `Metrics_Reference`: the judge first writes questions about the instruction and a reference
output, then compares); the 419 LLMBar pairs also have 57 more judge configurations.

`LLMBarPairs` gives the pairs (the better output chosen), the subset as the domain; the judges' verdicts are read
by `rmrouter.reward_models.RecordedJudgeRewardModel`, so behaviour collection (`configs/behaviour_llmbar.yaml`) turns
them into behaviour records like any pool's.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from rmrouter.data.common import stable_hash
from rmrouter.data.jsonl import RowError, read_records, required, required_text
from rmrouter.data.records import PreferenceRecord, as_messages
from rmrouter.data.sources import PreferenceSource, vendored_path

log = logging.getLogger(__name__)

DEFAULT_PATH = "llmbar/judgements.jsonl.gz"
SOURCE = "llmbar"
# Each subset's domain: short names for tables, the adversarial ones marked.
DOMAINS = {
    "LLMBar/Natural": "natural",
    "LLMBar/Adversarial/Neighbor": "adv_neighbor",
    "LLMBar/Adversarial/GPTInst": "adv_gptinst",
    "LLMBar/Adversarial/GPTOut": "adv_gptout",
    "LLMBar/Adversarial/Manual": "adv_manual",
    "Processed/FairEval": "faireval",
    "Processed/LLMEval^2": "llmeval2",
    "Processed/MT-Bench": "mt_bench",
}
# The judges that gave verdicts on every pair (a verdict may still be null): the default real pool.
FULL_JUDGES = (
    "GPT-4/Vanilla_NoRules",
    "GPT-4/Metrics_Reference",
    "ChatGPT/Vanilla_NoRules",
    "ChatGPT/Metrics_Reference",
    "PaLM2/Vanilla_NoRules",
    "PaLM2/Metrics_Reference",
    "LLaMA2/Vanilla_NoRules",
    "LLaMA2/Metrics_Reference",
)
ORDERS = ("swap=False", "swap=True")


def text_key(instruction: str, first: str, second: str) -> str:
    """What identifies a pair's texts: a judge keyed by texts finds a pair's verdicts by it, in either order."""
    return stable_hash(instruction, first, second)


def parse_row(row: dict[str, Any]) -> list[PreferenceRecord]:
    """One LLMBar instance as a pair, the labelled output chosen; nothing for a pair of two identical outputs."""
    subset = required_text(row, "subset")
    if subset not in DOMAINS:
        raise RowError("subset", f"{subset!r} is not one of LLMBar's subsets {sorted(DOMAINS)}")
    instruction = required_text(row, "input")
    outputs = [required(row, "output_1"), required(row, "output_2")]
    if not all(isinstance(output, str) for output in outputs):
        raise RowError("output_1", "both outputs must be strings (an empty output is a valid, bad answer)")
    label = required(row, "label")
    if label not in ("1", "2"):
        raise RowError("label", f"expected '1' or '2', got {label!r}")
    if outputs[0] == outputs[1]:
        return []  # no preference between identical texts (1 instance of the file)
    chosen, rejected = (outputs[0], outputs[1]) if label == "1" else (outputs[1], outputs[0])
    return [
        PreferenceRecord(
            id=f"llmbar:{DOMAINS[subset]}:{required(row, 'index')}",
            prompt=as_messages(instruction),
            chosen=chosen,
            rejected=rejected,
            domain=DOMAINS[subset],
            source=f"{SOURCE}/{DOMAINS[subset]}",
        )
    ]


class LLMBarPairs(PreferenceSource):
    """LLMBar's pairs, the better output chosen, the subset (`DOMAINS`) as the domain; no reference answer.

    Pairs whose texts (instruction and both outputs) occur in another instance too are left out (5 texts, 10
    instances of the file, logged): the judges' verdicts are found by the texts alone, and two instances with one
    text would be confused. The instance with two identical outputs is left out too: 874 pairs remain.

    Args:
        subsets: Keep only these domains (`DOMAINS`' values); None keeps all eight.
        **kwargs: The arguments of `Source`: `path` (None reads the vendored file), `limit`, `on_error`, `split`,
            `split_fractions`, `split_seed`, `subsplit` and `subsplit_fractions`.
    """

    default_path = DEFAULT_PATH

    def __init__(self, subsets: list[str] | None = None, **kwargs: Any):
        unknown = sorted(set(subsets or []) - set(DOMAINS.values()))
        if unknown:
            raise ValueError(f"subsets {unknown} are not LLMBar's; choose among {list(DOMAINS.values())}")
        super().__init__(**kwargs)
        self.subsets = list(subsets) if subsets is not None else None

    def read(self) -> list[PreferenceRecord]:
        records = read_records(self.path, parse_row, self.on_error)
        counts = Counter(map(_unordered_key, records))
        ambiguous = [record.id for record in records if counts[_unordered_key(record)] > 1]
        if ambiguous:
            log.info("%s: left out %d pairs whose texts occur in another instance too (%s)", self.path,
                     len(ambiguous), ", ".join(ambiguous))  # fmt: skip
        return [record for record in records if record.id not in ambiguous
                and (self.subsets is None or record.domain in self.subsets)]  # fmt: skip


def _unordered_key(record: PreferenceRecord) -> str:
    return text_key(record.prompt[0]["content"], *sorted((record.chosen, record.rejected)))


@lru_cache(maxsize=4)
def read_verdicts(path: str | Path | None = None) -> dict[str, dict[str, dict[str, str | None]]]:
    """Every instance's verdicts by `text_key(input, output_1, output_2)`: judge -> order -> winner ("1", "2" or
    None). Read once per file and process (the judges of a pool share it)."""
    path = Path(path) if path is not None else vendored_path(DEFAULT_PATH)

    def parse(row: dict[str, Any]) -> list[tuple[str, dict]]:
        judges = required(row, "judges")
        if not isinstance(judges, dict):
            raise RowError("judges", f"expected an object of judge -> verdicts, got {type(judges).__name__}")
        key = text_key(required_text(row, "input"), required(row, "output_1"), required(row, "output_2"))
        return [(key, judges)]

    return dict(read_records(path, parse, "raise"))
