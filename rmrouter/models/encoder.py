"""A text encoder: any Hugging Face `AutoModel` (BERT-like or decoder-only) pooled into one vector per text.

Shared by the learned reward model and the offline router's pair encoder. The model and tokenizer load through
`rmrouter.models.store`, so packaged names (`all-minilm-l6-v2`, `smollm2-135m-instruct`), local folders and hub ids
all work. The encoder never changes its own train/eval mode or gradient settings: its owner decides (note that
`from_pretrained` returns the model in eval mode).
"""

from __future__ import annotations

import inspect
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmrouter.models.store import load_model, load_tokenizer

Pooling = Literal["mean", "last_token"]
TruncationSide = Literal["left", "right"]


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The average of `hidden[b, t]` over the positions where `attention_mask[b, t]` is 1: `[B, T, H] -> [B, H]`."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    # clamp: a row with no real token (cannot come from a tokenizer, but may from a caller) gives 0, not NaN
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def last_token_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """`hidden` at each row's last position whose mask is 1, whichever side the padding is on: `[B, T, H] -> [B, H]`."""
    length = attention_mask.shape[1]
    # argmax returns the first maximum, so on the flipped mask it finds the last real token from the right
    last = length - 1 - attention_mask.flip(dims=[1]).int().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TextEncoder(nn.Module):
    """Embeds texts with a Hugging Face model: one `[hidden_size]` vector per text.

    Args:
        name: A model name the store resolves (`all-minilm-l6-v2`, `smollm2-135m-instruct`, a folder, a hub id).
        pooling: `mean` averages the hidden states of the real (non-pad) tokens; `last_token` takes the hidden state
            of the last real token (the usual choice for decoder-only models, whose last token has seen the text).
        max_length: Texts are truncated to this many tokens.
        truncation_side: Which end of a long text is cut: `left` keeps the end (where a response follows its
            prompt), `right` keeps the beginning.
        normalize: Scale every embedding to unit L2 norm (how sentence-transformers models such as MiniLM are
            trained to be compared).
        batch_size: Texts per forward pass. `encode` takes any number of texts and groups them by length, so each
            pass pads little.
    """

    def __init__(
        self,
        name: str,
        pooling: Pooling,
        max_length: int,
        truncation_side: TruncationSide,
        normalize: bool,
        batch_size: int = 16,
    ):
        super().__init__()
        if pooling not in ("mean", "last_token"):
            raise ValueError(f"pooling must be 'mean' or 'last_token', got {pooling!r}")
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"max_length and batch_size must be >= 1, got {max_length} and {batch_size}")
        from transformers import AutoModel

        self.name = name
        self.pooling = pooling
        self.max_length = max_length
        self.normalize = normalize
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(name)
        self.tokenizer.truncation_side = truncation_side
        if self.tokenizer.pad_token is None:
            # Decoder-only models (SmolLM2, Llama) ship without a pad token; any token will do, as padded
            # positions are excluded by the attention mask in both poolings.
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise ValueError(f"tokenizer of '{name}' has no pad, eos or unk token to pad batches with")
            self.tokenizer.pad_token = fallback
        self.model = load_model(AutoModel, name)
        if getattr(self.model, "pooler", None) is not None:
            # BERT-style poolers are never used (this class pools itself), and their parameters, left without
            # gradients when the encoder is fine-tuned, would make DDP fail on unused parameters.
            self.model.pooler = None
        self._takes_position_ids = "position_ids" in inspect.signature(self.model.forward).parameters

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: value.to(self.device) for key, value in batch.items()}

    def encode(self, texts: list[str]) -> Tensor:
        """`[len(texts), hidden_size]` embeddings; gradients flow unless the caller disables them."""
        if not texts:
            return torch.zeros(0, self.hidden_size, device=self.device)
        # Character length orders texts nearly as token length does, without tokenizing twice; padding costs
        # as much compute as real tokens, so sorted passes are much cheaper on texts of mixed lengths.
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        pieces = [
            self._encode_batch([texts[index] for index in order[start : start + self.batch_size]])
            for start in range(0, len(order), self.batch_size)
        ]
        position = torch.empty(len(order), dtype=torch.long)
        position[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(pieces)[position.to(self.device)]

    def _encode_batch(self, texts: list[str]) -> Tensor:
        batch = self.tokenize(texts)
        inputs = dict(batch)
        if self._takes_position_ids:
            # Count positions from each row's first real token: with left padding, a model with absolute position
            # embeddings (BERT) would otherwise see a padded row at other positions than the same text alone.
            inputs["position_ids"] = (batch["attention_mask"].long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.model(**inputs).last_hidden_state
        pool = mean_pool if self.pooling == "mean" else last_token_pool
        embeddings = pool(hidden, batch["attention_mask"])
        return F.normalize(embeddings, dim=-1) if self.normalize else embeddings

    def forward(self, texts: list[str]) -> Tensor:
        return self.encode(texts)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, pooling={self.pooling!r}, max_length={self.max_length}, normalize={self.normalize}"
