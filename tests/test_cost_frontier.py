"""The cost frontier script on a tiny behaviour file and cost table: its points, their costs, calls and goals."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from behaviour_helpers import RM_NAMES, write_behaviour

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def frontier(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("cost_frontier")


def test_the_frontier_prices_every_point_by_the_rms_it_calls(frontier, tmp_path):
    write_behaviour(tmp_path / "behaviour.jsonl", rows=96)  # RM k is right on domain k % 4, wrong elsewhere
    costs = dict(zip(RM_NAMES, [0.0, 1.0, 0.1, 0.2, 0.3, 0.4], strict=True))
    (tmp_path / "costs.json").write_text(json.dumps({"seconds_per_pair": costs}))
    output = tmp_path / "frontier.md"
    results = frontier.main(["--behaviour", str(tmp_path / "behaviour.jsonl"), "--costs", str(tmp_path / "costs.json"),
                             "--output", str(output)])  # fmt: skip
    points = {(p.method, p.setting): p for p in results["test"]}
    # a single RM: right on its own domain only, at its own cost on every pair it can judge
    single = points[("single: length", "")]
    assert single.mean_cost == 0.0 and single.calls.mean() == 1.0
    assert points[("single: smollm2-likelihood", "")].mean_cost == pytest.approx(1.0)
    majority = points[("majority vote", "every eligible RM")]
    assert majority.mean_cost == pytest.approx(sum(costs.values())) and majority.calls.mean() == len(RM_NAMES)
    uwo = points[("UWO", "every eligible RM")]
    assert uwo.mean_cost == majority.mean_cost and uwo.calls.mean() == len(RM_NAMES)
    # one RM right against five wrong on every pair: both ensembles side with the five
    assert uwo.accuracy == majority.accuracy == 0.0
    # the lookup learns which RM is right per domain: every test pair right
    lookup = points[("data-label lookup", "")]
    assert lookup.accuracy == 1.0
    # lambda 0 is the lookup's choice; a large lambda the free RM, right on a quarter of the pairs
    assert points[("cost-aware lookup", "lambda 0")].accuracy == 1.0
    cheapest = points[("cost-aware lookup", "lambda 100")]
    assert cheapest.mean_cost == 0.0 and torch.equal(cheapest.credit, single.credit)
    # a budget per pair: the right RM where it fits, else the most reliable that does (none: the free RM)
    budgets = {setting: p for (method, setting), p in points.items() if method == "budget lookup"}
    assert list(budgets) == [f"budget {c:.3g} s" for c in sorted(set(costs.values()))]
    assert torch.equal(budgets["budget 0 s"].credit, single.credit) and budgets["budget 0 s"].mean_cost == 0.0
    assert budgets["budget 1 s"].accuracy == 1.0
    for setting, point in budgets.items():
        assert point.cost.max() <= float(setting.split()[1]) + 1e-12
    # the cascade asks the free RM first: threshold 0 never escalates, above 1 always (but not when the lookup's
    # RM is the free one), and each escalation adds the lookup's RM's cost and one call
    never = points[("cascade: length, then the lookup's RM", "threshold 0")]
    always = points[("cascade: length, then the lookup's RM", "threshold 1.01")]
    assert torch.equal(never.credit, single.credit) and never.mean_cost == 0.0
    assert always.accuracy == 1.0 and always.mean_cost == pytest.approx(lookup.mean_cost)
    assert always.calls.mean() == pytest.approx(1 + (lookup.cost > 0).double().mean())
    report = output.read_text()
    assert "do not edit by hand" in report and "## `test`" in report and "## `ood`" in report
    goals = {(line.split(" | ")[0], line.split(" | ")[2]): line for line in report.splitlines()
             if line.startswith("| `")}  # fmt: skip
    assert ("| `test`", "single: smollm2-likelihood (1.0000 s)") in goals
    assert ("| `ood`", "majority vote (2.0000 s)") in goals and ("| `ood`", "UWO (2.0000 s)") in goals
    # the lookup is right everywhere at the dear RM's cost or less: above it, and within a point of the ensembles
    assert goals[("| `test`", "single: smollm2-likelihood (1.0000 s)")].endswith("| above |")
    assert goals[("| `test`", "majority vote (2.0000 s)")].endswith("| above; within 1 point |")
    ceiling = points[("ceiling: any RM right", "every eligible RM, knowing the truth")]
    assert ceiling.accuracy == 1.0 and ceiling.mean_cost == majority.mean_cost


def test_the_cascade_is_calibrated_on_the_train_split_alone(frontier, tmp_path, monkeypatch):
    from rmrouter.data.behaviour_datamodule import BehaviourDataModule
    from rmrouter.data.behaviour_split import split_named_by

    write_behaviour(tmp_path / "behaviour.jsonl", rows=96)
    (tmp_path / "costs.json").write_text(json.dumps({"seconds_per_pair": dict.fromkeys(RM_NAMES, 0.1)}))
    fitted: list[list[str]] = []
    real_fit = frontier.MarginCalibration.fit

    def recording_fit(tasks, margin, right, *args, **kwargs):
        fitted.append(list(tasks))
        return real_fit(tasks, margin, right, *args, **kwargs)

    monkeypatch.setattr(frontier.MarginCalibration, "fit", staticmethod(recording_fit))
    frontier.main(["--behaviour", str(tmp_path / "behaviour.jsonl"), "--costs", str(tmp_path / "costs.json"),
                   "--output", str(tmp_path / "frontier.md")])  # fmt: skip
    split = split_named_by(frontier.parse([]).offline_config)
    data = BehaviourDataModule(str(tmp_path / "behaviour.jsonl"), RM_NAMES, split)
    data.setup("fit")
    # once per evaluated split (test, ood), each time on the train rows alone: test or ood rows would lengthen it
    assert len(fitted) == 2 and all(tasks == data.splits["train"].domains for tasks in fitted)


def test_with_task_priors_the_online_routers_run_on_the_stream_at_each_cost_weight(frontier, tmp_path,
                                                                                    tiny_encoder_dir):  # fmt: skip
    from test_routing_benchmark import tiny_prior, tiny_task_priors

    write_behaviour(tmp_path / "behaviour.jsonl", rows=96)
    costs = dict(zip(RM_NAMES, [0.0, 1.0, 0.1, 0.2, 0.3, 0.4], strict=True))
    (tmp_path / "costs.json").write_text(json.dumps({"seconds_per_pair": costs}))
    output = tmp_path / "frontier.md"
    priors = tiny_task_priors(tmp_path / "priors", tiny_encoder_dir)
    for seed in (0, 1):  # the paper's priors, calibrated to the reward's scale
        (tmp_path / "paper" / f"seed_{seed}").mkdir(parents=True)
        tiny_prior(tmp_path / "paper" / f"seed_{seed}" / "prior.pt", tiny_encoder_dir)
    frontier.main(["--behaviour", str(tmp_path / "behaviour.jsonl"), "--costs", str(tmp_path / "costs.json"),
                   "--output", str(output), "--task-priors", str(priors), "--priors", str(tmp_path / "paper"),
                   "--seeds", "0", "1", "--pairs", "24"])  # fmt: skip
    report = output.read_text()
    assert "## On the routing benchmark's stream, oracle reward (24 pairs, seeds [0, 1])" in report
    rows = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith("| TaskBayesianRouter |")}
    assert set(rows) == {f"cost_weight {weight:g}" for weight in frontier.COST_WEIGHTS}
    # a larger weight spends less: the largest buys the free RM on (almost) every pair
    for router in ("TaskBayesianRouter", "BayesianRouter", "CascadeRouter"):
        rows = {line.split(" | ")[1]: line for line in report.splitlines() if line.startswith(f"| {router} |")}
        assert set(rows) == {f"cost_weight {weight:g}" for weight in frontier.COST_WEIGHTS}
        # a larger weight spends less: the largest buys the free RM on (almost) every pair
        spent = {setting: float(line.rstrip(" |").rsplit("| ", 1)[1]) for setting, line in rows.items()}
        assert spent["cost_weight 10"] < spent["cost_weight 0"] and spent["cost_weight 10"] < 0.05, router
