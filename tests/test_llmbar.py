"""LLMBar: its pairs, its recorded judges as pairwise RMs, their cost per verdict, and the real pool's config."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from config_helpers import flatten

from rmrouter.behaviour.collect import collect_behaviour
from rmrouter.commands import instantiate
from rmrouter.data.llmbar import FULL_JUDGES, LLMBarPairs, read_verdicts
from rmrouter.data.records import as_messages
from rmrouter.reward_models import GPUTime, JudgeCall, JudgeCost, RecordedJudgeRewardModel, RewardModelPool, judge_cost

ROOT = Path(__file__).resolve().parents[1]


def row(subset, index, instruction, output_1, output_2, label, judges):
    return {"subset": subset, "index": index, "input": instruction, "output_1": output_1, "output_2": output_2,
            "label": label, "judges": judges}  # fmt: skip


@pytest.fixture
def judgements(tmp_path):
    agree_disagree = {"J/a": {"swap=False": "1", "swap=True": "1"}, "J/b": {"swap=False": "1", "swap=True": "2"}}
    rows = [
        row("LLMBar/Natural", 0, "say hi", "hi", "bye", "1", agree_disagree),
        # label 2; J/a misses one order (ineligible), J/b prefers output 2 in both
        row(
            "LLMBar/Adversarial/Manual",
            1,
            "add 2+2",
            "5",
            "4",
            "2",
            {"J/a": {"swap=False": "2", "swap=True": None}, "J/b": {"swap=False": "2", "swap=True": "2"}},
        ),
        row("LLMBar/Natural", 2, "echo", "same", "same", "1", agree_disagree),  # identical outputs: no pair
        row("Processed/MT-Bench", 3, "twice", "x", "y", "1", agree_disagree),  # the same texts twice: left out
        row("Processed/FairEval", 4, "twice", "y", "x", "2", agree_disagree),
    ]
    path = tmp_path / "judgements.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pairs_choose_the_labelled_output_with_the_subset_as_domain(judgements):
    pairs = LLMBarPairs(path=judgements).load()
    assert [(p.id, p.domain, p.chosen, p.rejected) for p in pairs] == [
        ("llmbar:natural:0", "natural", "hi", "bye"),
        ("llmbar:adv_manual:1", "adv_manual", "4", "5"),
    ]
    assert pairs[0].prompt == as_messages("say hi") and pairs[0].reference is None
    assert [p.id for p in LLMBarPairs(path=judgements, subsets=["adv_manual"]).load()] == ["llmbar:adv_manual:1"]
    with pytest.raises(ValueError, match="not LLMBar's"):
        LLMBarPairs(subsets=["nope"])


def test_a_sides_score_is_the_share_of_orders_that_preferred_it(judgements):
    agrees = RecordedJudgeRewardModel("a", "J/a", path=judgements)
    splits = RecordedJudgeRewardModel("b", "J/b", path=judgements)
    prompts = [as_messages("say hi"), as_messages("add 2+2"), as_messages("never judged")]
    first, second = ["hi", "4", "p"], ["bye", "5", "q"]
    chosen, rejected = agrees.score_pairs(prompts, first, second)
    assert chosen[0] == 1.0 and rejected[0] == 0.0  # both orders preferred output 1
    assert math.isnan(chosen[1]) and math.isnan(rejected[1])  # one order has no verdict: ineligible
    assert math.isnan(chosen[2]) and math.isnan(rejected[2])  # not in the file
    chosen, rejected = splits.score_pairs(prompts[:2], first[:2], second[:2])
    assert (chosen.tolist(), rejected.tolist()) == ([0.5, 1.0], [0.5, 0.0])  # orders disagree: margin 0
    swapped = splits.score_pairs(prompts[1:2], ["5"], ["4"])  # the pair asked the other way round
    assert (swapped[0].item(), swapped[1].item()) == (0.0, 1.0)
    assert agrees.score(prompts[:1], ["hi"]).isnan().all()  # a verdict is on a pair, never on one response
    with pytest.raises(ValueError, match="gave no verdict"):
        RecordedJudgeRewardModel("c", "J/none", path=judgements)


def test_collected_records_make_a_split_verdict_no_agreement_and_a_missing_one_ineligible(judgements, tmp_path):
    pool = RewardModelPool([RecordedJudgeRewardModel("a", "J/a", path=judgements),
                            RecordedJudgeRewardModel("b", "J/b", path=judgements)])  # fmt: skip
    records = collect_behaviour(pool, [LLMBarPairs(path=judgements)], tmp_path / "b.jsonl", table=None)
    natural, manual = records
    assert natural.agree == {"a": True, "b": False} and natural.margin["b"] == 0.0
    assert manual.eligible == {"a": False, "b": True} and manual.agree["b"]


def test_a_verdicts_cost_adds_each_calls_prompt_and_output_at_the_rates(monkeypatch):
    templates = {"aux.txt": "Q {input}", "cmp.txt": "C {input}|{output_1}|{output_2}|{auxiliary_input_0}"}
    monkeypatch.setattr(judge_cost, "prompt_template", templates.__getitem__)
    cost = JudgeCost(unit="character", input_price=2.0, output_price=10.0, source="hand",
                     calls=[JudgeCall("aux.txt", per_order=False, output_units=7),
                            JudgeCall("cmp.txt", per_order=True, output_units=3)])  # fmt: skip
    count = judge_cost.unit_counter(cost)
    assert count("a b\nc") == 3  # characters without whitespace
    # aux: reads "Q ab" = 3, writes 7, once; cmp: reads "C ab|xy|z|" = 9 + the auxiliary's 7 = 16, writes 3, twice
    expected = (3 * 2.0 + 7 * 10.0 + 2 * (16 * 2.0 + 3 * 10.0)) / 1e6
    assert judge_cost.pair_cost(cost, "ab", "xy", "z", count) == pytest.approx(expected)


def test_gpu_rates_follow_from_the_stated_assumptions():
    gpu = GPUTime(gpus=2, price_per_gpu_hour=3.6, prefill_tokens_per_second=1000.0, decode_tokens_per_second=10.0)
    assert gpu.token_prices() == pytest.approx((2.0, 200.0))  # 2 x $3.6/h = $0.002/s: $2 per 1e6 prompt tokens
    calls = [JudgeCall("cmp.txt", per_order=True, output_units=1)]
    assert JudgeCost(unit="token", gpu=gpu, source="assumed", calls=calls).rates == pytest.approx((2.0, 200.0))
    with pytest.raises(ValueError, match="either input_price and output_price, or gpu"):
        JudgeCost(unit="token", source="none", calls=calls)
    with pytest.raises(ValueError, match="must include the comparison"):
        JudgeCost(unit="token", input_price=1.0, output_price=1.0, source="x", calls=[JudgeCall("a", False, 1)])


def test_the_real_pool_config_builds_the_eight_judges_that_saw_every_pair():
    spec = yaml.safe_load((ROOT / "configs" / "pool" / "llmbar.yaml").read_text())
    pool = instantiate(spec, RewardModelPool)
    assert [rm.judge for rm in pool.reward_models] == [
        "GPT-4/Vanilla_NoRules", "GPT-4/Metrics_Reference", "ChatGPT/Vanilla_NoRules", "ChatGPT/Metrics_Reference",
        "PaLM2/Vanilla_NoRules", "PaLM2/Metrics_Reference", "LLaMA2/Vanilla_NoRules", "LLaMA2/Metrics_Reference",
    ]  # fmt: skip
    assert sorted(rm.judge for rm in pool.reward_models) == sorted(FULL_JUDGES)
    verdicts = read_verdicts()
    assert all(all(judge in instance for judge in FULL_JUDGES) for instance in verdicts.values())
    assert all(rm.cost is not None and rm.cost.source for rm in pool.reward_models)
    gpt4, chatgpt = pool.reward_models[0].cost.rates, pool.reward_models[2].cost.rates
    assert gpt4[0] / chatgpt[0] == 20  # GPT-4 reads at twenty times ChatGPT's price
    pairs = LLMBarPairs(limit=3).load()
    scores = torch.stack(
        [
            torch.stack(
                pool.score_pairs(rm, [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])
            )
            for rm in pool.reward_models
        ]
    )
    assert scores.isfinite().any() and ((scores == 0) | (scores == 0.5) | (scores == 1) | scores.isnan()).all()


def test_the_offline_router_on_the_real_pool_is_the_default_config_with_its_paths():
    """Nothing is tuned for this pool: its config differs from configs/offline_router.yaml only in what names the
    pool, its behaviour file, its held-out subsets and where the run writes."""

    default = flatten(yaml.safe_load((ROOT / "configs" / "offline_router.yaml").read_text()))
    real = flatten(yaml.safe_load((ROOT / "configs" / "offline_router_llmbar.yaml").read_text()))
    assert default.keys() == real.keys()
    changed = {key for key in default if default[key] != real[key]}
    allowed = ("rm_names", "data.init_args.path", "data.init_args.split", "dir", "init_args.command",
               "init_args.about")  # fmt: skip
    assert changed and all(key.endswith(allowed) for key in changed), sorted(changed)


def test_the_pool_report_reads_each_judges_orders_as_chosen_or_rejected(judgements, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import llmbar_pool

    verdicts = read_verdicts(judgements)
    natural, manual = LLMBarPairs(path=judgements).load()
    assert llmbar_pool.orders_of(verdicts, natural, "J/a") == ("c", "c")
    assert llmbar_pool.orders_of(verdicts, natural, "J/b") == ("c", "r")  # output 1 (chosen) first, then output 2
    assert llmbar_pool.orders_of(verdicts, manual, "J/a") is None  # one order without a verdict
    assert llmbar_pool.orders_of(verdicts, manual, "J/b") == ("c", "c")  # output 2 is the labelled one
    assert llmbar_pool._first_label(verdicts, natural) == "c" and llmbar_pool._first_label(verdicts, manual) == "r"
