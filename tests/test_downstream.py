"""The downstream setup: held-out parts of the AlpacaEval split, data-label routing online, the sweep's resume and
table, and the shipped evaluation configs through the CLI on tiny models."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import RM_NAMES, write_behaviour
from data_helpers import sources_of
from online_cli_helpers import run_online

from rmrouter import sweep
from rmrouter.cli import main
from rmrouter.data import AlpacaEvalPairs, AlpacaEvalPrompts, GSM8KPrompts
from rmrouter.data.behaviour_split import split_named_by
from rmrouter.data.sources import SPLIT_SCHEMES, split_key
from rmrouter.evaluation.evaluation import _append_cache, _read_cache
from rmrouter.evaluation.sweep_table import compare, identical_methods, sweep_table
from rmrouter.routers.baseline_routers import DataLabelRouter

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def alpaca_parts() -> dict[str, set[str]]:
    parts = {}
    for part in SPLIT_SCHEMES["alpaca_eval_behaviour"]:
        records = AlpacaEvalPrompts(split="behaviour", split_fractions="alpaca_eval", subsplit=part,
                                    subsplit_fractions="alpaca_eval_behaviour").load()  # fmt: skip
        parts[part] = {split_key(record) for record in records}
    return parts


def test_the_parts_of_the_alpaca_eval_behaviour_split_are_disjoint_and_cover_it():
    parts = alpaca_parts()
    whole = {split_key(r) for r in AlpacaEvalPrompts(split="behaviour", split_fractions="alpaca_eval").load()}
    assert set().union(*parts.values()) == whole
    assert sum(map(len, parts.values())) == len(whole)
    assert all(len(part) > 40 for part in parts.values())


def test_no_policy_trains_on_or_judge_learns_from_an_evaluation_prompt():
    """The online prompts, the judge's data and the evaluation prompts of the shipped configs never meet."""

    def keys(config: str, *path: str, prompts: bool = False) -> set[str]:
        return {
            split_key(r) for s in sources_of(CONFIGS / config, ["data", "init_args", *path], prompts) for r in s.load()
        }

    online = keys("online/live.yaml", "train", prompts=True)
    judged = keys("learned_rm/judge.yaml", "train") | keys("learned_rm/judge.yaml", "val")
    evaluated = keys("evaluation/downstream.yaml", "test", prompts=True)
    assert evaluated and online and judged
    assert not evaluated & online and not evaluated & judged
    pool_rm = keys("learned_rm/chat.yaml", "train") | keys("learned_rm/chat.yaml", "val")
    assert not judged & pool_rm  # no pool RM saw the judge's data


def test_a_subsplit_needs_its_split_and_a_known_part():
    with pytest.raises(ValueError, match="set `split` too"):
        GSM8KPrompts(subsplit="eval", subsplit_fractions={"eval": 1.0})
    with pytest.raises(ValueError, match="is not one of subsplit_fractions"):
        AlpacaEvalPairs(split="behaviour", split_fractions="alpaca_eval", subsplit="nope",
                        subsplit_fractions="alpaca_eval_behaviour")  # fmt: skip


def test_data_label_routing_online_is_fitted_on_the_offline_routers_training_rows(tmp_path):
    path = tmp_path / "behaviour.jsonl"
    write_behaviour(path, rows=48)  # RM k is right on domain k % 4
    offline = load_config("offline_router.yaml")["data"]["init_args"]
    shipped = load_config("routers/data_label.yaml")["model"]["init_args"]["router"]["init_args"]
    # one split file, named by both configs (each path relative to its own config)
    assert (CONFIGS / "routers" / shipped["split"]).resolve() == (CONFIGS / offline["split"]).resolve()
    assert shipped["behaviour"] == offline["path"]
    router = DataLabelRouter(behaviour=str(path), split=split_named_by(CONFIGS / "offline_router.yaml"))
    router.connect_pool(RM_NAMES)
    eligible = torch.ones(2, len(RM_NAMES), dtype=torch.bool)
    assert router.routing.route(["math", "safety"], ["test", "test"], eligible).tolist() == [0, 1]
    with pytest.raises(ValueError, match="exactly one of"):
        DataLabelRouter()


def test_the_best_single_rm_is_the_most_accurate_on_the_training_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl", rows=48)
    config = load_config("offline_router.yaml")
    lines = (tmp_path / "checkpoints" / "behaviour" / "default.jsonl").read_text().splitlines()
    # the third RM right on 9 rows in 10; the first right on the few rows it can judge (accuracy 1 where it judges,
    # but no label on the rest): the third is the best single RM
    rows = [json.loads(line) for line in lines]
    for i, row in enumerate(rows):
        row["agree"][RM_NAMES[2]] = i % 10 != 5
        row["scores"][RM_NAMES[2]] = [1.0, 0.0] if i % 10 != 5 else [0.0, 1.0]
        row["agree"][RM_NAMES[0]] = i < 6
        row["scores"][RM_NAMES[0]] = [1.0, 0.0] if i < 6 else None
    (tmp_path / "checkpoints" / "behaviour" / "default.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config["data"]["init_args"]["split"] = str(CONFIGS / "splits" / "default.yaml")  # the copy names the shipped file
    (tmp_path / "offline.yaml").write_text(yaml.safe_dump(config))
    assert sweep.best_single_rm("offline.yaml") == RM_NAMES[2]


def fake_run(run_dir: Path, seed: int, outcome: float, correct: bool) -> None:
    (run_dir / "evaluation").mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"g{i}", "task": "gsm8k", "dataset": "gsm8k", "correct": correct, "policy_length": 1,
             "base_length": 1} for i in range(4)]  # fmt: skip
    rows += [{"id": f"c{i}", "task": "win_rate", "dataset": "alpaca_eval", "outcome": outcome, "policy_length": 2,
              "base_length": 1} for i in range(6)]  # fmt: skip
    (run_dir / "evaluation" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"gsm8k/accuracy": float(correct), "chat/win_rate": outcome, "chat/lc_win_rate": outcome}
    (run_dir / "evaluation" / "metrics.json").write_text(json.dumps(metrics))


def test_the_sweep_runs_every_method_and_seed_resumes_and_skips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    outcomes = {"bayesian": (0.75, True), "single": (0.5, False)}

    def run_lightning(args):
        calls.append(args)
        overlay = yaml.safe_load(Path(next(a for a in args if a.endswith("run.yaml"))).read_text())
        run_dir = Path(overlay["trainer"]["default_root_dir"])
        if args[0] == "fit":
            (run_dir / "summary.md").write_text("done")
            (run_dir / "last.ckpt").write_text("ckpt")
        else:
            method = run_dir.parent.name
            fake_run(run_dir, int(run_dir.name[4:]), *outcomes[method])

    monkeypatch.setattr(sweep, "run_lightning", run_lightning)
    monkeypatch.setattr(sweep, "best_single_rm", lambda config: "length")
    judge_state = {"monitor": "val/pair_acc", "best_model_score": torch.tensor(0.8)}
    torch.save({"callbacks": {"ModelCheckpoint{}": judge_state}}, "judge.ckpt")
    methods = {"bayesian": ["--config", "bayes.yaml", "--seed-of-router", "{seed}"],
               "single": ["--config", "single.yaml", "--rm", "{best_single_rm}"]}  # fmt: skip
    # a run stopped mid-fit: its checkpoint is there, its summary is not
    stopped = tmp_path / "runs" / "single" / "seed1"
    stopped.mkdir(parents=True)
    (stopped / "last.ckpt").write_text("ckpt")
    kwargs = dict(methods=methods, seeds=[0, 1], online_args=["--trainer.max_steps", "2"], 
                  judge_checkpoint="judge.ckpt",
                  out_dir="runs", results="results.json", output="table.md",
                  command="python cli.py sweep --config configs/sweep.yaml")  # fmt: skip
    sweep.run_sweep(**kwargs)
    fits = [c for c in calls if c[0] == "fit"]
    assert len(fits) == 4 and len([c for c in calls if c[0] == "test"]) == 4
    assert ["--seed-of-router", "1"] == fits[2][fits[2].index("--seed-of-router") :][:2]
    assert "length" in fits[1] and "--seed_everything" in fits[1]
    resumed = [c for c in fits if "runs/single/seed1/run.yaml" in c]
    assert resumed[0][-2:] == ["--ckpt_path", "runs/single/seed1/last.ckpt"]
    summary = json.loads(Path("results.json").read_text())
    assert [(run["method"], run["seed"]) for run in summary["runs"]] == [
        ("bayesian", 0),
        ("single", 0),
        ("bayesian", 1),
        ("single", 1),
    ]
    test = compare(summary, "single", "win_rate")
    assert (
        test.rows == 12 and test.mean == pytest.approx(-0.25) and test.verdict() == "below"
    )  # the same gap on every row
    assert compare(summary, "single", "gsm8k").mean == -1.0
    table = Path("table.md").read_text()
    assert table.startswith("# Downstream sweep\n\nWritten by `python cli.py sweep --config configs/sweep.yaml`")
    assert "judged by the downstream judge (`judge.ckpt`, val/pair_acc 80.0 %)" in table
    assert "| BayesianRouter | 100.0 ± 0.0 | 75.0 ± 0.0 |" in table
    assert "| single | -100.0 (p 0, below) | -25.0 (p 0, below) |" in table
    calls.clear()
    sweep.run_sweep(**kwargs)  # everything is evaluated: nothing runs again, each run keeps its own time
    assert calls == []
    assert [run["seconds"] for run in json.loads(Path("results.json").read_text())["runs"]] == [
        run["seconds"] for run in summary["runs"]
    ]


def test_the_sweep_stops_before_any_run_when_the_main_job_has_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="bash scripts/run.sh"):
        sweep.run_sweep(methods={"bayesian": []}, seeds=[0], required=["checkpoints/offline_router/prior.pt"])


def test_the_sweep_table_reads_no_difference_inside_the_noise():
    runs = []
    generator = torch.Generator().manual_seed(0)
    for seed in (0, 1):
        for method in ("bayesian", "majority"):
            outcomes = (torch.rand(20, generator=generator) < 0.5).float().tolist()
            rows = [{"id": f"c{i}", "task": "win_rate", "outcome": o} for i, o in enumerate(outcomes)]
            runs.append(
                {"method": method, "seed": seed, "metrics": {"chat/win_rate": sum(outcomes) / 20}, "rows": rows}
            )
    summary = {"machine": "m", "methods": {"bayesian": [], "majority": []}, "seeds": [0, 1], "online_config": "c",
               "online_args": [], "evaluation_config": "e", "best_single_rm": "length", "reference": "bayesian",
               "sweep_seconds": 60.0, "runs": runs}  # fmt: skip
    table = sweep_table(summary)
    (row,) = [line for line in table.splitlines() if line.startswith("| majority vote |") and "(p " in line]
    assert row.endswith("no difference) |")  # two coin-flip policies
    assert row.split(" | ")[1] == "n/a"  # no GSM8K rows to compare
    assert compare(summary, "majority", "gsm8k") is None
    assert not math.isnan(compare(summary, "majority", "win_rate").mean)
    assert identical_methods(summary) == [] and "same evaluated answers" not in table


def test_the_sweep_table_names_methods_that_trained_the_same_policy():
    def run(method, seed, outcome):
        rows = [{"id": "c0", "task": "win_rate", "outcome": outcome, "policy_length": 10}]
        return {"method": method, "seed": seed, "metrics": {"chat/win_rate": outcome}, "rows": rows}

    runs = [run("bayesian", 0, 1.0), run("ablation_weighted_score", 0, 1.0), run("majority", 0, 1.0)]
    runs += [run("bayesian", 1, 0.0), run("ablation_weighted_score", 1, 0.0), run("majority", 1, 0.5)]
    summary = {"machine": "m", "methods": {"bayesian": [], "majority": [], "ablation_weighted_score": []},
               "seeds": [0, 1], "online_config": "c", "online_args": [], "evaluation_config": "e",
               "best_single_rm": "length", "reference": "bayesian", "sweep_seconds": 60.0, "runs": runs}  # fmt: skip
    assert identical_methods(summary) == [["bayesian", "ablation_weighted_score"]]  # majority differs on seed 1
    note = '"BayesianRouter" and "BayesianRouter, weighted score": the same evaluated answers on every seed'
    assert note in sweep_table(summary)


def test_the_baseline_cache_keeps_new_answers_after_a_line_torn_by_a_crash(tmp_path):
    cache = tmp_path / "base.jsonl"
    _append_cache(cache, {"a": "first"})
    cache.write_text(cache.read_text() + '{"key": "b", "answ')  # killed in the middle of writing b
    _append_cache(cache, {"c": "third", "d": "fourth"})
    assert _read_cache(cache) == {"a": "first", "c": "third", "d": "fourth"}


@pytest.fixture
def evaluation_overlay(tmp_path):
    """configs/evaluation/downstream.yaml with a length judge, two prompts per source and short answers."""
    config = load_config("evaluation/downstream.yaml")
    evaluation = config["model"]["init_args"]["evaluation"]["init_args"]
    evaluation["judge"] = {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "judge"}}
    evaluation.update(max_new_tokens=4, math_max_new_tokens=4, base_cache=str(tmp_path / "base.jsonl"))
    for source in config["data"]["init_args"]["test"]:
        source["init_args"]["limit"] = 2
    path = tmp_path / "downstream.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_shipped_evaluation_runs_on_an_online_checkpoint_and_on_any_model(
    tmp_path, monkeypatch, tiny_causal_lm_dir, evaluation_overlay
):
    run_online(tmp_path, tiny_causal_lm_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    live = tmp_path / "checkpoints" / "online" / "live"
    main(["test", "--config", str(tmp_path / "online.yaml"), "--config", str(evaluation_overlay),
          "--ckpt_path", str(live / "last.ckpt")])  # fmt: skip
    metrics = json.loads((live / "evaluation" / "metrics.json").read_text())
    assert metrics["gsm8k/rows"] == 2 and metrics["alpaca_eval/rows"] == 2 and metrics["mt_bench/rows"] == 2
    policy = load_config("evaluation/policy.yaml")
    policy["model"]["init_args"].update(policy=tiny_causal_lm_dir, baseline=tiny_causal_lm_dir)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    main(["test", "--config", str(tmp_path / "policy.yaml"), "--config", str(evaluation_overlay)])
    metrics = json.loads(
        (tmp_path / "checkpoints" / "evaluation" / "policy" / "evaluation" / "metrics.json").read_text()
    )
    assert metrics["chat/win_rate"] == 0.5 and metrics["chat/same_as_base"] == 1.0


def test_every_sweep_method_names_a_shipped_router_config():
    config = load_config("sweep.yaml")
    for method, args in config["methods"].items():
        router = args[args.index("--config") + 1]
        assert (CONFIGS.parent / router).is_file(), method
    assert config["reference"] in config["methods"]
    assert set(config["methods"]) >= {"best_single", "majority", "data_label", "uwo", "laser", "bayesian"}


@pytest.mark.parametrize("router", ["uwo", "data_label", "majority"])
def test_the_pool_routers_of_the_sweep_train_live(tmp_path, tiny_causal_lm_dir, router):
    """Live online DPO with the shipped router configs that need the whole pool's scores or the behaviour file."""
    behaviour = tmp_path / "checkpoints" / "behaviour" / "default.jsonl"
    write_behaviour(behaviour, rows=24)
    rows = [json.loads(line) for line in behaviour.read_text().splitlines()]
    for row in rows:  # the file's RMs are the online test pool's two
        row["scores"] = {"length": [1.0, 0.0], "words": [0.0, 1.0]}
        row["agree"] = {"length": True, "words": False}
    behaviour.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_config(f"routers/{router}.yaml")
    if "split" in config["model"]["init_args"]["router"]["init_args"]:  # a copy elsewhere names the shipped file
        config["model"]["init_args"]["router"]["init_args"]["split"] = str(CONFIGS / "splits" / "default.yaml")
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run_online(tmp_path, tiny_causal_lm_dir, str(path))
    assert cli.trainer.global_step == 2
    assert cli.model.router.pairs_routed > 0
    assert cli.model.router.rm_calls == cli.model.router.pairs_routed * (2 if router in ("uwo", "majority") else 1)
