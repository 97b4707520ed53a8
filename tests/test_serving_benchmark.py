"""The serving benchmark's payloads and its accuracy check, on hand-built pairs."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from rmrouter.data.records import PreferenceRecord

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def serving(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("serving")


def test_each_pair_is_sent_as_one_prompt_with_the_preferred_completion_first(serving):
    pairs = [PreferenceRecord(f"p{i}", [{"role": "user", "content": f"q{i}"}], f"good{i}", f"bad{i}", "math", "s",
                              "ref" if i == 0 else None) for i in range(5)]  # fmt: skip
    payloads = serving.requests_of(pairs, 2)
    assert len(payloads) == 2  # the fifth pair does not fill a request
    assert payloads[0]["completions"] == ["good0", "bad0", "good1", "bad1"]
    assert payloads[0]["prompts"][0] == payloads[0]["prompts"][1] != payloads[0]["prompts"][2]
    assert payloads[0]["references"] == ["ref", "ref", None, None] and payloads[1]["domains"] == ["math"] * 4


def test_a_pair_is_right_where_the_preferred_completion_is_rewarded_higher(serving):
    assert serving.credit([2.0, 1.0, 1.0, 2.0, 1.0, 1.0, None, 3.0]) == [1.0, 0.0, 0.5, 0.0]
