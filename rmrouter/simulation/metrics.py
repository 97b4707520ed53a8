"""What a stream's log says: labelling accuracy (overall, early, per domain), coverage, cost, the reward's signal."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from rmrouter.simulation.loop import StreamLog
from rmrouter.simulation.stream import PairStream


def mean(values: Tensor) -> float | None:
    """The mean of a bool or float tensor as a float; None for an empty one."""
    return float(values.double().mean()) if values.numel() else None


def stream_summary(log: StreamLog, stream: PairStream, first_fraction: float = 0.1) -> dict[str, Any]:
    """The figures of one run.

    `accuracy` counts a pair without a label as wrong (it trains nothing); `accuracy_labelled` is over the labelled
    pairs alone and `coverage` their share. `first_accuracy` is over the first `first_fraction` of the stream.
    `ceiling` is the share of pairs some eligible RM labels right, the most a one-RM router can reach.
    """
    right, labelled = log.right, log.preference != 0
    first = max(1, math.ceil(first_fraction * len(right)))
    domains = [stream.domains[int(r)] for r in log.row]
    per_domain = {}
    for domain in sorted(set(domains)):
        rows = torch.tensor([d == domain for d in domains])
        per_domain[domain] = mean(right[rows])
    chosen = log.rm_index[log.rm_index >= 0]
    return {
        "pairs": len(right),
        "accuracy": mean(right),
        "first_accuracy": mean(right[:first]),
        "coverage": mean(labelled),
        "accuracy_labelled": mean(right[labelled]),
        "rm_calls_per_pair": log.rm_calls / len(right),
        "per_domain": per_domain,
        "ceiling": mean(stream.right[log.row].any(dim=1)),
        "selection": torch.bincount(chosen, minlength=len(stream.rm_names)).tolist(),
    }


def reward_auroc(log: StreamLog, window_steps: int) -> list[dict[str, Any]]:
    """Per window of `window_steps` steps, the AUROC of `-loss` (what every router's reward grows with) for "the
    routed label was right", over the window's trained pairs; None where the window has one class only."""
    if window_steps < 1:
        raise ValueError(f"window_steps must be positive, got {window_steps}")
    trained = torch.isfinite(log.loss) & (log.preference != 0)
    windows = []
    for start in range(0, int(log.step.max()) + 1, window_steps):
        rows = trained & (log.step >= start) & (log.step < start + window_steps)
        windows.append(
            {"first_step": start, "pairs": int(rows.sum()), "auroc": signal_auroc(log.loss[rows], log.right[rows])}
        )
    return windows


def signal_auroc(losses: Tensor, right: Tensor) -> float | None:
    """The AUROC of `-losses` for `right` (how well a low loss tells a right label); None without both classes."""
    target = right.long()
    if target.numel() == 0 or not 0 < int(target.sum()) < target.numel():
        return None
    return float(binary_auroc(-losses.double(), target))


def cumulative_accuracy(log: StreamLog) -> Tensor:
    """`[M]` the labelling accuracy of the first `i + 1` pairs."""
    return log.right.double().cumsum(0) / torch.arange(1, len(log.right) + 1, dtype=torch.float64)
