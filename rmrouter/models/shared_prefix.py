"""Log-probabilities of continuations that share prefixes, each prefix run through the model once.

Online DPO scores a prompt's chosen and rejected responses (and its k samples), an RM scores both sides of a pair:
rows that share a prompt, which is often the longer part of the row. Here each distinct prefix runs once, its key and
value cache is repeated for the rows that continue it, and only the continuations run on top. Gradients flow back
through the repeated cache into the one prefix pass, so training gets the same gradients as from whole rows.

The result equals the whole-row computation (`rmrouter.dpo.response_logprobs` over prompt + response rows) up to
float rounding: each token sees the same tokens at the same positions, as the tests check.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rmrouter.dpo import response_logprobs
from rmrouter.models.padding import pad_rows


def group_prefixes(prefixes: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[int]]:
    """`(distinct prefixes in first-seen order, the index of each row's prefix among them)`."""
    index: dict[tuple[int, ...], int] = {}
    groups = [index.setdefault(tuple(prefix), len(index)) for prefix in prefixes]
    return [list(prefix) for prefix in index], groups


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shares_prefixes(model) -> bool:
    """Whether the prefix cache can be used: not under activation checkpointing, transformers' or torch's (FSDP's
    `activation_checkpointing_policy`), whose recomputed forward would append to the cache a second time."""
    base = _base(model)
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers renamed it in 5.x
        if hasattr(type(base), name) and getattr(base, name):
            return False
    return not any(type(module).__name__ == "CheckpointWrapper" for module in model.modules())


def cache_keyword(model) -> str:
    """What `forward` and `generate` call a KV cache: `cache` from transformers 5.24 on, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(_base(model).forward).parameters else "past_key_values"


def continuation_logprobs(
    model,
    prefixes: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    pad_id: int,
    average: bool = False,
    keep_logits: bool = True,
) -> Tensor:
    """`[R]` float32 log-prob of each row's continuation given its prefix, summed (or averaged) over its tokens.

    Args:
        model: A causal LM (or a peft model around one) that takes `past_key_values`, `position_ids` and
            `logits_to_keep`, as every transformers decoder does.
        prefixes: Per row, the prefix's token ids (at least one); rows with equal prefixes share one pass.
        continuations: Per row, the scored token ids (at least one).
        pad_id: Padding id (masked out).
        average: Mean over the continuation's tokens instead of the sum.
        keep_logits: The model takes `logits_to_keep`, so the prefix pass projects only its last position.
    """
    if any(not prefix for prefix in prefixes) or any(not tokens for tokens in continuations):
        raise ValueError("every row needs at least one prefix token and one continuation token")
    device = next(model.parameters()).device
    distinct, groups = group_prefixes(prefixes)
    rows = torch.tensor(groups, device=device)

    # The prefixes, left-padded so that each ends at the last column: its last position predicts the first
    # continuation token, and the continuations all start at the same cache offset.
    prefix_ids, prefix_mask = pad_rows(distinct, pad_id, "left")
    last_logits, cache = _prefill(model, prefix_ids.to(device), prefix_mask.to(device), keep_logits)
    first_logits = last_logits.index_select(0, rows)  # [R, V]: predicts each row's first continuation token
    select_cache_rows(cache, rows)

    # The continuations, right-padded after their prefix's cache; positions go on from the prefix's length.
    ids, mask = pad_rows(continuations, pad_id, "right")
    length = ids.shape[1]
    starts = torch.tensor([len(distinct[group]) for group in groups])
    positions = starts[:, None] + torch.arange(length)[None, :]
    attention = torch.cat([prefix_mask[groups], mask], dim=1)
    out = model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{cache_keyword(model): cache},
    )
    # Column 0 stands for the prefix's last token: its logits predict column 1, the first continuation token.
    logits = torch.cat([first_logits[:, None], out.logits], dim=1)
    scored = torch.cat([torch.full((len(continuations), 1), pad_id, dtype=torch.long), ids], dim=1).to(device)
    marked = torch.cat([torch.zeros((len(continuations), 1), dtype=torch.long), mask], dim=1).to(device)
    return response_logprobs(logits, scored, marked, average)


def prompt_cache(model, input_ids: Tensor, attention_mask: Tensor, repeats: int, keep_logits: bool = True):
    """The KV cache of left-padded prompts but their last column, each prompt run once and its cache repeated
    `repeats` times in place (rows `i * repeats ... (i + 1) * repeats - 1` continue prompt `i`), for `generate` to
    sample `repeats` completions per prompt from. The last column stays uncached: `generate` runs it first."""
    _, cache = _prefill(model, input_ids[:, :-1], attention_mask[:, :-1], keep_logits)
    cache.batch_repeat_interleave(repeats)
    return cache


def select_cache_rows(cache, rows: Tensor) -> None:
    """Keeps the cache's batch rows `rows` (a row may repeat), in place.

    With `index_select`, not the advanced indexing of transformers' `batch_select_indices`: both give the same rows,
    but the gradient of advanced indexing adds a repeated row's parts with atomic adds on the CPU, in an order that
    changes from run to run, so two seeded runs would train slightly different weights. `index_select`'s gradient
    adds them in index order. A cache without per-layer `keys` and `values` falls back to transformers' method.
    """
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        cache.batch_select_indices(rows)
        return
    for layer in layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            if isinstance(tensor, Tensor) and tensor.numel():
                setattr(layer, name, tensor.index_select(0, rows))


def _prefill(model, input_ids: Tensor, attention_mask: Tensor, keep_logits: bool) -> tuple[Tensor, Any]:
    """`(logits of the last column [B, V], KV cache)` of left-padded rows, positions counted from each row's first
    real token (as `generate` counts them)."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **({"logits_to_keep": 1} if keep_logits else {}),
    )
    return out.logits[:, -1], (out.cache if "cache" in out else out.past_key_values)
