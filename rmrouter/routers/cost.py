"""Cost-aware routing decisions: what each RM costs per call against how likely it is to be right.

Pure functions of tensors, shared by the cost frontier benchmark and the routers that use them:

- `cost_aware_choice`: per pair, the eligible RM maximising `P(right) - lambda * cost` (lambda = 0: the most reliable;
  large: the cheapest);
- `budget_choice`: per pair, the most reliable eligible RM whose cost fits a budget (the cheapest eligible RM when
  none does);
- `MarginCalibration` and `cascade`: call a cheap RM first, and a second only where the first one's margin, calibrated
  per task on training rows, says it is likely wrong. A reward model's margin carries per-pair information no text
  feature has: among pairs of one task, those it scores far apart are more often right than those it scores close.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def checked_cost_weight(weight: float) -> float:
    """`lambda`, checked: a finite number >= 0 (0 ignores cost)."""
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
        raise ValueError(f"cost_weight must be a finite number >= 0 (0: ignore cost), got {weight!r}")
    return float(weight)


def routing_cost(rm_index: Tensor, rm_calls: int, costs: Tensor) -> float:
    """What a batch's RM calls cost: each pair's RM (`rm_index >= 0`) at its cost, and the calls no single RM is
    credited with (an ensemble's, every RM on every pair) at the pool's mean cost per call, which is exact when they
    spread evenly over the RMs, as majority vote and UWO call them."""
    routed = rm_index >= 0
    unattributed = rm_calls - int(routed.sum())
    return float(costs[rm_index[routed]].sum()) + max(unattributed, 0) * float(costs.mean())


def cost_aware_choice(reliability: Tensor, cost: Tensor, lam: float, eligible: Tensor) -> Tensor:
    """`[P]` long: per pair, `argmax_n reliability[p, n] - lam * cost[n]` over the eligible RMs; -1 where none is.

    Ties go to the cheaper RM, then to the lower index.

    Args:
        reliability: `[P, N]` each RM's probability of being right on each pair (e.g. its training accuracy on the
            pair's label).
        cost: `[N]` each RM's cost per call (seconds, parameters, price: any one unit).
        lam: The price of one unit of cost in probability of being right; >= 0.
        eligible: `[P, N]` bool, RM `n` can judge pair `p`.
    """
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    if reliability.shape != eligible.shape or cost.shape != reliability.shape[1:]:
        raise ValueError(f"reliability {list(reliability.shape)}, eligible {list(eligible.shape)} and cost "
                         f"{list(cost.shape)} must be [P, N], [P, N] and [N]")  # fmt: skip
    value = reliability.double() - lam * cost.double()
    # a lexicographic key: value first, then the lower cost, then the lower index
    order = torch.argsort(torch.argsort(cost.double(), stable=True), stable=True).double()  # rank of each RM by cost
    key = torch.where(eligible, value, torch.tensor(-torch.inf, dtype=torch.float64))
    best = key.max(dim=1, keepdim=True).values
    tied = (key == best) & eligible
    chosen = torch.where(tied, order, torch.tensor(torch.inf, dtype=torch.float64)).argmin(dim=1)
    return torch.where(eligible.any(dim=1), chosen, torch.tensor(-1))


def budget_choice(reliability: Tensor, cost: Tensor, budget: float, eligible: Tensor) -> Tensor:
    """`[P]` long: per pair, the most reliable eligible RM whose cost is at most `budget`, else the cheapest eligible
    RM (a pair is never left without a label while some RM can judge it); -1 where none is eligible."""
    within = eligible & (cost <= budget)
    affordable = cost_aware_choice(reliability, cost, 0.0, within)
    cheapest = cost_aware_choice(torch.zeros_like(reliability), cost, 1.0, eligible)
    return torch.where(affordable >= 0, affordable, cheapest)


@dataclass(frozen=True)
class MarginCalibration:
    """`P(the RM is right | task, |margin|)` per task, as a logistic curve in `|margin|` fitted on training rows.

    Attributes:
        tasks: The tasks (a pair's label) it was fitted on; a pair of another task uses the pooled curve.
        weight: `[T + 1]` slope per task, the pooled curve last.
        bias: `[T + 1]` intercept per task, the pooled curve last.
        rows: How many training rows each curve was fitted on.
    """

    tasks: list[str]
    weight: Tensor
    bias: Tensor
    rows: list[int]

    @classmethod
    def fit(cls, tasks: Sequence[str], margin: Tensor, right: Tensor, min_rows: int = 20) -> MarginCalibration:
        """Fits one curve per task with at least `min_rows` judged rows (and both outcomes), and a pooled one.

        Args:
            tasks: Each training row's task.
            margin: `[R]` the RM's margins on the training rows (NaN where it could not judge: left out).
            right: `[R]` bool, the RM was right.
        """
        from sklearn.linear_model import LogisticRegression

        judged = torch.isfinite(margin)
        names = sorted({task for task, seen in zip(tasks, judged.tolist(), strict=True) if seen})
        weights, biases, counts, kept = [], [], [], []
        groups = [(name, torch.tensor([t == name for t in tasks]) & judged) for name in names]
        for name, rows in [*groups, ("", judged)]:
            count, hits = int(rows.sum()), int(right[rows].sum())
            if count >= min_rows and 0 < hits < count:
                model = LogisticRegression().fit(
                    margin[rows].abs().double().numpy()[:, None], right[rows].long().numpy()
                )
                slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
            elif name:
                continue  # too few rows, or one outcome only: the task falls back on the pooled curve
            else:  # a pooled curve that cannot be fitted: the overall accuracy, whatever the margin
                rate = min(max(hits / count if count else 0.5, 1e-6), 1 - 1e-6)
                slope, intercept = 0.0, float(torch.logit(torch.tensor(rate, dtype=torch.float64)))
            weights.append(slope)
            biases.append(intercept)
            counts.append(count)
            if name:
                kept.append(name)
        return cls(kept, torch.tensor(weights, dtype=torch.float64), torch.tensor(biases, dtype=torch.float64), counts)

    def probability(self, tasks: Sequence[str], margin: Tensor) -> Tensor:
        """`[P]` float64: the chance the RM is right on each pair given its task and `|margin|`; NaN where the RM
        could not judge (a NaN margin)."""
        index = torch.tensor([self.tasks.index(t) if t in self.tasks else len(self.tasks) for t in tasks])
        logits = self.weight[index] * margin.abs().double() + self.bias[index]
        return torch.sigmoid(logits)


def cascade(first: Tensor, confidence: Tensor, second: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Two stages: each pair keeps the first RM's label where its calibrated confidence is at least `threshold` (and
    the first RM could judge it), else calls the second RM and takes its label.

    Args:
        first: `[P]` the first RM's labels (+1, -1, 0 for none).
        confidence: `[P]` the calibrated chance the first RM is right (NaN where it could not judge).
        second: `[P]` the second RM's labels.
        threshold: Escalate below this confidence (0: never escalate; above 1: always).

    Returns:
        `(labels [P], escalated [P] bool)`: the label each pair gets and whether the second RM was called.
    """
    escalated = escalate(first, confidence, threshold)
    return torch.where(escalated, second, first), escalated


def escalate(first: Tensor, confidence: Tensor, threshold: Tensor | float) -> Tensor:
    """`[P]` bool: the pairs a cascade sends on, where the first RM gave no label or its calibrated confidence is below
    `threshold` (a number, or one per pair)."""
    return ~(torch.nan_to_num(confidence, nan=-1.0) >= threshold) | (first == 0)
