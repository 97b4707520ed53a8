"""Epoch metrics of a reward-model router on behaviour data, for one stage (`train`, `val`, `test`, `ood`, ...).

Routing accuracies are measured, as in the paper, over the rows where at least one RM is right (where routing can
matter at all); the share of such rows among all rows is `any_right`. On those rows the oracle scores 1 by
definition, and the router is compared with a uniformly random RM, each single RM, and the majority vote of the
pool. Every value is an exact mean over its rows (or pairs) for the whole epoch, synchronised across processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.classification import MultilabelAUROC

from rmrouter.losses import disagreement_pairs, majority_vote_credit

LOSSES = ("loss", "bt_loss", "cls_loss")
MEANS = ("router_acc", "baseline/random", "baseline/majority_vote", "any_right", "bt_pair_acc")


class ColumnMeans(Metric):
    """Per-column means of `[rows, N]` values over all rows of the epoch."""

    full_state_update = False

    def __init__(self, num_columns: int):
        super().__init__()
        self.add_state("total", torch.zeros(num_columns), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        self.total += values.sum(dim=0)
        self.count += values.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count


class RoutingMetrics(nn.Module):
    """The metrics of one stage: `update` per step, `compute` and `reset` at the end of each epoch.

    Args:
        rm_names: The RM of each column of `agree`, `margin` and the scores.
    """

    def __init__(self, rm_names: Sequence[str]):
        super().__init__()
        self.rm_names = list(rm_names)
        # module names with underscores: slashes would end up in state-dict keys and metric names alike
        self.means = nn.ModuleDict({name.replace("/", "_"): MeanMetric() for name in LOSSES + MEANS})
        self.single = ColumnMeans(len(self.rm_names))  # each RM's accuracy, on the rows where some RM is right
        self.right_rate = ColumnMeans(len(self.rm_names))  # on all rows: tells when an RM's AUROC is undefined
        self.auroc = MultilabelAUROC(num_labels=len(self.rm_names), average=None)
        self.steps_without_bt_pairs = SumMetric()

    def _mean(self, name: str, values: Tensor) -> None:
        if values.numel() > 0:  # a batch without such rows adds nothing; the epoch mean stays exact
            self.means[name.replace("/", "_")].update(values)

    @torch.no_grad()
    def update(
        self, losses: dict[str, Tensor], scores: Tensor, cls_logits: Tensor, agree: Tensor, margin: Tensor
    ) -> None:
        """Adds one batch.

        Args:
            losses: `loss`, `bt_loss` and `cls_loss` of the batch. Each is weighted by the batch's rows, so the epoch
                value of `bt_loss` (a mean over each batch's pairs) is the row-weighted mean the optimiser saw.
            scores: `[B, N]` router scores (the argmax is the routed RM).
            cls_logits: `[B, N]` classification logits predicting `agree`.
            agree: `[B, N]`, 1.0 where the RM is right.
            margin: `[B, N]` score margins, NaN where the RM abstained.
        """
        right = agree == 1
        rows = len(agree)
        for name in LOSSES:
            self.means[name].update(losses[name].detach(), weight=rows)
        routable = right.any(dim=1)
        self._mean("any_right", routable.float())
        chosen = scores.argmax(dim=1)
        self._mean("router_acc", right[torch.arange(rows, device=agree.device), chosen][routable].float())
        self._mean("baseline/random", right[routable].float().mean(dim=1))
        self._mean("baseline/majority_vote", majority_vote_credit(margin)[routable])
        if routable.any():
            self.single.update(right[routable].float())
        pair_rows, better, worse = disagreement_pairs(agree)
        better_scores, worse_scores = scores[pair_rows, better], scores[pair_rows, worse]
        # an exact tie is a coin flip, as in pair_accuracy
        self._mean(
            "bt_pair_acc", (better_scores > worse_scores).float() + 0.5 * (better_scores == worse_scores).float()
        )
        self.steps_without_bt_pairs.update(float(pair_rows.numel() == 0))
        self.right_rate.update(right.float())
        self.auroc.update(cls_logits.detach().float(), right.long())

    def compute(self) -> dict[str, Tensor]:
        """Metric name (`router_acc`, `baseline/single/<rm>`, `auroc/<rm>`, ...) -> value; NaN where undefined.

        `baseline/best_single` is the best single RM chosen on this same split (an upper bound for picking one RM
        in advance). `auroc/<rm>` is NaN where the RM was always or never right in the epoch.
        """
        with warnings.catch_warnings():
            # a metric without data (no pairs in the epoch, a one-class RM for AUROC) is reported as NaN below
            warnings.filterwarnings("ignore", message=".*(before the ``update``|No (positive|negative) samples)")
            values = {name: self.means[name.replace("/", "_")].compute() for name in LOSSES + MEANS}
            single, right_rate, auroc = self.single.compute(), self.right_rate.compute(), self.auroc.compute()
        values.update({f"baseline/single/{rm}": single[n] for n, rm in enumerate(self.rm_names)})
        values["baseline/best_single"] = single.max()
        auroc = torch.where((right_rate > 0) & (right_rate < 1), auroc, torch.full_like(auroc, float("nan")))
        values.update({f"auroc/{rm}": auroc[n] for n, rm in enumerate(self.rm_names)})
        values["steps_without_bt_pairs"] = self.steps_without_bt_pairs.compute()
        return values

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
