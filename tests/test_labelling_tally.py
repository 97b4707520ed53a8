"""LabellingTally counts exact run totals (and survives a resume); the simulated labelling report is built from them."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from behaviour_helpers import RM_NAMES, record_of

from rmrouter.callbacks import LabellingTally
from rmrouter.cli import main
from rmrouter.data.records import PreferenceRecord
from rmrouter.routers.base import Routing
from rmrouter.routers.baseline_routers import SingleRMRouter

ROOT = Path(__file__).resolve().parents[1]
SIMULATED = ROOT / "configs" / "online" / "simulated.yaml"
DOMAINS = ["math", "safety", "koala", "oasst"]


def write_length_right_behaviour(path: Path, rows: int) -> None:
    """`length` is right on every pair, `minilm-bt-math` on math only, every other RM never: so a single router on
    `length` labels 100 % right and the majority of the six RMs (at most two right) 0 %."""
    lines = []
    for i in range(rows):
        domain = DOMAINS[i % len(DOMAINS)]
        pair = PreferenceRecord(
            f"r{i}", [{"role": "user", "content": f"{domain} question {i}"}], f"good {i}", f"bad {i}", domain, "test"
        )
        right = {"length"} | ({"minilm-bt-math"} if domain == "math" else set())
        margin = {name: (1.0 if name in right else -1.0) for name in RM_NAMES}
        lines.append(json.dumps(record_of(pair, margin).to_dict()) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))


def fake_step(tally: LabellingTally, labelling, router, step: int) -> None:
    trainer = SimpleNamespace(world_size=1, global_step=step, callbacks=[router, tally])
    tally.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.0), "labelling": labelling}, None, step - 1)


def test_tally_counts_pairs_and_correct_labels_overall_and_per_domain():
    router = SingleRMRouter(RM_NAMES, "length")
    tally = LabellingTally()
    batches = [
        (["math", "safety", "math"], [True, False, True]),
        (["safety", "koala"], [True, True]),
    ]
    for step, (domains, correct) in enumerate(batches, start=1):
        chosen = torch.full((len(domains),), RM_NAMES.index("length"))
        router.count(Routing(torch.ones(len(domains)), chosen, rm_calls=len(domains)))
        fake_step(tally, (domains, torch.tensor(correct)), router, step)
    fake_step(tally, None, router, 3)  # a batch with no labelling (live mode) adds nothing
    summary = tally.summary()
    assert summary["pairs"] == {"overall": 5, "math": 2, "safety": 2, "koala": 1}
    assert summary["correct"] == {"overall": 4, "math": 2, "safety": 1, "koala": 1}
    assert summary["accuracy"] == {"overall": 0.8, "math": 1.0, "safety": 0.5, "koala": 1.0}
    assert summary["batches"] == 2 and summary["global_step"] == 2
    assert summary["router"] == "SingleRMRouter" and summary["rm_calls"] == 5 and summary["rm_calls_per_pair"] == 1.0
    assert summary["select_rate"] == {name: float(name == "length") for name in RM_NAMES}


def test_tally_counts_every_ranks_pairs_under_several_processes(monkeypatch):
    """With 2 processes each rank's batch is gathered (rank order) before counting, so both ranks count all pairs."""
    from rmrouter.callbacks import labelling_tally

    other_rank = (["safety", "safety"], [False, True])
    monkeypatch.setattr(labelling_tally.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(labelling_tally.dist, "all_gather_object", lambda parts, mine: parts.__setitem__(
        slice(None), [mine, other_rank]))  # fmt: skip
    tally = LabellingTally()
    trainer = SimpleNamespace(world_size=2, global_step=1, callbacks=[tally])
    tally.on_train_batch_end(trainer, None, {"labelling": (["math"], torch.tensor([True]))}, None, 0)
    assert tally.summary()["pairs"] == {"overall": 3, "math": 1, "safety": 2}
    assert tally.summary()["correct"] == {"overall": 2, "math": 1, "safety": 1}
    assert tally.summary()["router"] is None and tally.summary()["rm_calls_per_pair"] is None  # no router found


def test_tally_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="2 domains but 3 correctness flags"):
        LabellingTally().add(["math", "safety"], [True, False, True])


def test_tally_state_dict_round_trip_keeps_counting(tmp_path):
    tally = LabellingTally()
    tally.add(["math", "safety"], torch.tensor([True, False]))
    tally.router = {"name": "X", "pairs_routed": 2, "rm_calls": 10, "selections": {"a": 0, "b": 0}}
    torch.save(tally.state_dict(), tmp_path / "state.pt")
    restored = LabellingTally()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.summary() == tally.summary()
    assert restored.summary()["rm_calls_per_pair"] == 5.0 and restored.summary()["select_rate"] == {}  # aggregated
    restored.add(["math"], [False])
    assert restored.summary()["pairs"] == {"overall": 3, "math": 2, "safety": 1}
    assert restored.summary()["correct"] == {"overall": 1, "math": 1, "safety": 0}
    assert tally.summary()["pairs"]["overall"] == 2  # the restored copy shares nothing with the original


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_causal_lm_dir) -> Path:
    """The crafted behaviour file where the simulated config looks for it, and the repo's configs beside it."""
    monkeypatch.chdir(tmp_path)
    write_length_right_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl", rows=24)
    return tmp_path


def test_tally_keeps_counting_across_a_resumed_fit(workdir, tiny_causal_lm_dir, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    args = [
        "fit", "--config", str(SIMULATED), "--config", str(ROOT / "configs" / "routers" / "single.yaml"),
        f"--model.init_args.policy={tiny_causal_lm_dir}", "--data.init_args.batch_size=4",
        "--trainer.enable_progress_bar=false", "--trainer.callbacks+=rmrouter.callbacks.LabellingTally",
        f"--trainer.callbacks.path={workdir / 'labelling.json'}",
    ]  # fmt: skip
    main([*args, "--trainer.max_steps=1"])
    assert json.loads((workdir / "labelling.json").read_text())["pairs"]["overall"] == 4
    main([*args, "--trainer.max_steps=2", "--ckpt_path=last"])
    summary = json.loads((workdir / "labelling.json").read_text())
    assert summary["pairs"]["overall"] == 8 and summary["correct"]["overall"] == 8  # not reset by the restart
    assert summary["global_step"] == 2 and summary["rm_calls"] == 8


def test_report_script_writes_exact_accuracies_of_each_method(workdir, tiny_causal_lm_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    report = importlib.import_module("simulated_labelling")
    output = workdir / "docs" / "online_simulated.md"
    argv = [
        "benchmarks/simulated_labelling.py", "--methods", "single", "majority", "--max-steps", "2",
        "--policy", tiny_causal_lm_dir, "--config", str(SIMULATED), "--routers", str(ROOT / "configs" / "routers"),
        "--out-dir", str(workdir / "runs"), "--output", str(output),
        "--", "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    results = report.main()

    single, majority = results["single"], results["majority"]
    assert single["pairs"]["overall"] == majority["pairs"]["overall"] == 8  # two batches of 4, each pair routed once
    assert single["accuracy"] == {key: 1.0 for key in single["pairs"]}  # the always-right RM, every domain
    assert majority["accuracy"] == {key: 0.0 for key in majority["pairs"]}  # at most 2 of 6 RMs right on any pair
    assert single["rm_calls_per_pair"] == 1.0 and majority["rm_calls_per_pair"] == len(RM_NAMES)
    assert single["select_rate"]["length"] == 1.0 and majority["select_rate"] == {}
    assert single["global_step"] == majority["global_step"] == 2
    for method in ("single", "majority"):  # each run in its own folder, with its own checkpoint
        assert (workdir / "runs" / method / "last.ckpt").exists()
        assert (workdir / "runs" / method / "labelling.json").exists()

    text = output.read_text()
    domains = sorted(single["pairs"].keys() - {"overall"})
    assert f"| method | router | overall | {' | '.join(domains)} |" in text
    assert "| single | SingleRMRouter | " + " | ".join(["100.0"] * (1 + len(domains))) + " |" in text
    assert "| majority | MajorityVoteRouter | " + " | ".join(["0.0"] * (1 + len(domains))) + " |" in text
    assert "one run from one seed over 8 routed pairs, so one pair is 12.50 points" in text
    assert "88.23 %" in text and "Written by `python benchmarks/simulated_labelling.py --methods single" in text
    assert yaml.safe_load((workdir / "runs" / "single" / "report_overlay.yaml").read_text())["trainer"]["callbacks"]


def test_report_script_runs_each_bayesian_variant_on_top_of_bayesian(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    report = importlib.import_module("simulated_labelling")
    routers = ROOT / "configs" / "routers"
    methods = report.default_methods(routers)
    assert methods[0] == "bayesian" and "bayesian_variants/no_prior" in methods and "single" in methods
    assert report.method_configs(routers, "bayesian_variants/no_prior") == [
        routers / "bayesian.yaml",
        routers / "bayesian_variants" / "no_prior.yaml",
    ]
    assert report.method_configs(routers, "laser") == [routers / "laser.yaml"]
    assert all(path.exists() for method in methods for path in report.method_configs(routers, method))
