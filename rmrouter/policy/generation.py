"""Token-level plumbing of online DPO: prompts to ids, sampling `k` completions, and right-padded DPO batches.

Completions keep the token ids the policy generated, so the DPO forward pass scores exactly the sampled tokens
(decoding and re-tokenizing can change them). Text is only for the RMs, the router and pairing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from rmrouter.data.records import Message
from rmrouter.dpo import response_logprobs
from rmrouter.models.padding import pad_rows
from rmrouter.models.shared_prefix import cache_keyword, continuation_logprobs, prompt_cache, shares_prefixes
from rmrouter.reward_models._hf import render

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Completion:
    """One sampled response: its text (special tokens dropped), its token ids (EOS included) and whether it ended."""

    text: str
    token_ids: list[int]
    has_eos: bool


def eos_ids(policy, tokenizer) -> set[int]:
    """Every token that ends a response: the tokenizer's EOS and the generation config's (chat models add theirs)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else ({configured} if configured is not None else set())
    if not ids:
        raise ValueError("the policy has no EOS token: neither its tokenizer nor its generation config names one")
    return ids


def prompt_ids(tokenizer, prompts: list[list[Message]], max_prompt_length: int) -> list[list[int]]:
    """Each prompt rendered with the chat template's generation prompt, cut from the left to `max_prompt_length`.

    Cutting from the left keeps the generation prompt and the latest turn, which the response answers. A chat template
    writes its own special tokens (BOS included), so the tokenizer adds none; without a template it adds them.
    """
    texts = [render(tokenizer, prompt, add_generation_prompt=True) for prompt in prompts]
    special = not getattr(tokenizer, "chat_template", None)
    rows = tokenizer(texts, add_special_tokens=special)["input_ids"]
    return [list(row)[-max_prompt_length:] for row in rows]


@torch.no_grad()
def sample_completions(
    policy: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    share_prompts: bool = False,
) -> list[list[Completion]]:
    """`num_samples` sampled completions per prompt, `[len(prompts)][num_samples]`.

    Generation runs in eval mode (no dropout: the samples are the policy's own distribution) and the policy is put
    back in the mode it was in. A completion is cut after its first EOS; one that never ends has `has_eos` false.

    Args:
        policy: A causal LM (or a peft model around one).
        tokenizer: Its tokenizer; without a pad token EOS pads (masked out by the attention mask).
        prompts: Prompt token ids, e.g. from `prompt_ids`.
        num_samples: Completions per prompt (`k`).
        max_new_tokens: Longest completion, in tokens.
        temperature: Sampling temperature, > 0.
        top_p: Nucleus sampling mass, in (0, 1].
        share_prompts: Run each prompt through the model once and sample its `num_samples` completions from copies
            of its KV cache (`shared_prefix.prompt_cache`), instead of `generate` running every copy of the prompt.
    """
    stops = eos_ids(policy, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    device = next(policy.parameters()).device
    input_ids, attention_mask = pad_rows(prompts, pad_id, "left")
    was_training = policy.training
    policy.eval()
    try:
        rows = {"num_return_sequences": num_samples}
        if share_prompts and num_samples > 1 and input_ids.shape[1] > 1 and shares_prefixes(policy):
            keep = keeps_logits(policy)
            cache = prompt_cache(policy, input_ids.to(device), attention_mask.to(device), num_samples, keep)
            input_ids = input_ids.repeat_interleave(num_samples, dim=0)
            attention_mask = attention_mask.repeat_interleave(num_samples, dim=0)
            rows = {"num_return_sequences": 1, cache_keyword(policy): cache}
        output = policy.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,  # the policy's own distribution, only nucleus-trimmed: a config's default top_k would cut it
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(stops),
            **rows,
        )
    finally:
        policy.train(was_training)
    completions = []
    for row in output[:, input_ids.shape[1] :].tolist():
        ids, has_eos = cut_at_eos(row, stops)
        completions.append(
            Completion(text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids, has_eos=has_eos)
        )
    return [completions[i : i + num_samples] for i in range(0, len(completions), num_samples)]


def cut_at_eos(ids: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """`(ids up to and including the first stop token, whether there was one)`: what follows an EOS is padding."""
    end = next((t for t, token in enumerate(ids) if token in stops), None)
    return (ids, False) if end is None else (ids[: end + 1], True)


def text_ids(tokenizer, text: str, eos_id: int, max_new_tokens: int) -> list[int]:
    """A given response's ids as if the policy had written it: its tokens then EOS, at most `max_new_tokens`."""
    return (tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id])[:max_new_tokens]


def right_pad_sequences(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """`(input_ids, attention_mask, response_mask)` of prompt + response rows, padded on the right.

    Right padding gives every row the same positions as unpadded (no position-id bookkeeping in the forward pass);
    `response_mask` marks the response tokens only, so the prompt and the padding never enter the log-probs.
    """
    ids, attention = pad_rows([p + r for p, r in zip(prompts, responses, strict=True)], pad_id, "right")
    response = torch.zeros_like(attention, dtype=torch.bool)
    for i, (prompt, answer) in enumerate(zip(prompts, responses, strict=True)):
        response[i, len(prompt) : len(prompt) + len(answer)] = True
    return ids, attention, response


def keeps_logits(policy) -> bool:
    """Whether the (base) model's forward takes `logits_to_keep`, so only the positions that matter are projected."""
    import inspect

    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def policy_and_reference_logprobs(
    policy: nn.Module,
    reference: nn.Module | None,
    prompts: list[list[int]],
    responses: list[list[int]],
    pad_id: int,
    average: bool,
    keep_logits: bool,
    share_prompts: bool = False,
) -> tuple[Tensor, Tensor]:
    """`([R], [R])` response log-probs of each prompt + response row under the policy (with grad) and the reference.

    Args:
        policy: The trained causal LM (a peft model when `reference` is None).
        reference: A frozen copy of the initial policy; None: the policy with its adapter disabled.
        prompts: Per row, the prompt's token ids.
        responses: Per row, the response's token ids.
        pad_id: Padding id (masked out).
        average: Mean over the response's tokens instead of the sum (IPO).
        keep_logits: The model takes `logits_to_keep` (`keeps_logits`).
        share_prompts: Run each distinct prompt once and its responses on its KV cache
            (`rmrouter.models.shared_prefix`); the same values and gradients as whole rows, up to float rounding.
            Ignored under activation checkpointing, which turns the cache off.
    """
    if share_prompts and shares_prefixes(policy):

        def logprobs(model) -> Tensor:
            return continuation_logprobs(model, prompts, responses, pad_id, average, keep_logits)

        return _with_reference(policy, reference, logprobs)
    device = next(policy.parameters()).device
    ids, attention, mask = (t.to(device) for t in right_pad_sequences(prompts, responses, pad_id))
    # Only positions from the shortest prompt's last token on predict a response token: projecting just those onto
    # the vocabulary skips most of the largest activation of the step (the sliced triple stays aligned).
    first = min(len(prompt) for prompt in prompts) - 1
    keep = {"logits_to_keep": ids.shape[1] - first} if keep_logits else {}

    def logprobs(model) -> Tensor:
        # No KV cache: nothing decodes after this pass, and activation checkpointing would append to it again.
        logits = model(input_ids=ids, attention_mask=attention, use_cache=False, **keep).logits
        return response_logprobs(logits[:, -(ids.shape[1] - first) :], ids[:, first:], mask[:, first:], average)

    return _with_reference(policy, reference, logprobs)


def _with_reference(policy, reference, logprobs) -> tuple[Tensor, Tensor]:
    """`logprobs` under the policy (with grad), then without grad under the reference or the disabled adapter."""
    policy_logps = logprobs(policy)
    with torch.no_grad():
        if reference is None:
            with policy.disable_adapter():
                reference_logps = logprobs(policy)
        else:
            reference_logps = logprobs(reference)
    return policy_logps, reference_logps
