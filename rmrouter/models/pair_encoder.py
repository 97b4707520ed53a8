"""The router's pair representation: one unit vector `h` per (prompt, response, response) triple.

`h = normalize(MLP([e + e'; |e - e'|]))`, where `e` and `e'` embed `pair_text(prompt, response)` for each side with
one shared `TextEncoder`. The features are symmetric in the two sides, so `h` cannot tell which response is the
chosen one: the router judges the pair, not the label. The MLP is Linear -> ReLU -> Linear -> LayerNorm, and `h` is
L2-normalised after it, as in the authors' code (which feeds the mean `(e + e') / 2`, the same up to a factor the
first Linear absorbs).

The online stage rebuilds `h` for new pairs from primitives alone: `build_text_encoder(encoder, pooling,
max_length)`, `pair_text`, `build_mlp(mlp_config)` with the saved MLP state, and `pair_representation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmrouter.data.records import Prompt, as_text
from rmrouter.models.embedding_store import EmbeddingCache, EmbeddingStore, weight_fingerprint
from rmrouter.models.encoder import Pooling, TextEncoder

RESPONSE_SEPARATOR = "\n\nAssistant: "


def pair_text(prompt: Prompt, response: str) -> str:
    """The encoder's input for one side of a pair: the prompt as plain text, then the response as the next turn.

    `as_text(prompt) + "\\n\\nAssistant: " + response`, the text the learned reward model reads too. Texts are cut from
    the left (see `build_text_encoder`), so the response, where the two sides differ, is kept whole.
    """
    return as_text(prompt) + RESPONSE_SEPARATOR + response


def build_text_encoder(encoder: str, pooling: Pooling, max_length: int) -> TextEncoder:
    """The text encoder of a pair encoder: left truncation, unit-norm embeddings.

    Unit norm keeps the MLP's input on one scale whatever the encoder (decoder-only models have last-token states of
    norm in the hundreds), and is how sentence-transformers encoders such as MiniLM are meant to be compared.
    """
    return TextEncoder(encoder, pooling, max_length, truncation_side="left", normalize=True)


def build_mlp(config: dict[str, int]) -> nn.Sequential:
    """The pair MLP from `PairEncoder.mlp_config()`; load the saved `mlp.state_dict()` into it."""
    missing = {"input_size", "hidden_size", "output_size"} - set(config)
    if missing:
        raise ValueError(f"mlp config {config} lacks {sorted(missing)}: pass the dict PairEncoder.mlp_config() returns")
    return nn.Sequential(
        nn.Linear(config["input_size"], config["hidden_size"]),
        nn.ReLU(),
        nn.Linear(config["hidden_size"], config["output_size"]),
        nn.LayerNorm(config["output_size"]),
    )


def pair_features(first: Tensor, second: Tensor) -> Tensor:
    """`[e + e'; |e - e'|]`: `[B, H]` twice -> `[B, 2H]`, the same whichever side comes first."""
    return torch.cat([first + second, (first - second).abs()], dim=-1)


def pair_representation(mlp: nn.Module, first: Tensor, second: Tensor) -> Tensor:
    """`h = normalize(mlp(pair_features(e, e')))`: `[B, output_size]` unit vectors."""
    return F.normalize(mlp(pair_features(first, second)), dim=-1)


class PairEncoder(nn.Module):
    """Embeds preference pairs for the router: `h(prompt, first, second)`, symmetric in `first` and `second`.

    Args:
        encoder: The text encoder's model name (`all-minilm-l6-v2`, a folder, ...), resolved by the model store.
        pooling: How token states become one vector: `mean` or `last_token`.
        max_length: Tokens per prompt+response text; longer texts lose the start of the prompt.
        hidden_size: Width of the MLP's hidden layer.
        output_size: Size of `h`, the routing embedding.
        freeze_encoder: Keep the encoder fixed (eval mode, no gradients) and cache its embeddings by text; otherwise
            it is fine-tuned with the MLP, in train mode.
        store_embeddings: With a frozen encoder, also keep the cached embeddings on disk (`EmbeddingStore`), for the
            next process that embeds the same texts with the same encoder.
    """

    def __init__(
        self,
        encoder: str,
        pooling: Pooling,
        max_length: int,
        hidden_size: int,
        output_size: int,
        freeze_encoder: bool,
        store_embeddings: bool = False,
    ):
        super().__init__()
        if hidden_size < 1 or output_size < 1:
            raise ValueError(f"hidden_size and output_size must be >= 1, got {hidden_size} and {output_size}")
        self.freeze_encoder = freeze_encoder
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.encoder = build_text_encoder(encoder, pooling, max_length)
        self.mlp = build_mlp(self.mlp_config())
        self.encoder.requires_grad_(not freeze_encoder)
        # from_pretrained returns eval mode; a fine-tuned encoder needs dropout like any trained layer
        self.encoder.train(not freeze_encoder)
        store = None
        if freeze_encoder and store_embeddings:
            store = EmbeddingStore.for_encoder(encoder, pooling, max_length, weight_fingerprint(self.encoder))
        self.cache = EmbeddingCache(store)

    @property
    def stores_embeddings(self) -> bool:
        """Whether frozen embeddings persist on disk, which makes caching pay even for texts seen once per process."""
        return self.cache.store is not None

    def mlp_config(self) -> dict[str, int]:
        """Primitives `build_mlp` rebuilds the MLP from."""
        return {
            "input_size": 2 * self.encoder.hidden_size,
            "hidden_size": self.hidden_size,
            "output_size": self.output_size,
        }

    def train(self, mode: bool = True) -> PairEncoder:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder is a fixed feature map: no dropout, in training or not
        return self

    def embed(self, texts: list[str], use_cache: bool) -> Tensor:
        """`[len(texts), H]` text embeddings; `use_cache` applies to a frozen encoder only (a trained one changes)."""
        if not self.freeze_encoder:
            return self.encoder.encode(texts)
        if use_cache:
            return self.cache.lookup(texts, self._embed_frozen).to(self.encoder.device)
        return self._embed_frozen(texts)

    def _embed_frozen(self, texts: list[str]) -> Tensor:
        with torch.no_grad():
            return self.encoder.encode(texts)

    def forward(
        self, prompts: Sequence[Prompt], first: Sequence[str], second: Sequence[str], use_cache: bool = False
    ) -> Tensor:
        """`[B, output_size]` unit vectors `h`; prompts are plain text or chat messages.

        Args:
            prompts: One prompt per pair.
            first: One response per pair.
            second: The other response per pair (the order of the two does not matter).
            use_cache: Reuse and keep frozen-encoder embeddings by text: for data seen again (training epochs), not
                for a stream of new pairs, where the cache would only grow.
        """
        if not len(prompts) == len(first) == len(second):
            raise ValueError(f"got {len(prompts)} prompts, {len(first)} first and {len(second)} second responses")
        texts = [pair_text(prompt, response) for prompt, response in zip(prompts, first, strict=True)]
        texts += [pair_text(prompt, response) for prompt, response in zip(prompts, second, strict=True)]
        embeddings = self.embed(texts, use_cache)  # one encoder pass over both sides of every pair
        return pair_representation(self.mlp, embeddings[: len(prompts)], embeddings[len(prompts) :])
