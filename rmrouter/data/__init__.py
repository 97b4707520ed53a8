"""The shared data layer: records, JSON-lines reading with located errors, sources, splits and the loaders."""

from rmrouter.data.alpaca_eval import AlpacaEvalPairs, AlpacaEvalPrompts
from rmrouter.data.gsm8k import GSM8KPrompts, GSM8KSolutionPairs
from rmrouter.data.hh_rlhf import HHRLHFHarmlessPairs, HHRLHFHarmlessPrompts
from rmrouter.data.jsonl import DataError, OnError, RowError, read_records, write_jsonl
from rmrouter.data.llmbar import LLMBarPairs
from rmrouter.data.mt_bench import MTBenchPrompts
from rmrouter.data.records import Message, PreferenceRecord, Prompt, PromptRecord, as_messages, as_text
from rmrouter.data.sources import (
    PreferenceSource,
    PromptSource,
    Source,
    assign_split,
    records_to_dataset,
    vendored_path,
)

__all__ = [
    "AlpacaEvalPairs",
    "AlpacaEvalPrompts",
    "DataError",
    "GSM8KPrompts",
    "GSM8KSolutionPairs",
    "HHRLHFHarmlessPairs",
    "HHRLHFHarmlessPrompts",
    "LLMBarPairs",
    "MTBenchPrompts",
    "Message",
    "OnError",
    "PreferenceRecord",
    "PreferenceSource",
    "Prompt",
    "PromptRecord",
    "PromptSource",
    "RowError",
    "Source",
    "as_messages",
    "as_text",
    "assign_split",
    "read_records",
    "records_to_dataset",
    "vendored_path",
    "write_jsonl",
]
