"""What every module with a frozen text encoder needs: an embedding cache and head-only checkpoints.

A frozen encoder in eval mode is a fixed function of its input text, so its embeddings can be cached by text (every
epoch after the first trains the heads without running the encoder), and its weights need not be saved: they are
rebuilt from the encoder's name on load and checked against a fingerprint saved with the heads, so heads are never
silently paired with other encoder weights.

The cache can also keep its embeddings on disk (`EmbeddingStore`), in one folder per encoder name, pooling, length
and weight fingerprint, so the fits, tests and predicts of later processes (the offline router over seeds, the main
job's stages) skip the encoder for texts an earlier one embedded. An embedding read back was computed in another
batch, so it can differ from a fresh one in the last float bits (padding changes the summation order).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from rmrouter.models.store import cache_dir

FINGERPRINT_KEY = "frozen_encoder_fingerprint"
SHARDS_BEFORE_COMPACTING = 8

log = logging.getLogger(__name__)


def embedding_cache_dir() -> Path:
    """Root of the on-disk embedding stores: `$RMROUTER_EMBEDDING_CACHE`, else `cache_dir() / "embeddings"`."""
    if "RMROUTER_EMBEDDING_CACHE" in os.environ:
        return Path(os.environ["RMROUTER_EMBEDDING_CACHE"])
    return cache_dir() / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingStore:
    """Embeddings on disk, by `text_key`, as shard files that are only ever added whole (written, then renamed), so
    a killed process or two processes writing at once leave every shard readable.

    Args:
        folder: The store's folder; one per fixed function (see `for_encoder`).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def for_encoder(cls, name: str, pooling: str, max_length: int, fingerprint: float) -> EmbeddingStore:
        """The store of one encoder: its name, pooling, max length and weights' fingerprint make the folder name."""
        identity = f"{name}|{pooling}|{max_length}|{fingerprint!r}"
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[:48]
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
        return cls(embedding_cache_dir() / f"{readable}-{pooling}-{max_length}-{digest}")

    def shards(self) -> list[Path]:
        return sorted(self.folder.glob("*.pt")) if self.folder.is_dir() else []

    def load(self) -> dict[str, Tensor]:
        """Every stored embedding by key; a shard that another process just compacted away is skipped."""
        embeddings: dict[str, Tensor] = {}
        shards = self.shards()
        for shard in shards:
            try:
                content = torch.load(shard, weights_only=True)
            except FileNotFoundError:
                continue
            embeddings.update(zip(content["keys"], content["embeddings"], strict=True))
        if len(shards) > SHARDS_BEFORE_COMPACTING:
            self._compact(shards, embeddings)
        return embeddings

    def save(self, embeddings: dict[str, Tensor]) -> None:
        """Adds one shard with `embeddings`."""
        if not embeddings:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        partial = self.folder / f".{name}.partial"
        content = {"keys": list(embeddings), "embeddings": torch.stack(list(embeddings.values())).cpu()}
        torch.save(content, partial)
        os.replace(partial, self.folder / f"{name}.pt")

    def _compact(self, shards: list[Path], embeddings: dict[str, Tensor]) -> None:
        self.save(embeddings)
        for shard in shards:
            shard.unlink(missing_ok=True)
        log.info("compacted %d embedding shards of %s into one", len(shards), self.folder)


class EmbeddingCache:
    """Embeddings of a fixed function, keyed by text; valid only while that function stays fixed.

    Args:
        store: Where to keep them between processes too: read on the first lookup, added to by `flush` (and by
            `lookup` once many are pending). None keeps them in memory only.
    """

    FLUSH_EVERY = 4096  # pending embeddings that make a lookup write a shard by itself

    def __init__(self, store: EmbeddingStore | None = None) -> None:
        self.store = store
        self._embeddings: dict[str, Tensor] = {}
        self._pending: dict[str, Tensor] = {}
        self._loaded = store is None

    def __len__(self) -> int:
        return len(self._embeddings)

    def __contains__(self, text: str) -> bool:
        return text_key(text) in self._embeddings

    def clear(self) -> None:
        """Forgets the embeddings held in memory (writing the pending ones to the store first)."""
        self.flush()
        self._embeddings.clear()
        self._loaded = self.store is None

    def flush(self) -> None:
        """Writes the embeddings computed since the last flush to the store, if there is one."""
        if self.store is not None and self._pending:
            self.store.save(self._pending)
        self._pending = {}

    def lookup(self, texts: list[str], embed: Callable[[list[str]], Tensor]) -> Tensor:
        """`[len(texts), H]` embeddings; `embed` runs once, on the distinct texts not cached yet."""
        if not texts:
            return embed([])
        if not self._loaded:
            self._embeddings.update(self.store.load())
            self._loaded = True
        keys = [text_key(text) for text in texts]
        missing = list(dict.fromkeys((key, text) for key, text in zip(keys, texts, strict=True)
                                     if key not in self._embeddings))  # fmt: skip
        if missing:
            computed = dict(zip((key for key, _ in missing), embed([text for _, text in missing]), strict=True))
            self._embeddings.update(computed)
            if self.store is not None:
                self._pending.update((key, value.detach().cpu()) for key, value in computed.items())
                if len(self._pending) >= self.FLUSH_EVERY:
                    self.flush()
        return torch.stack([self._embeddings[key] for key in keys])


def weight_fingerprint(module: nn.Module) -> float:
    """A cheap checksum of a module's weights: the float64 sum of their absolute values."""
    with torch.no_grad():
        return float(sum(parameter.double().abs().sum() for parameter in module.parameters()))


def drop_frozen_weights(checkpoint: dict, prefix: str, encoder: nn.Module) -> None:
    """Removes the state-dict entries under `prefix` (the frozen encoder) and saves the encoder's fingerprint."""
    state = checkpoint["state_dict"]
    for key in [key for key in state if key.startswith(prefix)]:
        del state[key]
    checkpoint[FINGERPRINT_KEY] = weight_fingerprint(encoder)


def restore_frozen_weights(checkpoint: dict, prefix: str, encoder: nn.Module, name: str, trained: str) -> None:
    """Completes a checkpoint saved by `drop_frozen_weights` with the weights of `encoder`, rebuilt from `name`.

    Args:
        checkpoint: The checkpoint dict, changed in place; one that still holds the encoder is left as it is.
        prefix: The encoder's state-dict prefix in the module.
        encoder: The encoder just rebuilt from its name.
        name: The encoder's model name, for the error message.
        trained: What the checkpoint trained on that encoder (`reward head`), for the error message.

    Raises:
        RuntimeError: The encoder's weights are not those the checkpoint was trained on.
    """
    state = checkpoint["state_dict"]
    if any(key.startswith(prefix) for key in state):
        return
    saved, current = checkpoint.get(FINGERPRINT_KEY), weight_fingerprint(encoder)
    if saved is None or abs(saved - current) > 1e-6 * max(abs(saved), 1.0):
        raise RuntimeError(
            f"the checkpoint's {trained} was trained on encoder '{name}' with weight fingerprint {saved}, but that "
            f"name now loads weights with fingerprint {current}: install the same encoder version or retrain the head"
        )
    state.update({prefix + key: value for key, value in encoder.state_dict().items()})
