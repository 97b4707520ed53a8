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


def test_a_batch_costs_its_routed_rms_and_an_ensemble_every_rm():
    from rmrouter.routers.cost import routing_cost

    costs = torch.tensor([0.0, 1.0, 10.0], dtype=torch.float64)
    assert routing_cost(torch.tensor([2, 1, -1]), 2, costs) == pytest.approx(11.0)  # the third pair: no RM, no call
    assert routing_cost(torch.tensor([-1, -1]), 6, costs) == pytest.approx(2 * 11.0)  # majority: 3 RMs on 2 pairs


def test_a_pool_declares_its_costs_by_name_or_from_the_measured_file(tmp_path):
    from rmrouter.reward_models import LengthRewardModel, RewardModelPool

    rms = [LengthRewardModel(name="a"), LengthRewardModel(name="b")]
    assert RewardModelPool(rms).costs is None
    assert RewardModelPool(rms, costs={"b": 2.0, "a": 0.5}).costs.tolist() == [0.5, 2.0]  # in pool order
    measured = tmp_path / "rm_cost.json"
    measured.write_text('{"seconds_per_pair": {"a": 0.1, "b": 0.3, "c": 9}}')
    assert RewardModelPool(rms, costs=str(measured)).costs.tolist() == [0.1, 0.3]
    with pytest.raises(ValueError, match=r"no cost for the pool's RMs \['b'\]"):
        RewardModelPool(rms, costs={"a": 1.0})
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        RewardModelPool(rms, costs={"a": 1.0, "b": -1.0})


def test_a_router_counts_what_its_calls_cost_and_keeps_it_in_its_state():
    from rmrouter.routers.base import Router, Routing

    class Fixed(Router):
        def label(self, pairs, judge):
            raise NotImplementedError

    router = Fixed()
    router.connect_pool(["a", "b"], costs=torch.tensor([0.5, 2.0]))
    router.count(Routing(torch.ones(3), torch.tensor([0, 1, 1]), rm_calls=3))
    router.count(Routing(torch.ones(1), torch.tensor([-1]), rm_calls=2))  # an ensemble: both RMs on one pair
    assert router.cost_total == pytest.approx(0.5 + 2.0 + 2.0 + (0.5 + 2.0))
    metrics = router.metrics()
    assert metrics["router/cost_total"] == pytest.approx(7.0)
    assert metrics["router/cost_per_pair"] == pytest.approx(7 / 4)
    restored = Fixed(["a", "b"])
    restored.load_state_dict(router.state_dict())
    assert restored.cost_total == pytest.approx(7.0)
    assert "router/cost_total" not in Fixed(["a", "b"]).metrics()  # a pool without costs: calls only


def test_a_live_run_logs_and_summarises_what_its_rm_calls_cost(tmp_path, tiny_causal_lm_dir):
    import yaml
    from online_cli_helpers import POOL, run_online

    priced = {**POOL, "init_args": {**POOL["init_args"], "costs": {"length": 1.0, "words": 3.0}}}
    overlay = tmp_path / "priced.yaml"
    overlay.write_text(yaml.safe_dump({"model": {"init_args": {"pool": priced}}}))
    cli = run_online(tmp_path, tiny_causal_lm_dir, str(overlay))
    router = cli.model.router
    selected = router.selections.tolist()  # pairs routed to length, to words
    assert router.cost_total == pytest.approx(1.0 * selected[0] + 3.0 * selected[1]) and router.cost_total > 0
    logged = cli.trainer.callback_metrics
    assert float(logged["router/cost_total"]) == pytest.approx(router.cost_total)
    summary = (tmp_path / "checkpoints" / "online" / "live" / "summary.md").read_text()
    assert f"costing {router.cost_total:.4g}" in summary


@pytest.mark.parametrize("pool", ["default", "with_verifier"])
def test_the_shipped_pools_declare_the_costs_the_cost_command_measured(pool):
    import json
    from pathlib import Path

    import yaml

    from rmrouter.reward_models.pool import pool_costs

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "configs" / "pool" / f"{pool}.yaml").read_text())["init_args"]
    names = [rm["init_args"]["name"] for rm in spec["reward_models"]]
    measured = json.loads((root / "docs" / "rm_cost.json").read_text())["seconds_per_pair"]
    declared = pool_costs(spec["costs"], names)
    assert declared.tolist() == [float(f"{measured[name]:.2g}") for name in names]  # to two significant figures
