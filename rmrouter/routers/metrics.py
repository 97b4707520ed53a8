"""Epoch metrics of a reward-model router on behaviour data, for one stage (`train`, `val`, `test`, `ood`, ...).

Routing accuracies are measured, as in the paper, over the rows where at least one RM is right (where routing can
matter at all); the share of such rows among all rows is `any_right`. On those rows the oracle scores 1 by
definition, and the router is compared with a uniformly random RM, each single RM, the majority vote of the pool and
routing by data label (`rmrouter.routers.data_label`). Every value is an exact mean over its rows (or pairs) for the
whole epoch, synchronised across processes.

An RM that cannot judge a row (it abstained, e.g. no reference answer) is ineligible there, not wrong: the router and
the random RM choose among the eligible RMs only, `baseline/single/<rm>` is the RM's accuracy on the rows it can judge
and `coverage/<rm>` the share of all rows it can judge. `baseline/best_single` is the best RM used alone on every
row, where a row it cannot judge gets no label: the baseline a user who picks one RM in advance gets.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.classification import MultilabelAUROC

from rmrouter.losses import disagreement_pairs
from rmrouter.routers.decisions import best_eligible, majority_vote_credit

LOSSES = ("loss", "bt_loss", "cls_loss")
MEANS = (
    "router_acc", "baseline/random", "baseline/majority_vote", "baseline/data_label", "any_right", "bt_pair_acc"
)  # fmt: skip


class ColumnMeans(Metric):
    """Per-column means of `[rows, N]` values over the epoch's rows where `mask` is True (all rows by default)."""

    full_state_update = False

    def __init__(self, num_columns: int):
        super().__init__()
        self.add_state("total", torch.zeros(num_columns), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(num_columns), dist_reduce_fx="sum")

    def update(self, values: Tensor, mask: Tensor | None = None) -> None:
        weight = torch.ones_like(values) if mask is None else mask.to(values.dtype)
        self.total += (values * weight).sum(dim=0)
        self.count += weight.sum(dim=0)

    def compute(self) -> Tensor:
        """NaN in a column with no rows."""
        return self.total / self.count


class RoutingMetrics(nn.Module):
    """The metrics of one stage: `update` per step, `compute` and `reset` at the end of each epoch.

    Args:
        rm_names: The RM of each column of `agree`, `margin` and the scores.
        loss_names: The losses `update` is given (the router's own; `loss` first).
    """

    def __init__(self, rm_names: Sequence[str], loss_names: Sequence[str] = LOSSES):
        super().__init__()
        self.rm_names = list(rm_names)
        self.loss_names = tuple(loss_names)
        # module names with underscores: slashes would end up in state-dict keys and metric names alike
        self.means = nn.ModuleDict({name.replace("/", "_"): MeanMetric() for name in self.loss_names + MEANS})
        num_rms = len(self.rm_names)
        self.single = ColumnMeans(num_rms)  # each RM's accuracy on the rows it can judge where some RM is right
        self.alone = ColumnMeans(num_rms)  # each RM used on every row where some RM is right; ineligible: no label
        self.coverage = ColumnMeans(num_rms)  # the share of all rows each RM can judge
        self.right_rate = ColumnMeans(num_rms)  # on the rows it can judge: tells when an RM's AUROC is undefined
        self.auroc = MultilabelAUROC(num_labels=num_rms, average=None, ignore_index=-1)
        self.steps_without_bt_pairs = SumMetric()

    def _mean(self, name: str, values: Tensor) -> None:
        if values.numel() > 0:  # a batch without such rows adds nothing; the epoch mean stays exact
            self.means[name.replace("/", "_")].update(values)

    @torch.no_grad()
    def update(
        self,
        losses: dict[str, Tensor],
        scores: Tensor,
        cls_logits: Tensor,
        agree: Tensor,
        margin: Tensor,
        eligible: Tensor,
        label_route: Tensor,
    ) -> None:
        """Adds one batch.

        Args:
            losses: Each of `loss_names` for the batch (`loss`, `bt_loss` and `cls_loss` by default). Each is weighted
                by the batch's rows, so the epoch value of a loss that is a mean over each batch's rows or pairs is
                the row-weighted mean the optimiser saw.
            scores: `[B, N]` router scores (the argmax over the eligible RMs is the routed RM).
            cls_logits: `[B, N]` classification logits predicting `agree`.
            agree: `[B, N]`, 1.0 where the RM is right.
            margin: `[B, N]` score margins, NaN where the RM abstained.
            eligible: `[B, N]` bool, True where the RM can judge the row.
            label_route: `[B]` long, the RM that routing by data label picks for each row (-1: none can judge it).
        """
        right = (agree == 1) & eligible
        rows = len(agree)
        index = torch.arange(rows, device=agree.device)
        for name in self.loss_names:
            self.means[name].update(losses[name].detach(), weight=rows)
        routable = right.any(dim=1)
        self._mean("any_right", routable.float())
        chosen = best_eligible(scores, eligible)
        self._mean("router_acc", right[index, chosen][routable].float())
        random_credit = right.sum(dim=1).float() / eligible.sum(dim=1).clamp_min(1).float()  # uniform over eligible
        self._mean("baseline/random", random_credit[routable])
        self._mean("baseline/majority_vote", majority_vote_credit(margin)[routable])
        label_right = right[index, label_route.clamp_min(0)] & (label_route >= 0)
        self._mean("baseline/data_label", label_right[routable].float())
        if routable.any():
            self.single.update(right[routable].float(), eligible[routable])
            self.alone.update(right[routable].float())
        self.coverage.update(eligible.float())
        pair_rows, better, worse = disagreement_pairs(agree, eligible)
        better_scores, worse_scores = scores[pair_rows, better], scores[pair_rows, worse]
        # an exact tie is a coin flip, as in pair_accuracy
        self._mean(
            "bt_pair_acc", (better_scores > worse_scores).float() + 0.5 * (better_scores == worse_scores).float()
        )
        self.steps_without_bt_pairs.update(float(pair_rows.numel() == 0))
        self.right_rate.update(right.float(), eligible)
        self.auroc.update(cls_logits.detach().float(), torch.where(eligible, right.long(), -1))

    def compute(self) -> dict[str, Tensor]:
        """Metric name (`router_acc`, `baseline/single/<rm>`, `coverage/<rm>`, `auroc/<rm>`, ...) -> value; NaN where
        undefined.

        `baseline/best_single` is the best RM used alone, chosen on this same split (an upper bound for picking one
        RM in advance); `baseline/best_single_rm` is its index in `rm_names`. `auroc/<rm>` is NaN where the RM was
        always or never right on the rows it could judge.
        """
        with warnings.catch_warnings():
            # a metric without data (no pairs in the epoch, a one-class RM for AUROC) is reported as NaN below
            warnings.filterwarnings("ignore", message=".*(before the ``update``|No (positive|negative) samples)")
            values = {name: self.means[name.replace("/", "_")].compute() for name in self.loss_names + MEANS}
            single, right_rate, auroc = self.single.compute(), self.right_rate.compute(), self.auroc.compute()
            alone, coverage = self.alone.compute(), self.coverage.compute()
        values.update({f"baseline/single/{rm}": single[n] for n, rm in enumerate(self.rm_names)})
        values.update({f"coverage/{rm}": coverage[n] for n, rm in enumerate(self.rm_names)})
        best = torch.nan_to_num(alone, nan=-1.0).argmax()
        values["baseline/best_single"] = alone[best]
        values["baseline/best_single_rm"] = best.float()
        auroc = torch.where((right_rate > 0) & (right_rate < 1), auroc, torch.full_like(auroc, float("nan")))
        values.update({f"auroc/{rm}": auroc[n] for n, rm in enumerate(self.rm_names)})
        values["steps_without_bt_pairs"] = self.steps_without_bt_pairs.compute()
        return values

    def reset(self) -> None:
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
