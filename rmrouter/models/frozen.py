"""What every module with a frozen text encoder needs: an embedding cache and head-only checkpoints.

A frozen encoder in eval mode is a fixed function of its input text, so its embeddings can be cached by text (every
epoch after the first trains the heads without running the encoder), and its weights need not be saved: they are
rebuilt from the encoder's name on load and checked against a fingerprint saved with the heads, so heads are never
silently paired with other encoder weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

FINGERPRINT_KEY = "frozen_encoder_fingerprint"


class EmbeddingCache:
    """Embeddings of a fixed function, keyed by text; valid only while that function stays fixed."""

    def __init__(self) -> None:
        self._embeddings: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self._embeddings)

    def __contains__(self, text: str) -> bool:
        return text in self._embeddings

    def clear(self) -> None:
        self._embeddings.clear()

    def lookup(self, texts: list[str], embed: Callable[[list[str]], Tensor]) -> Tensor:
        """`[len(texts), H]` embeddings; `embed` runs once, on the distinct texts not cached yet."""
        if not texts:
            return embed([])
        missing = list(dict.fromkeys(text for text in texts if text not in self._embeddings))
        if missing:
            self._embeddings.update(zip(missing, embed(missing), strict=True))
        return torch.stack([self._embeddings[text] for text in texts])


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
