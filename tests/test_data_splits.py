"""Deterministic, seeded splits: `assign_split` itself and a source restricted to one split."""

from __future__ import annotations

from collections import Counter

import pytest
from data_helpers import write_lines

from rmrouter.data import AlpacaEvalPairs, GSM8KPrompts, assign_split
from rmrouter.data.sources import split_key

IDS = [f"source:{i:05d}" for i in range(10_000)]
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_assign_split_is_deterministic_and_seed_dependent():
    first = [assign_split(record_id, FRACTIONS, seed=0) for record_id in IDS[:1000]]
    assert first == [assign_split(record_id, FRACTIONS, seed=0) for record_id in IDS[:1000]]
    other_seed = [assign_split(record_id, FRACTIONS, seed=1) for record_id in IDS[:1000]]
    # Two independent 80/10/10 draws agree on 0.8^2 + 2 * 0.1^2 = 66 % of ids.
    assert 0.55 < sum(a == b for a, b in zip(first, other_seed, strict=True)) / 1000 < 0.77


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [(FRACTIONS, FRACTIONS), ({"a": 1.0, "b": 3.0}, {"a": 0.25, "b": 0.75}), ({"only": 2.0}, {"only": 1.0})],
)
def test_assign_split_respects_fractions(fractions, expected):
    counts = Counter(assign_split(record_id, fractions, seed=7) for record_id in IDS)
    assert set(counts) == set(expected)
    for name, share in expected.items():
        assert abs(counts[name] / len(IDS) - share) < 0.02


def test_two_split_schemes_over_the_same_rows_are_independent_at_the_same_seed():
    """A source's {behaviour, ood} split, then a DataModule's train/val/test split of the behaviour rows."""
    behaviour = [key for key in IDS if assign_split(key, {"behaviour": 0.5, "ood": 0.5}, seed=0) == "behaviour"]
    counts = Counter(assign_split(key, FRACTIONS, seed=0) for key in behaviour)
    for name, share in FRACTIONS.items():
        assert abs(counts[name] / len(behaviour) - share) < 0.03, counts
    # the same scheme resized moves only the rows it must: a larger train split keeps every train row
    larger = {"train": 0.9, "val": 0.05, "test": 0.05}
    assert all(assign_split(key, larger, 0) == "train" for key in IDS if assign_split(key, FRACTIONS, 0) == "train")


@pytest.mark.parametrize("fractions", [{}, {"a": 0.0}, {"a": -0.1, "b": 1.0}])
def test_assign_split_refuses_bad_fractions(fractions):
    with pytest.raises(ValueError, match="split fractions"):
        assign_split("x", fractions, seed=0)


@pytest.fixture
def questions(tmp_path) -> str:
    rows = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"} for i in range(300)]
    return write_lines(tmp_path / "questions.jsonl", rows)


def test_splits_of_a_source_are_disjoint_and_cover_it(questions):
    every = {record.id for record in GSM8KPrompts(path=questions).load()}
    parts = {
        name: [record.id for record in GSM8KPrompts(path=questions, split=name, split_fractions=FRACTIONS).load()]
        for name in FRACTIONS
    }
    assert all(parts.values())
    assert sum(len(ids) for ids in parts.values()) == len(every) == 300
    assert set().union(*parts.values()) == every
    reseeded = GSM8KPrompts(path=questions, split="train", split_fractions=FRACTIONS, split_seed=1).load()
    assert [record.id for record in reseeded] != parts["train"]


def test_limit_applies_after_the_split(questions):
    whole = GSM8KPrompts(path=questions, split="test", split_fractions=FRACTIONS).load()
    limited = GSM8KPrompts(path=questions, split="test", split_fractions=FRACTIONS, limit=5).load()
    assert limited == whole[:5]
    assert all(assign_split(split_key(record), FRACTIONS, 0) == "test" for record in limited)
    assert len(GSM8KPrompts(path=questions, limit=5).load()) == 5


def test_unknown_split_is_refused(questions):
    with pytest.raises(ValueError, match="split 'dev' is not one of"):
        GSM8KPrompts(path=questions, split="dev", split_fractions=FRACTIONS)


def test_pairs_that_share_a_prompt_share_a_split():
    """Several generators answer each AlpacaEval instruction: no instruction may be both trained and tested on."""
    splits = {
        name: AlpacaEvalPairs(split=name, split_fractions=FRACTIONS, generators=["alpaca-7b", "phi-2"]).load()
        for name in FRACTIONS
    }
    prompts = {name: {split_key(pair) for pair in pairs} for name, pairs in splits.items()}
    assert all(prompts.values())
    assert not prompts["train"] & prompts["test"]
    assert sum(len(pairs) for pairs in splits.values()) > sum(len(p) for p in prompts.values())  # prompts repeat


def test_a_named_split_scheme_splits_exactly_as_its_fractions():
    from rmrouter.data.sources import SPLIT_SCHEMES

    named = GSM8KPrompts(split="behaviour", split_fractions="gsm8k").load()
    spelt = GSM8KPrompts(split="behaviour", split_fractions=dict(SPLIT_SCHEMES["gsm8k"])).load()
    assert named and [record.id for record in named] == [record.id for record in spelt]
    with pytest.raises(ValueError, match="split_fractions 'gsm8kk' names no split scheme: use one of"):
        GSM8KPrompts(split="behaviour", split_fractions="gsm8kk")
