"""RoutedReward inside real TRL trainers: a GRPOTrainer step and an OnlineDPOTrainer step on a tiny random model."""

from __future__ import annotations

import os

import pytest
from serving_helpers import label_router, letter_pool

from rmrouter.serving import RoutedReward

pytest.importorskip("trl")

PROMPTS = [  # distinct prompts: completions of one prompt form one group (identical prompts would share one)
    {"prompt": [{"role": "user", "content": f"Count the {letter}'s, {i}."}], "domain": f"{letter}-task", "answer": None}
    for i in range(4)
    for letter in "ab"
]


class Recording(RoutedReward):
    """Keeps every call's keyword columns and rewards, and the metrics logged through TRL's hook."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[dict] = []
        self.metrics: dict[str, float] = {}

    def __call__(self, prompts, completions, log_metric=None, **columns):
        def record(name, value):
            self.metrics[name] = value
            if log_metric is not None:
                log_metric(name, value)

        rewards = super().__call__(prompts, completions, log_metric=record, **columns)
        self.calls.append({"prompts": prompts, "completions": completions, "domain": columns.get("domain"),
                           "rewards": rewards})  # fmt: skip
        return rewards


def tiny_policy(path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def check_routed(reward: Recording, group_size: int) -> None:
    """Every call's completions were grouped by prompt, and each group scored by its label's RM."""
    assert reward.calls
    for call in reward.calls:
        for prompt, completion, domain, value in zip(call["prompts"], call["completions"], call["domain"],
                                                     call["rewards"], strict=True):  # fmt: skip
            text = completion if isinstance(completion, str) else completion[-1]["content"]
            letter = {"a-task": "a", "b-task": "b"}[domain]
            assert value == float(text.count(letter)), (prompt, text, domain)
        assert len(call["prompts"]) % group_size == 0
    assert reward.scorer.groups_routed == sum(len(c["prompts"]) for c in reward.calls) // group_size


def test_a_grpo_trainer_step_takes_its_rewards_from_the_routed_rm_of_each_group(tmp_path, tiny_causal_lm_dir):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = tiny_policy(tiny_causal_lm_dir)
    reward = Recording(letter_pool(costs={"a": 1.0, "b": 2.0, "ref": 0.0}), label_router(), reference_column="answer")
    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=1,
                        max_completion_length=6, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
                        disable_tqdm=True, seed=0, dataloader_num_workers=0)  # fmt: skip
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(PROMPTS),
                          processing_class=tokenizer)  # fmt: skip
    trainer.train()
    check_routed(reward, group_size=2)
    logged = {key for entry in trainer.state.log_history for key in entry}
    # TRL's metric hook carries each RM's share and the cost into the trainer's logs
    assert {"routing/share/a", "routing/share/b", "routing/cost_per_completion"} <= logged
    assert "rewards/routed_reward/mean" in logged


def test_an_online_dpo_trainer_step_routes_each_pair(tmp_path, tiny_causal_lm_dir):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    model, tokenizer = tiny_policy(tiny_causal_lm_dir)
    reward = Recording(letter_pool(), label_router(), reference_column="answer")
    config = OnlineDPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, max_new_tokens=6,
                             use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                             missing_eos_penalty=None, gradient_checkpointing=False, dataloader_num_workers=0,
                             seed=0)  # fmt: skip
    trainer = OnlineDPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(PROMPTS),
                               processing_class=tokenizer)  # fmt: skip
    trainer.train()
    check_routed(reward, group_size=2)  # Online DPO: two completions per prompt, one pair, one RM
