"""The cascade router on hand-built margins: who is asked, who labels, what it costs, and fitting from a file."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rmrouter.routers.base import PairBatch
from rmrouter.routers.cascade import CascadeRouter
from rmrouter.routers.cost import MarginCalibration
from rmrouter.routers.data_label import DataLabelRouting

RMS = ["cheap", "strong"]
# the cheap RM's margin on each pair (NaN: it cannot judge it), and the strong RM's
CHEAP = [0.1, 2.0, float("nan"), 0.92]
STRONG = [-1.0, -1.0, 1.0, -1.0]


class Judge:
    def __init__(self) -> None:
        self.asked: list[tuple[int, list[int]]] = []

    def eligible(self, pairs: PairBatch) -> torch.Tensor:
        return torch.tensor([[not math.isnan(CHEAP[row]), True] for row in self.rows(pairs)])

    def margins(self, rm_index: int, pairs: PairBatch) -> torch.Tensor:
        rows = self.rows(pairs)
        self.asked.append((rm_index, rows))
        return torch.tensor([(CHEAP if rm_index == 0 else STRONG)[row] for row in rows])

    @staticmethod
    def rows(pairs: PairBatch) -> list[int]:
        return list(range(len(pairs))) if pairs.rows is None else pairs.rows


def pairs() -> PairBatch:
    size = len(CHEAP)
    return PairBatch([[{"role": "user", "content": f"q{i}"}] for i in range(size)], ["x"] * size, ["y"] * size,
                     [None] * size, ["math"] * size)  # fmt: skip


def router(first: str = "cheap", **overrides) -> CascadeRouter:
    # training rows on math: the strong RM right on 4 of 5, the cheap one on 2 (its lookup picks the strong RM)
    right = torch.tensor([[1, 1], [1, 1], [0, 1], [0, 1], [0, 0]], dtype=torch.bool)
    lookup = DataLabelRouting.fit(["math"] * 5, ["s"] * 5, right, torch.ones(5, 2, dtype=torch.bool))
    # P(cheap right | math, |m|) = sigmoid(2 |m| - 1): 0.31 at 0.1, 0.95 at 2.0, 0.70 at 0.92
    calibration = MarginCalibration(["math"], torch.tensor([2.0, 0.0], dtype=torch.float64),
                                    torch.tensor([-1.0, 0.0], dtype=torch.float64), [5, 5])  # fmt: skip
    return CascadeRouter(RMS, first=first, lookup=lookup, calibration=calibration, **overrides)


def test_a_pair_goes_on_where_the_lookups_rm_is_likelier_right_than_the_first_rms_margin_says():
    cascade, judge = router(), Judge()
    cascade.connect_pool(RMS, costs=torch.tensor([0.0, 1.0]))
    routing = cascade.route(pairs(), judge)
    # the strong RM is 80 % right on math: pairs where the cheap RM's chance is below that, or it cannot judge, go on
    assert routing.rm_index.tolist() == [1, 0, 1, 1]
    assert routing.preference.tolist() == [-1.0, 1.0, 1.0, -1.0]  # the last RM called gives the label
    assert judge.asked == [(0, [0, 1, 3]), (1, [0, 2, 3])]  # the cheap RM only where it can judge; each RM once
    assert routing.calls_by_rm.tolist() == [3.0, 3.0] and routing.rm_calls == 6
    assert cascade.cost_total == pytest.approx(3.0)  # three calls of the strong RM; the cheap ones are free


def test_a_cost_weight_keeps_the_first_label_where_the_gain_is_not_worth_the_price():
    cascade = router(cost_weight=0.2)  # going on costs 0.2 in chance of being right: worth it below 0.6
    cascade.connect_pool(RMS, costs=torch.tensor([0.0, 1.0]))
    assert cascade.route(pairs(), Judge()).rm_index.tolist() == [1, 0, 1, 0]  # the 0.70 pair stays
    unpriced = router(cost_weight=0.2)
    unpriced.connect_pool(RMS)
    with pytest.raises(ValueError, match="needs the pool's costs"):
        unpriced.route(pairs(), Judge())
    with pytest.raises(ValueError, match="first 'length' is not in the pool"):
        router(first="length")


def test_it_fits_its_lookup_and_calibration_on_the_behaviour_files_train_split(tmp_path):
    from behaviour_helpers import RM_NAMES, write_behaviour

    from rmrouter.data.behaviour_datamodule import BehaviourDataModule
    from rmrouter.data.behaviour_split import split_named_by

    write_behaviour(tmp_path / "behaviour.jsonl", rows=96)
    split = split_named_by(Path(__file__).resolve().parents[1] / "configs" / "offline_router.yaml")
    cascade = CascadeRouter(first=RM_NAMES[1], behaviour=str(tmp_path / "behaviour.jsonl"), split=split)
    cascade.connect_pool(RM_NAMES)
    data = BehaviourDataModule(str(tmp_path / "behaviour.jsonl"), RM_NAMES, split)
    data.setup("fit")
    train = data.splits["train"]
    assert cascade.lookup.rankings == data.data_label_routing.rankings
    expected = MarginCalibration.fit(train.domains, train.margin[:, 1].double(), train.agree[:, 1].bool())
    assert cascade.calibration.tasks == expected.tasks and torch.equal(cascade.calibration.bias, expected.bias)
