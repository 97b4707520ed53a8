"""The seed report of the offline router: one fit and test per seed, each in its own folder, and tables built from
their results files; plus the trainer overlay that keeps side-by-side runs apart."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import yaml
from behaviour_helpers import RM_NAMES, write_behaviour

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "offline_router.yaml"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("common"), importlib.import_module("offline_router_seeds")


def test_redirected_trainer_moves_every_output_of_the_offline_config(benchmarks, tmp_path):
    common, _ = benchmarks
    overlay = common.redirected_trainer(yaml.safe_load(CONFIG.read_text()), tmp_path / "run")
    trainer = overlay["trainer"]
    assert trainer["default_root_dir"] == str(tmp_path / "run")
    assert trainer["logger"]["init_args"]["save_dir"] == str(tmp_path / "run")
    assert trainer["logger"]["init_args"]["version"] == "tensorboard"  # the rest of the logger is kept
    checkpoint, prior, report = trainer["callbacks"]
    assert checkpoint["init_args"]["dirpath"] == str(tmp_path / "run")
    assert checkpoint["init_args"]["monitor"] == "val/router_acc"
    assert prior["init_args"]["path"] == str(tmp_path / "run" / "prior.pt")
    assert report["init_args"]["path"] == str(tmp_path / "run" / "offline_router.md")
    assert report["init_args"]["command"].startswith("python cli.py test")  # not a path: left alone


def run(seed_metrics: dict[int, dict[str, float]]) -> dict[int, dict]:
    """Results files as `OfflineRouterReport(metrics_path=...)` writes them, one split `test` of 10 rows."""
    return {seed: {"splits": ["test"], "sizes": {"test": 10}, "metrics": m} for seed, m in seed_metrics.items()}


def metrics(router: float) -> dict[str, float]:
    return {"test/router_acc": router, "test/baseline/random": 0.25, "test/baseline/best_single": 0.6,
            "test/baseline/majority_vote": 0.5, "test/baseline/data_label": 0.65}  # fmt: skip


def test_summary_table_on_hand_computed_values(benchmarks):
    _, report = benchmarks
    runs = run({0: metrics(0.5), 1: metrics(0.7), 2: metrics(0.9)})
    table = report.summary_table(runs)
    # mean 0.7, sample std 0.2, two of three seeds strictly above the best single RM's 0.6
    assert "| test | 10 | 70.0 | 20.0 | 50.0 | 90.0 | 25.0 | 60.0 | 50.0 | 65.0 | 2 of 3 |" in table
    assert report.per_seed_table(runs).splitlines()[2:] == ["| 0 | 50.0 |", "| 1 | 70.0 |", "| 2 | 90.0 |"]
    assert report.baselines_vary(runs) == []
    changed = run({0: metrics(0.5), 1: {**metrics(0.5), "test/baseline/majority_vote": 0.4}})
    assert report.baselines_vary(changed) == ["test/baseline/majority_vote"]


def test_one_seed_has_no_spread_and_a_tie_is_no_win(benchmarks):
    _, report = benchmarks
    table = report.summary_table(run({3: metrics(0.6)}))
    assert "| test | 10 | 60.0 | nan | 60.0 | 60.0 | 25.0 | 60.0 | 50.0 | 65.0 | 0 of 1 |" in table


def test_report_fits_and_tests_each_seed_in_its_own_folder(benchmarks, tmp_path, monkeypatch, tiny_encoder_dir):
    _, report = benchmarks
    monkeypatch.chdir(tmp_path)
    write_behaviour(tmp_path / "checkpoints" / "behaviour" / "default.jsonl")
    argv = [
        "benchmarks/offline_router_seeds.py", "--seeds", "0", "1", "--config", str(CONFIG),
        "--out-dir", str(tmp_path / "runs"), "--output", str(tmp_path / "seeds.md"),
        "--", f"--model.init_args.encoder={tiny_encoder_dir}", "--trainer.max_epochs=2",
        "--data.init_args.batch_size=8", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runs = report.main()

    assert list(runs) == [0, 1]
    for seed, results in runs.items():
        folder = tmp_path / "runs" / f"seed_{seed}"
        assert json.loads((folder / "metrics.json").read_text()) == results
        for name in ("best.ckpt", "last.ckpt", "prior.pt", "offline_router.md", "tensorboard"):
            assert (folder / name).exists()
        assert results["splits"] == ["test", "ood", "ood/koala", "ood/math"]
        assert results["sizes"]["ood"] == 15  # 12 koala rows and 3 math rows of write_behaviour
        assert all(0.0 <= results["metrics"][f"{split}/router_acc"] <= 1.0 for split in results["splits"])
        # the fixture's koala rows are always right for RM 2 only
        assert results["metrics"][f"ood/koala/baseline/single/{RM_NAMES[2]}"] == 1.0
    assert not (tmp_path / "docs").exists() and not (tmp_path / "checkpoints" / "offline_router").exists()
    fits = json.loads((tmp_path / "runs" / "seed_1" / "report_run.json").read_text())[0]
    assert "--seed_everything=1" in fits and "--data.init_args.seed=1" in fits

    text = (tmp_path / "seeds.md").read_text()
    assert "Written by `python benchmarks/offline_router_seeds.py --seeds 0 1" in text
    router = [runs[seed]["metrics"]["ood/router_acc"] for seed in (0, 1)]
    mean = f"{100 * sum(router) / 2:.1f}"
    assert any(line.startswith(f"| ood | 15 | {mean} | ") for line in text.splitlines())
    assert "differ between seeds" not in text  # the baselines depend on the split only

    monkeypatch.setattr(sys, "argv", [*argv[:1], "--reuse", *argv[1:]])
    before = (tmp_path / "runs" / "seed_0" / "best.ckpt").stat().st_mtime_ns
    assert report.main() == runs
    assert (tmp_path / "runs" / "seed_0" / "best.ckpt").stat().st_mtime_ns == before  # reused, not refitted
