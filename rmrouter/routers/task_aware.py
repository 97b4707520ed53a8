"""Task-aware routing math: which kind of task a pair is, and how reliable each RM is on each kind.

Every measurement of the paper's router on this project's data said the same: what the behaviour data teach is mostly
*which task a pair belongs to* and *which RM is reliable on that task* (a lookup from the pair's label to the RM best
on it was at least as good as the learned per-pair router). So this router models exactly that, and lets the text add
what it can on top:

    P(RM n right | pair x, task t) = sigmoid(a[t, n] + r_n(x))

with `a` a `[T, N]` table of per-task reliabilities (logits) and `r_n(x)` a per-pair residual that starts at 0 and is
kept small by weight decay. With the residual at 0, the fitted `a[t, n]` is the logit of RM `n`'s accuracy on task `t`
and the routing is the lookup: the router nests the lookup and departs from it only where the data support a residual.
When a pair's task is not known (no label, or one never seen in training), a task head's probabilities `q(t | x)`
stand in for it:

    P(RM n right | x) = sum_t q(t | x) sigmoid(a[t, n] + r_n(x))

and the pair goes to the eligible RM most likely right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

UNKNOWN_TASK = -1


def task_indices(labels: Sequence[str], tasks: Sequence[str]) -> Tensor:
    """`[B]` long: each label's index in `tasks`, `UNKNOWN_TASK` for a label outside it."""
    index = {task: i for i, task in enumerate(tasks)}
    return torch.tensor([index.get(label, UNKNOWN_TASK) for label in labels], dtype=torch.long)


def task_probabilities(task_logits: Tensor, known: Tensor) -> Tensor:
    """`[B, T]`: the one-hot of a pair's known task (`known[b] >= 0`), else the task head's softmax.

    Args:
        task_logits: `[B, T]` task head logits.
        known: `[B]` long, each pair's task index or `UNKNOWN_TASK`.
    """
    predicted = task_logits.softmax(dim=-1)
    one_hot = torch.nn.functional.one_hot(known.clamp_min(0), task_logits.shape[-1]).to(predicted.dtype)
    return torch.where((known >= 0).unsqueeze(-1), one_hot, predicted)


def right_logits(reliability: Tensor, residual: Tensor, tasks: Tensor) -> Tensor:
    """`[B, N]` logits of "RM n is right" for pairs of known tasks: `a[t_b, n] + r[b, n]`.

    Args:
        reliability: `[T, N]` per-task reliability logits `a`.
        residual: `[B, N]` per-pair residuals `r(x)`.
        tasks: `[B]` long task indices, all known.
    """
    if (tasks < 0).any():
        raise ValueError("right_logits needs every pair's task; use right_probabilities for pairs of unknown task")
    return reliability.index_select(0, tasks) + residual


def right_probabilities(reliability: Tensor, residual: Tensor, task_probs: Tensor) -> Tensor:
    """`[B, N]` `P(RM n right) = sum_t q[b, t] sigmoid(a[t, n] + r[b, n])`, the routing scores.

    Args:
        reliability: `[T, N]` per-task reliability logits `a`.
        residual: `[B, N]` per-pair residuals `r(x)`.
        task_probs: `[B, T]` each pair's task distribution `q` (one-hot where the task is known).
    """
    per_task = torch.sigmoid(reliability.unsqueeze(0) + residual.unsqueeze(1))  # [B, T, N]
    return torch.einsum("bt,btn->bn", task_probs, per_task)


def task_counts(labels: Sequence[str], mask: Tensor, tasks: Sequence[str]) -> Tensor:
    """`[T, N]` float: per task, its rows where `mask [R, N]` holds, per column (rows of no task are left out)."""
    index = task_indices(labels, tasks)
    known = index >= 0
    one_hot = torch.nn.functional.one_hot(index[known], len(tasks)).double().T  # [T, R_known]
    return (one_hot @ mask[known].double()).float()


def empirical_reliability(labels: Sequence[str], right: Tensor, eligible: Tensor, tasks: Sequence[str]) -> Tensor:
    """`[T, N]` logits of each RM's accuracy on each task's rows it could judge, with one right and one wrong judgement
    added to each (Laplace's rule, so an RM right on every row gets a finite logit); 0 (a coin) for a task without rows.

    With the residual at zero these are the reliabilities the BCE loss fits, so a router started here starts at the
    lookup.

    Args:
        labels: Each row's task label.
        right: `[R, N]` bool, RM `n` right on row `r`.
        eligible: `[R, N]` bool, RM `n` could judge row `r`.
        tasks: The task labels, in the order of the rows of the result.
    """
    judged = task_counts(labels, eligible, tasks).double()
    hits = task_counts(labels, right & eligible, tasks).double()
    accuracy = (hits + 1) / (judged + 2)
    return torch.where(judged > 0, torch.logit(accuracy), torch.zeros_like(accuracy)).float()
