"""Greedy answers of a causal LM to prompts, batched by length, for evaluation."""

from __future__ import annotations

import torch

from rmrouter.models.padding import pad_rows
from rmrouter.policy import generation as gen


@torch.no_grad()
def greedy_responses(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Each prompt's greedy answer (special tokens dropped), in the order of `prompts`.

    Prompts of similar length are batched together (little left padding), the model runs in eval mode and is put
    back in the mode it was in, and an answer is cut after its first EOS.

    Args:
        model: A causal LM, or a peft model around one (inside `disable_adapter()` for its base).
        tokenizer: Its tokenizer; without a pad token an EOS pads (masked out by the attention mask).
        prompts: Prompt token ids (`generation.prompt_ids`).
        max_new_tokens: Longest answer, in tokens.
        batch_size: Prompts per `generate` call.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = gen.eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = pad_rows([prompts[i] for i in rows], pad_id, "left")
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=sorted(stops),
                # a generation config's sampling defaults would warn next to do_sample=False
                temperature=None,
                top_p=None,
                top_k=None,
            )
            for i, ids in zip(rows, output[:, input_ids.shape[1] :].tolist(), strict=True):
                ids, has_eos = gen.cut_at_eos(ids, stops)
                answers[i] = tokenizer.decode(ids[:-1] if has_eos else ids, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers
