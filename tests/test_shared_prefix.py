"""Shared-prefix log-probs equal the whole-row ones they replace, values and gradients (models.shared_prefix)."""

from __future__ import annotations

import pytest
import torch

from rmrouter.models.shared_prefix import continuation_logprobs, group_prefixes, shares_prefixes
from rmrouter.policy import generation as gen

PROMPTS = [[1, 5, 7, 9, 11], [1, 4], [1, 5, 7, 9, 11], [1, 4], [1, 8, 8, 3, 2, 6, 7]]
RESPONSES = [[20, 21, 22], [23], [24, 25, 26, 27, 28, 2], [29, 30, 2], [31, 32]]


def whole_rows(model, prompts, responses, average=False):
    """The exact form: every row's prompt + response in one right-padded forward."""
    ids, attention, mask = gen.right_pad_sequences(prompts, responses, pad_id=0)
    from rmrouter.dpo import response_logprobs

    return response_logprobs(model(input_ids=ids, attention_mask=attention).logits, ids, mask, average)


@pytest.fixture
def lora_policy(tiny_causal_lm_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, dtype=torch.float32)
    policy = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    return policy.train()


def test_group_prefixes_keeps_first_seen_order():
    distinct, groups = group_prefixes(PROMPTS)
    assert distinct == [[1, 5, 7, 9, 11], [1, 4], [1, 8, 8, 3, 2, 6, 7]]
    assert groups == [0, 1, 0, 1, 2]


@pytest.mark.parametrize("average", [False, True])
def test_shared_prefix_logprobs_and_gradients_equal_whole_rows(lora_policy, average):
    exact = whole_rows(lora_policy, PROMPTS, RESPONSES, average)
    exact_grads = torch.autograd.grad(exact.sum(), [p for p in lora_policy.parameters() if p.requires_grad])
    shared = continuation_logprobs(lora_policy, PROMPTS, RESPONSES, pad_id=0, average=average)
    shared_grads = torch.autograd.grad(shared.sum(), [p for p in lora_policy.parameters() if p.requires_grad])
    torch.testing.assert_close(shared, exact, rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(shared_grads, exact_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert any(grad.abs().sum() > 0 for grad in shared_grads)  # the adapter is not at zero: the check has teeth


def test_shared_prefix_reference_pass_with_the_adapter_off(lora_policy):
    with torch.no_grad():
        with lora_policy.disable_adapter():
            exact = whole_rows(lora_policy, PROMPTS, RESPONSES)
            shared = continuation_logprobs(lora_policy, PROMPTS, RESPONSES, pad_id=0)
        with_adapter = continuation_logprobs(lora_policy, PROMPTS, RESPONSES, pad_id=0)
    torch.testing.assert_close(shared, exact, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shared, with_adapter)  # the adapter was off, and it matters


def test_rows_without_tokens_are_refused(lora_policy):
    with pytest.raises(ValueError, match="at least one prefix token and one continuation token"):
        continuation_logprobs(lora_policy, [[1, 2], []], [[3], [4]], pad_id=0)
    with pytest.raises(ValueError, match="at least one prefix token and one continuation token"):
        continuation_logprobs(lora_policy, [[1, 2]], [[]], pad_id=0)


def test_activation_checkpointing_turns_prefix_sharing_off(lora_policy):
    assert shares_prefixes(lora_policy)
    lora_policy.get_base_model().gradient_checkpointing_enable()
    assert not shares_prefixes(lora_policy)


def test_torch_checkpoint_wrappers_turn_prefix_sharing_off(lora_policy):
    """FSDP's activation_checkpointing_policy wraps layers in torch's CheckpointWrapper, not transformers' flag."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    layers = lora_policy.get_base_model().model.layers
    layers[0] = checkpoint_wrapper(layers[0])
    assert not shares_prefixes(lora_policy)


@pytest.mark.parametrize("num_samples", [2, 3])
def test_sampling_from_a_shared_prompt_cache_draws_the_same_completions(lora_policy, tiny_tokenizer, num_samples):
    """Prompts of different lengths (left padding), several samples each: the cached prompt gives the same tokens as
    `generate` running every copy of the prompt, for the same seed."""
    prompts = [[1, 5, 7, 9, 11, 13], [1, 4], [1, 8, 8, 3]]
    runs = []
    for share in (False, True):
        torch.manual_seed(3)
        runs.append(gen.sample_completions(lora_policy, tiny_tokenizer, prompts, num_samples, 6, 1.0, 1.0, share))
    unshared, shared = ([[c.token_ids for c in row] for row in run] for run in runs)
    assert shared == unshared
    assert len({tuple(ids) for row in shared for ids in row}) > 1  # sampling, not one repeated answer
    assert lora_policy.training  # back in train mode


def test_gradients_through_a_shared_prefix_are_the_same_bits_every_time():
    """A prefix shared by several rows gets their gradients summed in one order: two backward passes give the same
    bits. Advanced indexing (`cache[rows]`) summed them with the CPU's atomic adds, whose order varies between runs;
    the model is just big enough for its cache rows to be split across threads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    model = LlamaForCausalLM(config).train()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 300, (length,), generator=generator).tolist() for length in (120, 90, 150, 100)]
    continuations = [torch.randint(1, 300, (5 + 2 * i,), generator=generator).tolist() for i in range(16)]
    gradients = []
    for _ in range(4):
        model.zero_grad()
        continuation_logprobs(model, prompts * 4, continuations, 0, False, True).sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert all(torch.equal(gradients[0], other) for other in gradients[1:])


def test_pad_rows_pads_on_the_side_asked_and_masks_only_the_padding():
    from rmrouter.models.padding import pad_rows

    ids, mask = pad_rows([[1, 2, 3], [4]], pad_id=9, side="right")
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows([[1, 2, 3], [4]], pad_id=9, side="left")
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
