"""The policy core every entry point shares: building the policy and its reference, and DPO on routed labels."""

from __future__ import annotations

import math

import pytest
import torch

from rmrouter.policy.core import build_policy, dpo_on_labels
from rmrouter.routers.base import PairBatch

LORA = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}


def token_pairs() -> PairBatch:
    return PairBatch(
        prompts=[[]] * 3, first=["a", "b", "c"], second=["d", "e", "f"], references=[None] * 3, domains=["x"] * 3,
        prompt_ids=[[5, 6, 7], [5, 6], [8, 9]], first_ids=[[10, 11], [12], [13, 14]], second_ids=[[15], [16, 17], [18]],
    )  # fmt: skip


def test_a_lora_policy_has_no_copy_and_a_full_finetune_a_frozen_one(tiny_causal_lm_dir):
    policy, reference = build_policy(tiny_causal_lm_dir, LORA, torch.float32, seed=0)
    assert reference is None and policy.training
    assert {n for n, p in policy.named_parameters() if p.requires_grad} and all(
        "lora_" in n for n, p in policy.named_parameters() if p.requires_grad
    )
    again, _ = build_policy(tiny_causal_lm_dir, LORA, torch.float32, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), again.parameters(), strict=True))  # seeded
    policy, reference = build_policy(tiny_causal_lm_dir, None, torch.float32)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert build_policy(tiny_causal_lm_dir, None, torch.float32, with_reference=False)[1] is None


def test_chosen_and_rejected_follow_each_routed_label():
    chosen, rejected = token_pairs().chosen_and_rejected([0, 2], torch.tensor([1.0, 0.0, -1.0]))
    assert chosen == [[10, 11], [18]] and rejected == [[15], [13, 14]]
    with pytest.raises(ValueError, match="token ids"):
        PairBatch([[]], ["a"], ["b"], [None], ["x"]).chosen_and_rejected([0], torch.tensor([1.0]))


def test_dpo_on_labels_trains_the_labelled_pairs_and_leaves_nan_elsewhere(tiny_causal_lm_dir, monkeypatch):
    policy, reference = build_policy(tiny_causal_lm_dir, LORA, torch.float32, seed=0)
    kwargs = {"pad_id": 0, "beta": 0.1, "loss_type": "sigmoid", "keep_logits": True}
    preference = torch.tensor([1.0, 0.0, -1.0])
    step = dpo_on_labels(policy, reference, token_pairs(), [0, 2], preference, **kwargs)
    assert step.pairs_trained == 2 and step.losses[1].isnan()
    # the policy starts as its reference (the adapter's B is zero): every trained loss is log 2
    torch.testing.assert_close(step.losses[[0, 2]], torch.full((2,), math.log(2)))
    sides, _, responses = step.trained_sides()
    assert sides.requires_grad and responses == [[10, 11], [18], [15], [13, 14]]  # chosen, then rejected

    from rmrouter.policy import core

    logprobs = core.policy_and_reference_logprobs

    def first_row_nan(*args):
        policy_logps, reference_logps = logprobs(*args)
        return policy_logps + torch.tensor([float("nan"), 0.0, 0.0, 0.0]), reference_logps

    monkeypatch.setattr(core, "policy_and_reference_logprobs", first_row_nan)
    step = dpo_on_labels(policy, reference, token_pairs(), [0, 2], preference, **kwargs)
    assert step.losses.isnan().tolist() == [True, True, False] and step.pairs_trained == 1
    assert step.trained_sides()[2] == [[18], [13, 14]]  # the NaN pair is left out of what is logged
    assert dpo_on_labels(policy, reference, token_pairs(), [], torch.zeros(3), **kwargs).pairs_trained == 0
