"""Cost-aware routing decisions (rmrouter.routers.cost) on hand-built cases."""

from __future__ import annotations

import pytest
import torch

from rmrouter.routers.cost import MarginCalibration, budget_choice, cascade, cost_aware_choice

# three RMs: free and 60 % right, cheap and 80 % right, dear and 90 % right
RELIABILITY = torch.tensor([[0.6, 0.8, 0.9], [0.6, 0.8, 0.9]])
COST = torch.tensor([0.0, 1.0, 10.0])
ALL = torch.ones(2, 3, dtype=torch.bool)


def test_the_cost_aware_argmax_trades_reliability_for_cost_as_lambda_grows():
    assert cost_aware_choice(RELIABILITY, COST, 0.0, ALL).tolist() == [2, 2]  # the most reliable
    # 0.9 - 10 lam against 0.8 - lam: the dear RM until lam = 0.1 / 9
    assert cost_aware_choice(RELIABILITY, COST, 0.01, ALL).tolist() == [2, 2]
    assert cost_aware_choice(RELIABILITY, COST, 0.02, ALL).tolist() == [1, 1]
    # 0.8 - lam against 0.6: the free RM from lam = 0.2 on
    assert cost_aware_choice(RELIABILITY, COST, 0.3, ALL).tolist() == [0, 0]
    eligible = torch.tensor([[True, True, False], [False, False, False]])
    assert cost_aware_choice(RELIABILITY, COST, 0.0, eligible).tolist() == [1, -1]  # only eligible RMs; none: -1
    with pytest.raises(ValueError, match="lambda must be >= 0"):
        cost_aware_choice(RELIABILITY, COST, -1.0, ALL)


def test_a_tie_goes_to_the_cheaper_rm():
    reliability = torch.tensor([[0.8, 0.8, 0.8]])
    assert cost_aware_choice(reliability, torch.tensor([5.0, 1.0, 3.0]), 0.0, torch.ones(1, 3, dtype=torch.bool)) == 1


def test_the_budget_rule_takes_the_most_reliable_rm_it_can_afford():
    assert budget_choice(RELIABILITY, COST, 10.0, ALL).tolist() == [2, 2]
    assert budget_choice(RELIABILITY, COST, 5.0, ALL).tolist() == [1, 1]
    assert budget_choice(RELIABILITY, COST, 0.0, ALL).tolist() == [0, 0]
    # nothing affordable can judge the pair: the cheapest eligible RM labels it rather than none
    eligible = torch.tensor([[False, False, True], [False, True, True]])
    assert budget_choice(RELIABILITY, COST, 0.5, eligible).tolist() == [2, 1]


def test_a_two_stage_cascade_escalates_the_unconfident_and_the_abstained_pairs():
    first = torch.tensor([1.0, -1.0, 0.0, 1.0])
    confidence = torch.tensor([0.95, 0.55, float("nan"), 0.7])
    second = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    labels, escalated = cascade(first, confidence, second, threshold=0.7)
    assert escalated.tolist() == [False, True, True, False]
    assert labels.tolist() == [1.0, 1.0, 1.0, 1.0]
    # the calls and the cost per pair follow: every pair calls the first RM, the escalated ones the second too
    cost_first, cost_second = 0.1, 2.0
    assert (cost_first + escalated.double() * cost_second).mean().item() == pytest.approx(0.1 + 2.0 * 2 / 4)
    assert cascade(first, confidence, second, threshold=0.0)[1].tolist() == [False, False, True, False]
    assert cascade(first, confidence, second, threshold=1.1)[1].all()


def test_the_margin_calibration_is_per_task_and_grows_with_the_margin():
    torch.manual_seed(0)
    margin = torch.rand(400) * 4
    # math: right when the margin is large; chat: right 70 % of the time whatever the margin
    tasks = ["math"] * 200 + ["chat"] * 200
    right = torch.cat([margin[:200] > 1.0, torch.rand(200) < 0.7])
    calibration = MarginCalibration.fit(tasks, margin, right)
    assert calibration.tasks == ["chat", "math"] and calibration.rows == [200, 200, 400]
    low, high = calibration.probability(["math", "math"], torch.tensor([0.2, 3.0])).tolist()
    assert low < 0.3 and high > 0.9
    flat = calibration.probability(["chat", "chat"], torch.tensor([0.2, 3.0]))
    assert flat.tolist() == pytest.approx([0.7, 0.7], abs=0.1)
    unseen = calibration.probability(["koala"], torch.tensor([3.0]))  # an unknown task: the pooled curve
    assert 0.5 < unseen.item() < 1.0
    assert torch.isnan(calibration.probability(["math"], torch.tensor([float("nan")]))).all()


def test_a_task_with_too_few_rows_falls_back_on_the_pooled_curve():
    margin = torch.tensor([0.1, 0.2, 3.0, 4.0] * 10 + [1.0, float("nan")])
    right = torch.tensor([False, False, True, True] * 10 + [True, False])
    calibration = MarginCalibration.fit(["math"] * 40 + ["rare", "rare"], margin, right)
    assert calibration.tasks == ["math"]  # "rare" has one judged row
    pooled = calibration.probability(["rare"], torch.tensor([3.0])).item()
    assert pooled == pytest.approx(calibration.probability(["other"], torch.tensor([3.0])).item())
