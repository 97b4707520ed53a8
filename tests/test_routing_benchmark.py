"""The routing benchmark script on a tiny behaviour file, prior and encoder: runs, resumes, and writes its report."""

from __future__ import annotations

import importlib
import json
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from behaviour_helpers import RM_NAMES, write_behaviour

from rmrouter.models.pair_encoder import build_mlp
from rmrouter.routers.prior import RouterPrior
from rmrouter.routers.task_prior import TaskPrior

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmark(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("routing_benchmark")


def tiny_prior(path: Path, encoder: str) -> Path:
    torch.manual_seed(0)
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    RouterPrior(RM_NAMES, F.normalize(torch.randn(len(RM_NAMES), 4), dim=1), encoder=encoder, pooling="mean",
                max_length=32, mlp_config=config, mlp_state=build_mlp(config).state_dict(),
                metadata={"reward_scale": 0.5}).save(path)  # fmt: skip
    return path


def tiny_task_priors(folder: Path, encoder: str, seeds: tuple[int, ...] = (0, 1)) -> Path:
    """`seed_<s>/prior.pt` task priors over the behaviour helper's training domains (koala is its ood domain)."""
    torch.manual_seed(0)
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    tasks = ["math", "oasst", "safety"]
    for seed in seeds:
        TaskPrior(RM_NAMES, tasks, torch.randn(len(tasks), len(RM_NAMES)), torch.full((len(tasks), len(RM_NAMES)), 9.0),
                  encoder=encoder, pooling="mean",
                  max_length=32, mlp_config=config, mlp_state=build_mlp(config).state_dict(),
                  task_head_state={"weight": torch.randn(3, 4), "bias": torch.zeros(3)},
                  ).save(folder / f"seed_{seed}" / "prior.pt")  # fmt: skip
    return folder


def test_the_benchmark_runs_every_method_at_each_fidelity_and_reports_what_its_runs_say(
    benchmark, tmp_path, tiny_encoder_dir, tiny_causal_lm_dir
):
    write_behaviour(tmp_path / "behaviour.jsonl", rows=48)
    output = tmp_path / "docs" / "routing.md"
    argv = ["--behaviour", str(tmp_path / "behaviour.jsonl"), "--prior", str(tiny_prior(tmp_path / "prior.pt",
            tiny_encoder_dir)), "--encoder", tiny_encoder_dir, "--seeds", "0", "1", "--pairs", "40", "--batch-size",
            "4", "--window", "3", "--runs-dir", str(tmp_path / "runs"), "--output", str(output), "--lm-policy",
            tiny_causal_lm_dir, "--lm-pairs", "8", "--task-priors",
            str(tiny_task_priors(tmp_path / "task_priors", tiny_encoder_dir))]  # fmt: skip
    runs = benchmark.main(argv)
    keys = [key for key, *_ in benchmark.METHODS]
    assert set(runs) == {"oracle", "log_linear_dpo", "lm_dpo"} and list(runs["oracle"]) == keys
    assert list(runs["log_linear_dpo"]) == keys
    # the LM fidelity: BayesianRouter learns from the LM's losses; the reward-free methods are routed by the oracle
    assert list(runs["lm_dpo"]) == [k for k in keys if k in benchmark.REWARD_FREE or k == "bayesian"]
    lm = runs["lm_dpo"]
    assert lm["bayesian"][0]["learner"] == "lm_dpo" and lm["majority"][0]["learner"] == "oracle"
    assert lm["bayesian"][0]["summary"]["pairs"] == 8
    first_losses = lm["bayesian"][0]["log"]["loss"][:4]
    assert [round(v, 4) for v in first_losses if v is not None] == [0.6931] * sum(v is not None for v in first_losses)
    report = output.read_text()
    assert "do not edit by hand" in report and "Fidelity (a)" in report and "Fidelity (b)" in report
    assert "Fidelity (c)" in report and "| majority vote (all RMs) † |" in report and "| BayesianRouter |" in report
    for _, label, *_ in benchmark.METHODS:
        assert f"| {label} |" in report
    # the table's figure is the mean over the run files
    accuracies = [runs["oracle"]["data_label"][seed]["summary"]["accuracy"] for seed in (0, 1)]
    sd = statistics.stdev(accuracies)
    row = f"| routing by data label | {100 * statistics.fmean(accuracies):.1f} ± {100 * sd:.1f} |"
    assert row in report
    assert "| BayesianRouter above best single RM (on train) |" in report
    assert "| TaskBayesianRouter above routing by data label |" in report
    assert "| TaskBayesianRouter without labels within 1 point of routing by data label |" in report
    assert "| TaskBayesianRouter without labels - online updates (the label-free lookup) within 1 point of" in report
    assert "### How far online learning moves the routing" in report and "| TaskBayesianRouter | " in report
    assert "share of the way from the prior to the stream's rewards" in report  # how many pairs move a posterior
    for name in ("oracle_cumulative.png", "oracle_auroc.png", "log_linear_dpo_cumulative.png"):
        assert (output.parent / "routing" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(routing/{name})" in report
    # one file per run; a second call reuses them all and writes the same report
    saved = tmp_path / "runs" / "oracle" / "bayesian" / "seed_1.json"
    assert json.loads(saved.read_text())["summary"]["pairs"] == 40
    before = saved.stat().st_mtime_ns
    benchmark.main(argv)
    assert saved.stat().st_mtime_ns == before and output.read_text() == report


def test_unknown_methods_are_refused_by_name(benchmark, tmp_path):
    with pytest.raises(SystemExit, match="unknown \\['nope'\\]"):
        benchmark.main(["--methods", "nope", "--output", str(tmp_path / "x.md")])


def test_reward_free_methods_route_the_same_whatever_the_learner(benchmark, tmp_path, tiny_encoder_dir):
    """Why the LM fidelity may borrow their routing: a method in REWARD_FREE labels a stream identically at (a), (b)."""
    write_behaviour(tmp_path / "behaviour.jsonl", rows=48)
    argv = ["--behaviour", str(tmp_path / "behaviour.jsonl"), "--prior", str(tiny_prior(tmp_path / "prior.pt",
            tiny_encoder_dir)), "--encoder", tiny_encoder_dir, "--seeds", "0", "--pairs", "40", "--batch-size", "4",
            "--runs-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "r.md"), "--fidelities", "oracle",
            "log_linear_dpo", "--methods", *benchmark.REWARD_FREE, "bayesian", "--task-priors",
            str(tiny_task_priors(tmp_path / "task_priors", tiny_encoder_dir, seeds=(0,)))]  # fmt: skip
    runs = benchmark.main(argv)
    for key in benchmark.REWARD_FREE:
        oracle, dpo = runs["oracle"][key][0]["log"], runs["log_linear_dpo"][key][0]["log"]
        assert oracle["preference"] == dpo["preference"] and oracle["rm_index"] == dpo["rm_index"], key
    # and the check can fail: a router that learns routes differently once its rewards differ
    oracle, dpo = runs["oracle"]["bayesian"][0]["log"], runs["log_linear_dpo"]["bayesian"][0]["log"]
    assert oracle["rm_index"] != dpo["rm_index"]


def test_a_saved_run_is_reused_only_for_the_same_stream_router_and_prior(benchmark, tmp_path, tiny_encoder_dir):
    """Two benchmarks (two behaviour files) once shared a runs folder and read each other's runs."""
    for name, rows in (("a", 48), ("b", 40)):
        write_behaviour(tmp_path / f"{name}.jsonl", rows=rows)
    prior = str(tiny_prior(tmp_path / "prior.pt", tiny_encoder_dir))
    common = [
        "--prior",
        prior,
        "--encoder",
        tiny_encoder_dir,
        "--seeds",
        "0",
        "--pairs",
        "12",
        "--batch-size",
        "4",
        "--fidelities",
        "oracle",
        "--methods",
        "data_label",
        "bayesian",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    first = benchmark.main(["--behaviour", str(tmp_path / "a.jsonl"), "--output", str(tmp_path / "a.md"), *common])
    saved = tmp_path / "runs" / "oracle" / "bayesian" / "seed_0.json"
    assert json.loads(saved.read_text())["identity"]["prior"] is not None  # the prior file's digest
    again = benchmark.main(["--behaviour", str(tmp_path / "a.jsonl"), "--output", str(tmp_path / "a.md"), *common])
    assert again["oracle"]["bayesian"][0]["log"] == first["oracle"]["bayesian"][0]["log"]
    before = saved.stat().st_mtime_ns
    benchmark.main(["--behaviour", str(tmp_path / "a.jsonl"), "--output", str(tmp_path / "a.md"), *common])
    assert saved.stat().st_mtime_ns == before  # reused
    other = benchmark.main(["--behaviour", str(tmp_path / "b.jsonl"), "--output", str(tmp_path / "b.md"), *common])
    assert saved.stat().st_mtime_ns != before  # another stream: run again, not read back
    assert json.loads(saved.read_text())["identity"] == other["oracle"]["bayesian"][0]["identity"]
    assert benchmark.parse(["--output", "docs/x_y.md"]).runs_dir is None  # main() picks checkpoints/x_y


def test_the_prior_weight_table_counts_each_routed_pairs_cell_against_its_prior(monkeypatch, tmp_path):
    """A hand-built stream: three pairs of task `math` through RM 1, one of `safety` through RM 0, one of `koala` (no
    task of the prior: not counted) and one routed to no RM. With `lambda0: evidence` the cells' priors are worth
    their judgements (6 and 2): the math pairs' cell moved 3 / (3 + 6), the safety pair's 1 / (1 + 2)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    goals = importlib.import_module("routing_goals")
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    judged = torch.tensor([[1.0, 6.0], [2.0, 4.0]])
    head = {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}
    TaskPrior(["a", "b"], ["math", "safety"], torch.zeros(2, 2), judged, encoder="e", pooling="mean", max_length=8,
              mlp_config=config, mlp_state=build_mlp(config).state_dict(), task_head_state=head,
              ).save(tmp_path / "prior.pt")  # fmt: skip

    class Bench:
        rm_names = ["a", "b"]

        class stream:  # noqa: N801
            domains = ["math", "math", "math", "safety", "koala", "math"]

        @staticmethod
        def prior_path(seed, task=False):
            return str(tmp_path / "prior.pt")

    log = {"step": [0] * 6, "row": [0, 1, 2, 3, 4, 5], "rm_index": [1, 1, 1, 0, 1, -1], "preference": [1.0] * 6,
           "truth": [1.0] * 6, "loss": [0.0] * 6, "rm_calls": 5}  # fmt: skip
    runs = {"task": {0: {"log": log, "router": {"lambda0": "evidence", "sigma2": 1.0}}}}
    table = goals.prior_weight_table(runs, Bench())
    # per routed pair (three through the math cell, one through the safety cell), the median is the math cell's
    assert "| TaskBayesianRouter | 3 | 6 | 33 % |" in table
