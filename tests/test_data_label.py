"""Routing by data label (the verl/open-instruct baseline) on hand-built rows."""

from __future__ import annotations

import pytest
import torch

from rmrouter.routers.data_label import OVERALL, DataLabelRouting, dataset_of, rank_rms

T, F = True, False


def test_rank_rms_by_accuracy_on_judged_rows_then_coverage_then_index():
    right = torch.tensor([[T, T, F, F], [F, T, F, F], [T, F, F, F]])
    eligible = torch.tensor([[T, T, T, F], [F, T, T, F], [T, T, T, F]])
    # accuracy on judged rows: 2/2, 2/3, 0/3, never judged (last)
    assert rank_rms(right, eligible) == [0, 1, 2, 3]
    # equal accuracy: the RM that judged more rows first, then pool order
    assert rank_rms(torch.tensor([[T, T, T], [F, F, F]]), torch.tensor([[T, T, T], [F, T, T]])) == [0, 1, 2]
    assert rank_rms(torch.tensor([[T, T], [F, F]]), torch.tensor([[T, T], [T, T]])) == [0, 1]


def test_routes_by_domain_else_dataset_else_overall_to_the_first_eligible_rm():
    # RMs: 0 verifier (needs a reference), 1 length, 2 safety
    domains = ["math", "math", "safety", "safety", "koala", "oasst"]
    sources = ["gsm8k/x", "gsm8k/x", "hh-rlhf/h", "hh-rlhf/h", "alpaca_eval/a", "alpaca_eval/b"]
    right = torch.tensor([[T, F, F], [T, T, F], [F, F, T], [F, T, T], [F, T, F], [F, T, T]])
    eligible = torch.tensor([[T, T, T], [T, T, T], [F, T, T], [F, T, T], [F, T, T], [F, T, T]])
    routing = DataLabelRouting.fit(domains, sources, right, eligible)
    assert routing.describe(["verifier", "length", "safety"]) == {
        "*": "verifier", "dataset:alpaca_eval": "length", "dataset:gsm8k": "verifier", "dataset:hh-rlhf": "safety",
        "domain:koala": "length", "domain:math": "verifier", "domain:oasst": "length", "domain:safety": "safety",
    }  # fmt: skip
    new = DataLabelRouting.route(
        routing,
        ["math", "math", "helpful_base", "code", "safety"],
        ["gsm8k/y", "gsm8k/y", "alpaca_eval/c", "elsewhere", "hh-rlhf/h"],
        torch.tensor([[T, T, T], [F, T, T], [F, T, T], [F, T, T], [F, F, F]]),
    )
    # math: verifier; math without a reference: the next of math's ranking (length); an unseen AlpacaEval subset:
    # alpaca_eval's best; an unseen dataset: the overall ranking (the verifier, 2 of 2, cannot judge it: length);
    # no RM can judge it: -1
    assert new.tolist() == [0, 1, 1, 1, -1]
    assert routing.ranking("unseen", "nowhere") == routing.rankings[OVERALL]


def test_dataset_is_the_first_part_of_the_source_and_bad_shapes_are_refused():
    assert dataset_of("alpaca_eval/claude-2-vs-phi-2") == "alpaca_eval" and dataset_of("gsm8k") == "gsm8k"
    with pytest.raises(ValueError, match="one domain and source per row"):
        DataLabelRouting.fit(
            ["math"], ["gsm8k"], torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="at least one training row"):
        DataLabelRouting.fit([], [], torch.ones(0, 2, dtype=torch.bool), torch.ones(0, 2, dtype=torch.bool))
