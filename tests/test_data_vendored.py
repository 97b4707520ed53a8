"""Every loader on the data kit vendored in the package, end to end, and the real-data facts configs rely on."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import pytest

from rmrouter.data import (
    AlpacaEvalPairs,
    AlpacaEvalPrompts,
    DataError,
    GSM8KPrompts,
    GSM8KSolutionPairs,
    HHRLHFHarmlessPairs,
    MTBenchPrompts,
    PreferenceRecord,
    PromptRecord,
    vendored_path,
)

ALPACA_DOMAINS = {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}
MT_BENCH_DOMAINS = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
BEHAVIOUR_GENERATORS = ["alpaca-7b", "claude-2", "falcon-7b-instruct", "gpt-3.5-turbo-1106", "phi-2", "vicuna-7b-v1.5"]
CHAT_RM_GENERATORS = ["Mixtral-8x7B-Instruct-v0.1_concise", "OpenHermes-2.5-Mistral-7B", "alpaca-7b_verbose",
                      "gemma-2b-it", "humpback-llama2-70b", "text_davinci_003", "wizardlm-13b"]  # fmt: skip

SOURCES = [
    pytest.param(GSM8KSolutionPairs(limit=100), {"math"}, id="gsm8k-pairs"),
    pytest.param(GSM8KPrompts(limit=100), {"math"}, id="gsm8k-prompts"),
    pytest.param(HHRLHFHarmlessPairs(on_error="skip", limit=300), {"safety"}, id="hh-rlhf"),
    pytest.param(AlpacaEvalPairs(generators=["claude-2"]), ALPACA_DOMAINS, id="alpaca-reference-vs-model"),
    pytest.param(
        AlpacaEvalPairs(generators=BEHAVIOUR_GENERATORS, pairing="model_vs_model", max_pairs_per_prompt=2),
        ALPACA_DOMAINS,
        id="alpaca-mvm",
    ),
    pytest.param(AlpacaEvalPrompts(), ALPACA_DOMAINS, id="alpaca-prompts"),
    pytest.param(MTBenchPrompts(), MT_BENCH_DOMAINS, id="mt-bench"),
]


@pytest.mark.parametrize(("source", "domains"), SOURCES)
def test_vendored_default_loads(source, domains):
    assert source.path.exists() and source.path.is_relative_to(vendored_path(""))
    records = source.load()
    assert records and len({record.id for record in records}) == len(records)
    assert {record.domain for record in records} == domains
    for record in records:
        assert record.prompt and record.prompt[-1]["role"] == "user"
        assert all(message["content"].strip() for message in record.prompt)
        if isinstance(record, PreferenceRecord):
            assert record.chosen.strip() and record.rejected.strip() and record.chosen != record.rejected
    if isinstance(records[0], PromptRecord):
        assert all(record.reference for record in records) or isinstance(source, MTBenchPrompts)


def test_vendored_files_and_licences_are_shipped():
    for folder in ("gsm8k", "hh-rlhf", "alpaca_eval", "mt_bench", "llmbar"):
        assert "License" in vendored_path(f"{folder}/LICENSE").read_text()
    assert vendored_path("README.md").is_file()
    names = sorted(path.name.removesuffix(".jsonl.gz") for path in vendored_path("alpaca_eval/annotations").iterdir())
    assert names == sorted(BEHAVIOUR_GENERATORS + CHAT_RM_GENERATORS)


def test_hh_rlhf_vendored_file_needs_skip(caplog):
    with pytest.raises(DataError, match=r"harmless-base-test\.jsonl\.gz:87: field 'chosen': empty final Assistant"):
        HHRLHFHarmlessPairs().load()
    with caplog.at_level(logging.WARNING, logger="rmrouter.data.jsonl"):
        records = HHRLHFHarmlessPairs(on_error="skip").load()
    assert len(records) == 2303
    assert "skipped 9 of 2312 rows (5 x field 'rejected'" in caplog.text


def test_real_pair_counts():
    """Facts the default configs are sized on; a change here means the vendored data or a loader changed."""
    assert len(GSM8KSolutionPairs().load()) == 731
    assert len(GSM8KSolutionPairs(max_pairs_per_question=4).load()) == 2429
    assert len(GSM8KSolutionPairs(model="6b").load()) == 357  # questions where the 6B model's two solutions differ
    assert len(GSM8KSolutionPairs(model="175b").load()) == 436
    reference_pairs = AlpacaEvalPairs(generators=BEHAVIOUR_GENERATORS, min_margin=0.25).load()
    assert len(reference_pairs) == 4688
    assert Counter(record.reference for record in reference_pairs) == {None: 4688}
    model_pairs = AlpacaEvalPairs(generators=BEHAVIOUR_GENERATORS, pairing="model_vs_model", min_margin=0.25).load()
    assert len(model_pairs) == 1331
    assert all(record.reference for record in model_pairs)
    # two of the chat RM's generators have a few empty answers: read with on_error skip
    with pytest.raises(DataError, match=r"gemma-2b-it\.jsonl\.gz:\d+: field 'output_2'"):
        AlpacaEvalPairs(generators=CHAT_RM_GENERATORS).load()
    assert len(AlpacaEvalPairs(generators=CHAT_RM_GENERATORS, on_error="skip").load()) > 5000
    mt_bench = MTBenchPrompts().load()
    assert len(mt_bench) == 80
    assert {r.domain for r in mt_bench if r.reference} == {"math", "reasoning", "coding"}


def test_load_dataset_has_the_record_columns():
    pairs = GSM8KSolutionPairs(limit=8).load_dataset()
    assert isinstance(pairs, datasets.Dataset) and len(pairs) == 8
    assert pairs.column_names == ["id", "prompt", "chosen", "rejected", "domain", "source", "reference"]
    first = GSM8KSolutionPairs(limit=1).load()[0]
    assert PreferenceRecord.from_dict(pairs[0]) == first
    prompts = MTBenchPrompts(limit=3).load_dataset()
    assert prompts.column_names == ["id", "prompt", "domain", "source", "reference", "metadata"]
    assert prompts[0]["prompt"][0]["role"] == "user" and prompts["domain"] == ["writing"] * 3


def test_llmbar_vendored_gives_874_pairs_in_its_eight_subsets():
    from rmrouter.data.llmbar import DOMAINS, LLMBarPairs

    pairs = LLMBarPairs().load()
    assert len(pairs) == 874 and len({pair.id for pair in pairs}) == 874
    assert {pair.domain for pair in pairs} == set(DOMAINS.values())
    assert all(pair.chosen != pair.rejected and pair.prompt[0]["content"].strip() for pair in pairs)
