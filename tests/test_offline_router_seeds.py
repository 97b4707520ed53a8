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
    assert trainer["default_root_dir"] == str(tmp_path / "run")  # the logger and the callbacks' default folder
    checkpoint, prior, predictions, report = trainer["callbacks"]
    assert checkpoint["init_args"] == {"filename": "best", "monitor": "val/router_acc", "mode": "max", "save_top_k": 1}
    assert "path" not in report["init_args"] and report["init_args"]["command"].startswith("python cli.py test")
    own = {"trainer": {"callbacks": [{"class_path": "x.Writer", "init_args": {"path": "a/b/out.md", "dirpath": "c"}}]}}
    moved = common.redirected_trainer(own, tmp_path / "run")["trainer"]["callbacks"][0]["init_args"]
    assert moved == {"path": str(tmp_path / "run" / "out.md"), "dirpath": str(tmp_path / "run")}
    assert prior["init_args"] == {} and predictions["init_args"] == {}  # they follow the run's folder


def rows(router_right: list[bool]) -> list[dict]:
    """Ten test rows of two RMs: RM 0 is right on rows 0-5 (the best single RM, 60 %), RM 1 on rows 6-7, no RM on
    rows 8-9; the router picked RM 0 where `router_right` is true, else RM 1. Data-label routing sends every row to
    RM 1; majority vote gets half credit everywhere."""
    out = []
    for i, good in enumerate(router_right):
        right = [i < 6, 6 <= i < 8]
        routed = 0 if good == right[0] else 1
        out.append({"split": "test", "id": f"r{i}", "routed": routed, "label_route": 1, "right": right,
                    "eligible": [True, True], "majority_credit": 0.5})  # fmt: skip
    return out


def run(seed_rows: dict[int, list[bool]]) -> dict[int, dict]:
    """Results as `run_seed` returns them, one split `test` of 10 rows, 8 of them with some RM right."""
    runs = {}
    for seed, router_right in seed_rows.items():
        accuracy = sum(router_right[:8]) / 8
        metrics = {"test/router_acc": accuracy, "test/baseline/random": 0.5, "test/baseline/best_single": 0.75,
                   "test/baseline/majority_vote": 0.5, "test/baseline/data_label": 0.25,
                   "test/any_right": 0.8}  # fmt: skip
        runs[seed] = {"splits": ["test"], "sizes": {"test": 10}, "metrics": metrics, "rm_names": ["a", "b"],
                      "rows": rows(router_right)}  # fmt: skip
    return runs


def test_summary_table_on_hand_computed_values(benchmarks):
    _, report = benchmarks
    # router right on 8, 6 and 7 of the 8 routable rows: mean 7/8 = 87.5, sample std 12.5
    runs = run({0: [True] * 10, 1: [True] * 6 + [False] * 4, 2: [True] * 7 + [False] * 3})
    table = report.summary_table(runs)
    # per row, seeds right: rows 0-5 all 3 (1.0), row 6 two of 3, row 7 one of 3; the best baseline is the best single
    # RM (right on rows 0-5): differences 0 x 6, 2/3, 1/3 -> mean 0.125, se 0.0877, z 1.43, p 0.154: no difference
    line = next(line for line in table.splitlines() if line.startswith("| test |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[:4] == ["test", "10", "87.5 ± 11.7", "12.5"] and cells[4] == "75.0–100.0"
    assert cells[5:11] == ["50.0", "75.0", "50.0", "25.0", "80.0", "best single RM 75.0"]
    assert cells[11].startswith("+12.5 (") and cells[13] == "no difference"
    assert float(cells[12]) == pytest.approx(0.154, abs=0.001)
    assert report.per_seed_table(runs).splitlines()[2:] == ["| 0 | 100.0 |", "| 1 | 75.0 |", "| 2 | 87.5 |"]
    assert report.baselines_vary(runs) == []
    changed = run({0: [True] * 10, 1: [True] * 10})
    changed[1]["metrics"]["test/baseline/majority_vote"] = 0.4
    assert report.baselines_vary(changed) == ["test/baseline/majority_vote"]


def test_selection_table_compares_the_two_checkpoints_of_the_same_fits_row_by_row(benchmarks):
    _, report = benchmarks
    runs = run({0: [True] * 10, 1: [True] * 10})
    runs[0]["other_rows"] = rows([True] * 6 + [False] * 4)  # seed 0's last.ckpt: wrong on rows 6 and 7
    runs[1]["other_rows"] = rows([True] * 7 + [False] * 3)  # seed 1's: wrong on row 7
    line = report.selection_table(runs, "best.ckpt").splitlines()[2]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    # per routable row, best minus last: 0 x 6, 1/2 (row 6), 1 (row 7): mean 0.1875
    assert cells[:4] == ["test", "8", "100.0", "81.2"] and cells[4].startswith("+18.8 (")
    assert report.selection_table(runs, "best.ckpt").splitlines()[0].count("last.ckpt") == 2


def test_versus_table_compares_two_routers_on_the_same_rows_and_refuses_other_rows(benchmarks):
    _, report = benchmarks
    mine = run({0: [True] * 10, 1: [True] * 10})
    theirs = run({0: [True] * 6 + [False] * 4, 1: [True] * 7 + [False] * 3})
    line = report.versus_table(mine, theirs, "the paper's router").splitlines()[2]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[:4] == ["test", "8", "100.0", "81.2"] and cells[4].startswith("+18.8 (")  # as the selection table
    assert "the paper's router" in report.versus_table(mine, theirs, "the paper's router").splitlines()[0]
    for seed_runs in theirs.values():
        seed_runs["rows"] = [{**row, "id": "x" + row["id"]} for row in seed_runs["rows"]]
    with pytest.raises(RuntimeError, match="not on the same rows"):
        report.versus_table(mine, theirs, "x")


def test_one_seed_has_no_spread_and_a_large_gap_on_few_rows_is_no_difference(benchmarks):
    _, report = benchmarks
    table = report.summary_table(run({3: [False] * 6 + [True] * 4}))  # right on rows 6 and 7 only
    line = next(line for line in table.splitlines() if line.startswith("| test |"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[2].startswith("25.0 ±") and cells[3] == "nan"
    # 50 points below the best single RM, but on 8 rows (differences -1 x 6, +1 x 2): p 0.17
    assert cells[11] == "-50.0 (-114.2, +14.2)" and cells[13] == "no difference"


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
        saved = json.loads((folder / "metrics.json").read_text())
        assert {key: results[key] for key in saved} == saved
        assert {row["split"] for row in results["rows"]} == set(results["splits"])
        names = ("best.ckpt", "last.ckpt", "prior.pt", "report.md", "predictions.jsonl",
                 "predictions_other.jsonl", "tensorboard")  # fmt: skip
        for name in names:
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
    assert any(line.startswith(f"| ood | 15 | {mean} ± ") for line in text.splitlines())
    assert "differ between seeds" not in text  # the baselines depend on the split only
    assert "Model selection: the same fits evaluated at `best.ckpt` and at `last.ckpt`" in text
    assert len(runs[0]["other_rows"]) == len(runs[0]["rows"])

    monkeypatch.setattr(sys, "argv", [*argv[:1], "--reuse", *argv[1:]])
    before = (tmp_path / "runs" / "seed_0" / "best.ckpt").stat().st_mtime_ns
    assert report.main() == runs
    assert (tmp_path / "runs" / "seed_0" / "best.ckpt").stat().st_mtime_ns == before  # reused, not refitted
