"""Lazily built, frozen text/pair embedders for the online routers (no gradients, the trainer's device or CPU).

A router is constructed while a config is parsed; loading a text encoder then would make `--help` and config checks
slow, so the models are built on the first call and moved to the device the router's `setup` reports.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rmrouter.data.records import as_text
from rmrouter.models.embedding_store import EmbeddingCache
from rmrouter.models.encoder import Pooling, TextEncoder
from rmrouter.models.pair_encoder import build_mlp, build_text_encoder, pair_representation, pair_text
from rmrouter.routers.base import PairBatch


class LazyEmbedder:
    """Embeds pairs (`h`) or prompts with a frozen text encoder and, for pairs, an optional frozen pair MLP.

    With an MLP (rebuilt from a `RouterPrior`), `h = pair_representation(mlp, e, e')`, exactly the offline router's
    embedding. Without one, `h = (e + e') / 2`: the mean of the two sides' unit-norm text embeddings, symmetric in
    the two responses like the MLP's features, and used as is (not re-normalised).

    Args:
        encoder: The text encoder's model name or folder.
        pooling: The encoder's pooling.
        max_length: Token limit per text.
        mlp_config: `build_mlp` config of the pair MLP, or None for the mean of the two sides.
        mlp_state: The MLP's saved `state_dict` (with `mlp_config`).

    `cache`, None by default (a live run embeds new texts every step), can be set to an `EmbeddingCache` of this
    encoder shared by several routers: a benchmark that routes the same texts many times embeds each once, and
    builds the encoder only for texts the cache lacks.
    """

    def __init__(
        self,
        encoder: str,
        pooling: Pooling,
        max_length: int,
        mlp_config: dict[str, Any] | None,
        mlp_state: dict[str, Tensor] | None,
    ) -> None:
        self.encoder_name, self.pooling, self.max_length = encoder, pooling, max_length
        self.mlp_config, self.mlp_state = mlp_config, mlp_state
        self.device = torch.device("cpu")
        self._encoder: TextEncoder | None = None
        self._mlp: torch.nn.Module | None = None
        self.cache: EmbeddingCache | None = None

    def to(self, device: torch.device) -> None:
        """Where the models run from now on (moves them if already built)."""
        self.device = torch.device(device)
        if self._encoder is not None:
            self._encoder.to(self.device)
        if self._mlp is not None:
            self._mlp.to(self.device)

    def _build(self) -> TextEncoder:
        if self._encoder is None:
            encoder = build_text_encoder(self.encoder_name, self.pooling, self.max_length)
            self._encoder = encoder.requires_grad_(False).eval().to(self.device)
        return self._encoder

    def _pair_mlp(self) -> torch.nn.Module | None:
        if self._mlp is None and self.mlp_config is not None:
            mlp = build_mlp(self.mlp_config)
            mlp.load_state_dict(self.mlp_state or {})
            self._mlp = mlp.requires_grad_(False).eval().to(self.device)
        return self._mlp

    @torch.no_grad()
    def texts(self, texts: list[str]) -> Tensor:
        """`[len(texts), H]` text embeddings, from the cache where it has them."""
        if self.cache is None:
            return self._build().encode(texts)
        return self.cache.lookup(texts, lambda missing: self._build().encode(missing)).to(self.device)

    @torch.no_grad()
    def pairs(self, pairs: PairBatch) -> Tensor:
        """`[P, d]` float64 CPU pair embeddings `h` (one encoder pass over both sides of every pair)."""
        texts = [pair_text(p, r) for p, r in zip(pairs.prompts, pairs.first, strict=True)]
        texts += [pair_text(p, r) for p, r in zip(pairs.prompts, pairs.second, strict=True)]
        embeddings = self.texts(texts)
        first, second = embeddings[: len(pairs)], embeddings[len(pairs) :]
        mlp = self._pair_mlp()
        h = pair_representation(mlp, first, second) if mlp is not None else (first + second) / 2
        return h.double().cpu()

    @torch.no_grad()
    def prompts(self, pairs: PairBatch) -> Tensor:
        """`[P, H]` float64 CPU embeddings of the pairs' prompts alone (as plain text)."""
        return self.texts([as_text(p) for p in pairs.prompts]).double().cpu()
