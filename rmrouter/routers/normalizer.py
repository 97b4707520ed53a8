"""The paper's reward normalisation for the online routers: a batch-mean baseline, then a q20/q80 map over history."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def batch_baseline(losses: Tensor) -> Tensor:
    """`[B]` raw rewards `mean(losses) - losses_i`: a pair is rewarded for a DPO loss below its batch's mean.

    Args:
        losses: `[B]` per-pair DPO losses, computed before the policy update.
    """
    if losses.ndim != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty [B] tensor, got shape {list(losses.shape)}")
    losses = losses.detach()
    return losses.mean() - losses


class QuantileNormalizer:
    """Maps raw rewards into `[0, 1]` by the quantiles of every raw value seen: `clip((r - q_lo)/(q_hi - q_lo), 0, 1)`.

    As the paper does, a call first appends its batch to the history and then normalises the batch by the quantiles
    of that updated history, so the batch counts toward its own scale, and the first batch that brings the history to
    `warmup` values is already normalised. While the history holds fewer than `warmup` values, or when `q_hi == q_lo`
    (no spread to scale by), every value maps to 0.5, the neutral reward. Quantiles interpolate linearly (numpy's
    default).

    The history is a float64 CPU tensor (`state_dict()["history"]`), so a callback can checkpoint it.

    Args:
        warmup: Number of raw values needed before normalising (the paper: 20).
        low_quantile: Quantile mapped to 0 (the paper: 0.2).
        high_quantile: Quantile mapped to 1 (the paper: 0.8).
        max_history: Keep only the most recent this many raw values; None keeps all (the paper).
    """

    def __init__(
        self,
        warmup: int = 20,
        low_quantile: float = 0.2,
        high_quantile: float = 0.8,
        max_history: int | None = None,
    ) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int, got {warmup!r}")
        if not 0.0 <= low_quantile < high_quantile <= 1.0:
            raise ValueError(f"need 0 <= low_quantile < high_quantile <= 1, got {low_quantile} and {high_quantile}")
        if max_history is not None and (isinstance(max_history, bool) or not isinstance(max_history, int)):
            raise ValueError(f"max_history must be an int or None, got {max_history!r}")
        if max_history is not None and max_history < warmup:
            raise ValueError(f"max_history ({max_history}) must be at least warmup ({warmup}), or it never warms up")
        self.warmup = warmup
        self.low_quantile = low_quantile
        self.high_quantile = high_quantile
        self.max_history = max_history
        self.history = torch.empty(0, dtype=torch.float64)

    def __call__(self, raw: Tensor) -> Tensor:
        """Appends `raw` to the history, then returns it normalised, in `raw`'s dtype and device.

        Args:
            raw: `[B]` raw rewards (e.g. `batch_baseline(losses)`, or `-loss` of a whole batch for LASER).
        """
        if raw.ndim != 1:
            raise ValueError(f"raw rewards must be [B], got shape {list(raw.shape)}")
        values = raw.detach().to("cpu", torch.float64)
        if not torch.isfinite(values).all():
            raise ValueError(f"raw rewards must be finite, got {values.tolist()}; the history is left unchanged")
        self.history = self._trim(torch.cat([self.history, values]))
        return self.normalize(values).to(device=raw.device, dtype=raw.dtype if raw.is_floating_point() else None)

    @property
    def warm(self) -> bool:
        """Whether the history holds `warmup` values, so `normalize` maps by quantiles rather than to 0.5."""
        return self.history.numel() >= self.warmup

    def normalize(self, raw: Tensor) -> Tensor:
        """Normalises `raw` by the current history without adding to it (float64, on the CPU)."""
        values = raw.detach().to("cpu", torch.float64)
        if self.history.numel() < self.warmup:
            return torch.full_like(values, 0.5)
        bounds = torch.tensor([self.low_quantile, self.high_quantile], dtype=torch.float64)
        low, high = torch.quantile(self.history, bounds).tolist()
        if high <= low:
            return torch.full_like(values, 0.5)
        return ((values - low) / (high - low)).clamp(0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the history; under a smaller `max_history` than the saving run had, only the newest values stay."""
        if "history" not in state:
            raise ValueError(f"normalizer state lacks 'history', got keys {sorted(state)}")
        history = state["history"]
        if not isinstance(history, Tensor) or history.ndim != 1:
            raise ValueError(f"normalizer history must be a 1-d tensor, got {type(history).__name__} {history!r:.80}")
        history = history.detach().to("cpu", torch.float64, copy=True)
        if not torch.isfinite(history).all():
            raise ValueError("normalizer history has non-finite values; the checkpoint is damaged")
        self.history = self._trim(history)

    def _trim(self, history: Tensor) -> Tensor:
        if self.max_history is not None and history.numel() > self.max_history:
            return history[-self.max_history :].clone()  # a clone drops the old values' storage
        return history


def centred(reward: Tensor) -> Tensor:
    """A normalised reward on `[0, 1]` moved to `[-1, 1]` (`2r - 1`), so an average pair rewards about 0."""
    return 2 * reward - 1


class HeldRewards:
    """Rows a router routed before its normaliser warmed up, kept to be learned once it has: `(rm, h, raw reward)`.

    Learning them then, with their normalised rewards, instead of learning the normaliser's placeholder 0.5 for them,
    loses no observation and invents none.
    """

    def __init__(self) -> None:
        self.rm_index = torch.empty(0, dtype=torch.long)
        self.h: Tensor | None = None
        self.raw = torch.empty(0, dtype=torch.float64)

    def __len__(self) -> int:
        return self.rm_index.numel()

    def add(self, rm_index: Tensor, h: Tensor, raw: Tensor) -> None:
        """Appends rows: `rm_index [M]`, `h [M, d]`, `raw [M]`."""
        h = h.detach().to("cpu", torch.float64)
        self.rm_index = torch.cat([self.rm_index, rm_index.detach().cpu().long()])
        self.h = h.clone() if self.h is None else torch.cat([self.h, h])
        self.raw = torch.cat([self.raw, raw.detach().to("cpu", torch.float64)])

    def take(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every held row `(rm_index, h, raw)`, oldest first; the store is empty afterwards."""
        if self.h is None:
            raise ValueError("no rows are held")
        rows = (self.rm_index, self.h, self.raw)
        self.__init__()
        return rows

    def release(
        self, normalizer: QuantileNormalizer, rm_index: Tensor, h: Tensor, raw: Tensor
    ) -> tuple[Tensor, Tensor, Tensor] | None:
        """Holds these rows; once `normalizer` is warm (their raw rewards already in its history), releases every held
        row as `(rm_index, h, normalised reward)`, oldest first. None while it is still warming up."""
        self.add(rm_index, h, raw)
        if not normalizer.warm:
            return None
        rm_index, h, raw = self.take()
        return rm_index, h, normalizer.normalize(raw)

    def state_dict(self) -> dict[str, Any]:
        return {"rm_index": self.rm_index.clone(), "h": None if self.h is None else self.h.clone(), "raw": self.raw}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rm_index = state["rm_index"].clone()
        self.h = None if state["h"] is None else state["h"].clone()
        self.raw = state["raw"].clone()
