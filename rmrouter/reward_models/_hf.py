"""Helpers shared by the reward models built on Hugging Face models: text rendering, dtypes, padding, batching."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from rmrouter.data.records import Message
from rmrouter.models.padding import pad_rows
from rmrouter.models.store import load_model, load_tokenizer
from rmrouter.reward_models.base import RewardModel


def render(tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
    """The conversation as the model saw it in training: its chat template, else `plain_text`."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return plain_text(messages, add_generation_prompt)


def plain_text(messages: list[Message], add_generation_prompt: bool) -> str:
    """The format for tokenizers without a chat template: `User: ...\\n\\nAssistant: ...`, one turn per paragraph.

    With `add_generation_prompt` it ends with `\\n\\nAssistant:` (no trailing space: BPE vocabularies attach the space
    to the next word, so the response is written as `" " + response`).
    """
    text = "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in messages)
    return text + "\n\nAssistant:" if add_generation_prompt else text


def adds_bos(tokenizer) -> bool:
    """Whether `tokenizer(text)` puts a BOS token in front by itself (Llama does, Qwen and GPT-2 do not)."""
    if tokenizer.bos_token_id is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def ensure_pad_token(tokenizer, model_name: str) -> None:
    """Pads with EOS when the tokenizer has no pad token (as TRL does); attention masks keep pads out of scores."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(f"the tokenizer of '{model_name}' has neither a pad nor an eos token to pad batches with")
    tokenizer.pad_token = tokenizer.eos_token


def load_frozen(auto_class, model: str, dtype: str | None, trust_remote_code: bool = False):
    """`(tokenizer, model)` for scoring: a tokenizer that can pad, a model in eval mode with no gradients. The model
    folder's own code runs only with `trust_remote_code`."""
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer, model)
    network = load_model(auto_class, model, trust_remote_code=trust_remote_code, **dtype_kwargs(dtype))
    network.requires_grad_(False)
    network.eval()
    return tokenizer, network


BFLOAT16_IF_NATIVE = "bfloat16_if_native"


def native_bfloat16() -> bool:
    """Whether this machine computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or
    AMX. Elsewhere (AVX2-only CPUs) bfloat16 is emulated and measured several times slower than float32."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def dtype_kwargs(dtype: str | None) -> dict:
    """`from_pretrained` keyword for a dtype given by name (`"bfloat16"`, `"float16"`, `"float32"`, `"auto"`), or
    `"bfloat16_if_native"`: bfloat16 where `native_bfloat16()`, else float32."""
    if dtype is None:
        return {}
    if dtype == "auto":
        return {"dtype": "auto"}
    if dtype == BFLOAT16_IF_NATIVE:
        return {"dtype": torch.bfloat16 if native_bfloat16() else torch.float32}
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"dtype '{dtype}' is not a torch floating-point dtype; use e.g. 'bfloat16', 'float32', 'auto', "
            f"'{BFLOAT16_IF_NATIVE}'"
        )
    return {"dtype": value}


def check_sizes(name: str, batch_size: int, max_length: int) -> None:
    if batch_size < 1:
        raise ValueError(f"{name}: batch_size must be at least 1, got {batch_size}")
    if max_length < 2:
        raise ValueError(f"{name}: max_length must be at least 2, got {max_length}")


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in chunks of `batch_size`, similar lengths together so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def length_sorted_groups(groups: Sequence[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Groups of row indices (already in length order) joined into batches of at most `batch_size` rows, a group
    never split; a group larger than `batch_size` is a batch of its own."""
    batch: list[int] = []
    for group in groups:
        if batch and len(batch) + len(group) > batch_size:
            yield batch
            batch = []
        batch = batch + list(group)
    if batch:
        yield batch


def pad_right(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` on `device`, padded on the right (`rmrouter.models.padding.pad_rows`): a row's
    hidden states do not depend on what it is batched with."""
    ids, mask = pad_rows(sequences, pad_id, "right")
    return ids.to(device), mask.to(device)


class HFRewardModel(RewardModel):
    """Base of the RMs built on one Hugging Face model: checks sizes, loads tokenizer and frozen model, batches.

    Subclasses keep their own typed `__init__` (LightningCLI reads it) and pass their transformers auto class here.
    """

    def __init__(
        self,
        name: str,
        model: str,
        batch_size: int,
        max_length: int,
        dtype: str | None,
        auto_class,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(name)
        check_sizes(name, batch_size, max_length)
        self.model_name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer, self.model = load_frozen(auto_class, model, dtype, trust_remote_code)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, model={self.model_name!r}"
