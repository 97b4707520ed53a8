"""Downstream evaluation: the metrics, known-answer policies through `Evaluation` and through Lightning's `test`, the
baseline cache, and `test` on an online DPO checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch import Trainer

from rmrouter.data.prompt_datamodule import PromptDataModule
from rmrouter.data.records import PromptRecord, as_messages
from rmrouter.data.sources import PromptSource
from rmrouter.evaluation import Evaluation, gsm8k_correct, length_controlled_win_rate, win_outcome
from rmrouter.evaluation.evaluation import summarise
from rmrouter.evaluation.generate import greedy_responses
from rmrouter.modules.policy_evaluation import PolicyEvaluationModule
from rmrouter.policy import generation as gen
from rmrouter.reward_models.base import RewardModel


def test_gsm8k_correct_reads_the_final_number():
    assert gsm8k_correct("3 + 4 = 7, so the answer is 7.", "She has 3+4 = 7 apples.\n#### 7")
    assert not gsm8k_correct("The answer is 8.", "#### 7")
    assert not gsm8k_correct("no number here", "#### 7")
    assert not gsm8k_correct("7", "a reference without a number")


def test_win_outcome_counts_ties_as_half():
    assert win_outcome(2.0, 1.0, same_text=False) == 1.0
    assert win_outcome(1.0, 2.0, same_text=False) == 0.0
    assert win_outcome(1.0, 1.0, same_text=False) == 0.5
    assert win_outcome(5.0, 1.0, same_text=True) == 0.5  # the same answer cannot beat itself


def test_length_control_removes_a_pure_length_preference():
    # The judge's preference depends on the length difference alone (even odds at equal length), and the policy's
    # answers are longer on most prompts: its raw win rate is well above 1/2, its length-controlled rate is 1/2.
    generator = torch.Generator().manual_seed(0)
    differences = torch.randn(4000, generator=generator) * 20 + 15
    spread = differences.std()
    p_win = torch.sigmoid(2.0 * torch.tanh(differences / spread))
    outcomes = (torch.rand(4000, generator=generator) < p_win).float().tolist()
    raw = sum(outcomes) / len(outcomes)
    controlled = length_controlled_win_rate(outcomes, differences.tolist())
    assert raw > 0.65
    assert controlled == pytest.approx(0.5, abs=0.03)


def test_length_control_keeps_a_preference_that_length_does_not_explain():
    generator = torch.Generator().manual_seed(0)
    differences = (torch.randn(400, generator=generator) * 30).tolist()
    outcomes = (torch.rand(400, generator=generator) < 0.7).float().tolist()  # wins 70 %, whatever the length
    assert length_controlled_win_rate(outcomes, differences) == pytest.approx(sum(outcomes) / 400, abs=0.03)
    # no length differs: the rate itself (the length weight stays 0)
    assert length_controlled_win_rate([1.0, 0.0, 1.0, 1.0], [0.0] * 4) == pytest.approx(0.75, abs=0.01)
    assert length_controlled_win_rate([0.5] * 5, [3.0, -1.0, 2.0, 0.0, 1.0]) == pytest.approx(0.5)
    assert math.isnan(length_controlled_win_rate([], []))


class LengthJudge(RewardModel):
    """Longer is better."""

    def _score(self, prompts, responses, references):
        return torch.tensor([float(len(r)) for r in responses])


def math_record(i: int, answer: int) -> PromptRecord:
    question = f"Tom has {answer - 1} apples and finds one. How many now? ({i})"
    return PromptRecord(
        f"gsm8k:{i}", as_messages(question), "math", "gsm8k/test", f"{answer - 1}+1={answer}\n#### {answer}"
    )


def chat_record(i: int) -> PromptRecord:
    return PromptRecord(f"chat:{i}", as_messages(f"Say something kind ({i})"), "helpful_base", "alpaca_eval/reference")


def records() -> list[PromptRecord]:
    return [math_record(i, 10 + i) for i in range(4)] + [chat_record(i) for i in range(3)]


def answers_by_prompt(tokenizer, table: dict[str, str]):
    """A `Generate` whose answer to a prompt is looked up by the prompt's text (a policy with known answers)."""
    by_ids = {tuple(gen.prompt_ids(tokenizer, [as_messages(q)], 512)[0]): a for q, a in table.items()}

    def generate(prompts, max_new_tokens):
        return [by_ids[tuple(prompt)] for prompt in prompts]

    return generate


def oracle_tables(rows: list[PromptRecord], right: bool, long_chat: bool) -> dict[str, str]:
    table = {}
    for record in rows:
        question = record.prompt[-1]["content"]
        if record.reference:
            number = int(record.reference.rsplit("#### ", 1)[1])
            table[question] = f"The answer is {number if right else number + 1}."
        else:
            table[question] = "A long and very kind answer." if long_chat else "Kind."
    return table


def evaluate(tiny_tokenizer, policy_table, base_table, tmp_path=None):
    evaluation = Evaluation(judge=LengthJudge("length-judge"), batch_size=2)
    evaluation.start()
    batch = records()
    evaluation.add_batch(batch, tiny_tokenizer, answers_by_prompt(tiny_tokenizer, policy_table),
                         answers_by_prompt(tiny_tokenizer, base_table), "base")  # fmt: skip
    return evaluation.finish(evaluation.rows, tmp_path, "test")


def test_a_policy_always_right_scores_100_and_one_never_right_0(tiny_tokenizer, tmp_path):
    batch = records()
    right, wrong = oracle_tables(batch, True, True), oracle_tables(batch, False, False)
    metrics = evaluate(tiny_tokenizer, right, wrong, tmp_path)
    assert metrics["gsm8k/accuracy"] == 1.0
    assert metrics["gsm8k/base_accuracy"] == 0.0
    assert metrics["gsm8k/rows"] == 4
    assert metrics["chat/win_rate"] == 1.0  # every answer longer, and the judge likes length
    assert metrics["alpaca_eval/rows"] == 3
    assert metrics["chat/lc_win_rate"] > 0.5
    assert evaluate(tiny_tokenizer, wrong, right)["gsm8k/accuracy"] == 0.0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and {row["task"] for row in rows} == {"gsm8k", "win_rate"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "GSM8K (greedy, final number): 100.0 %" in (tmp_path / "report.md").read_text()


def test_a_policy_against_itself_ties_everywhere(tiny_tokenizer):
    same = oracle_tables(records(), True, False)
    metrics = evaluate(tiny_tokenizer, same, same)
    assert metrics["chat/win_rate"] == 0.5
    assert metrics["chat/same_as_base"] == 1.0
    assert metrics["chat/lc_win_rate"] == pytest.approx(0.5)


def test_the_baseline_cache_generates_each_answer_once(tiny_tokenizer, tmp_path):
    calls = []
    table = oracle_tables(records(), True, False)
    lookup = answers_by_prompt(tiny_tokenizer, table)

    def baseline(prompts, max_new_tokens):
        calls.append(len(prompts))
        return lookup(prompts, max_new_tokens)

    cache = tmp_path / "base.jsonl"
    for _ in range(2):
        evaluation = Evaluation(judge=LengthJudge("length-judge"), base_cache=str(cache))
        evaluation.start()
        evaluation.add_batch(records(), tiny_tokenizer, lookup, baseline, "base|32-true")
        assert [row["base"] for row in evaluation.rows] == [row["policy"] for row in evaluation.rows]
    assert calls == [4, 3]  # the first run: the GSM8K prompts, then the judged ones; the second: none
    with open(cache, "a") as file:
        file.write('{"key": "torn')  # a crash mid-line: that line is ignored, the rest is kept
    evaluation = Evaluation(judge=LengthJudge("length-judge"), base_cache=str(cache))
    evaluation.add_batch(records(), tiny_tokenizer, lookup, baseline, "base|32-true")
    assert calls == [4, 3]


def test_greedy_responses_keep_the_order_and_match_generate_one_by_one(tiny_causal_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir).train()
    prompts = gen.prompt_ids(
        tokenizer, [as_messages("hi"), as_messages("a longer question here"), as_messages("x")], 64
    )
    batched = greedy_responses(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    alone = [greedy_responses(model, tokenizer, [prompt], max_new_tokens=6, batch_size=1)[0] for prompt in prompts]
    assert batched == alone
    assert model.training  # put back in the mode it was in


def test_summarise_groups_by_dataset():
    rows = [
        {"task": "win_rate", "dataset": "alpaca_eval", "outcome": 1.0, "policy": "ab", "base": "a",
         "policy_length": 2, "base_length": 1},
        {"task": "win_rate", "dataset": "mt_bench", "outcome": 0.0, "policy": "a", "base": "ab",
         "policy_length": 1, "base_length": 2},
    ]  # fmt: skip
    metrics = summarise(rows)
    assert metrics["alpaca_eval/win_rate"] == 1.0 and metrics["mt_bench/win_rate"] == 0.0
    assert metrics["chat/win_rate"] == 0.5 and metrics["chat/rows"] == 2
    assert "gsm8k/accuracy" not in metrics


class KnownPrompts(PromptSource):
    def read(self):
        return records()


class OraclePolicy(PolicyEvaluationModule):
    """The tiny model's module, answering from a table: always right on GSM8K."""

    def evaluated_models(self):
        batch = records()
        policy = answers_by_prompt(self.tokenizer, oracle_tables(batch, True, True))
        base = answers_by_prompt(self.tokenizer, oracle_tables(batch, False, False))
        return policy, base, "oracle-base"


def test_lightning_test_runs_the_evaluation_and_writes_its_files(tiny_causal_lm_dir, tmp_path):
    module = OraclePolicy(tiny_causal_lm_dir, Evaluation(judge=LengthJudge("length-judge"), batch_size=3),
                          baseline=tiny_causal_lm_dir)  # fmt: skip
    data = PromptDataModule(test=[KnownPrompts(path="unused")], test_batch_size=3)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (result,) = trainer.test(module, datamodule=data)
    assert result["test/gsm8k/accuracy"] == 1.0
    assert result["test/gsm8k/base_accuracy"] == 0.0
    assert result["test/chat/win_rate"] == 1.0
    assert json.loads((tmp_path / "evaluation" / "metrics.json").read_text())["gsm8k/rows"] == 4


def test_the_tiny_model_is_evaluated_against_itself(tiny_causal_lm_dir, tmp_path):
    module = PolicyEvaluationModule(tiny_causal_lm_dir, Evaluation(judge=LengthJudge("j"), max_new_tokens=4,
                                    math_max_new_tokens=4, batch_size=4), baseline=tiny_causal_lm_dir)  # fmt: skip
    data = PromptDataModule(test=[KnownPrompts(path="unused")], test_batch_size=4)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (result,) = trainer.test(module, datamodule=data)
    assert result["test/chat/win_rate"] == 0.5 and result["test/chat/same_as_base"] == 1.0


def test_a_smoke_run_writes_no_evaluation(tiny_causal_lm_dir, tmp_path):
    module = OraclePolicy(tiny_causal_lm_dir, Evaluation(judge=LengthJudge("j")), baseline=tiny_causal_lm_dir)
    data = PromptDataModule(test=[KnownPrompts(path="unused")], test_batch_size=8)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, fast_dev_run=True,
                      default_root_dir=tmp_path)  # fmt: skip
    trainer.test(module, datamodule=data)
    assert not (tmp_path / "evaluation").exists()


def test_test_without_an_evaluation_says_what_to_compose(tiny_causal_lm_dir, tmp_path):
    module = PolicyEvaluationModule(tiny_causal_lm_dir, None, baseline=tiny_causal_lm_dir)
    data = PromptDataModule(test=[KnownPrompts(path="unused")])
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="configs/evaluation/downstream.yaml"):
        trainer.test(module, datamodule=data)


def test_fit_and_test_name_the_prompts_they_miss():
    with pytest.raises(ValueError, match="`train` to fit, `test` to evaluate"):
        PromptDataModule()
    data = PromptDataModule(test=[KnownPrompts(path="unused")])
    with pytest.raises(ValueError, match="data.init_args.train"):
        data.setup("fit")
