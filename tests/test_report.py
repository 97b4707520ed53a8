"""The results report: every section from the files the commands wrote, the headline block in the README."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rmrouter.report import HEADLINE_END, HEADLINE_START, table_under, tables, write_report

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("offline_router_seeds_large.md", "routing_benchmark.md", "online_step.md", "router_math.md",
        "main_job_times.md", "reliability.md", "offline_router_seeds_llmbar.md",
        "routing_benchmark_llmbar.md", "offline_router_task_seeds_large.md",
        "offline_router_task_seeds_llmbar.md", "routing_drift.md", "cost_frontier.md", "serving.md")  # fmt: skip
REAL_POOL = dict(offline_real="docs/offline_router_seeds_llmbar.md", routing_real="docs/routing_benchmark_llmbar.md",
                 offline_task="docs/offline_router_task_seeds_large.md",
                 offline_task_real="docs/offline_router_task_seeds_llmbar.md",
                 drift="docs/routing_drift.md", cost="docs/cost_frontier.md", serving="docs/serving.md")  # fmt: skip


def fake_results() -> dict:
    runs = []
    for seed in (0, 1):
        for method, outcome in (("bayesian", 1.0), ("best_single", 0.0)):
            rows = [{"id": f"c{i}", "task": "win_rate", "dataset": "alpaca_eval", "outcome": outcome} for i in range(5)]
            runs.append({"method": method, "seed": seed, "seconds": 1.0, "rows": rows,
                         "metrics": {"chat/win_rate": outcome, "chat/lc_win_rate": outcome}})  # fmt: skip
    return {"machine": "a test machine", "methods": {"bayesian": [], "best_single": []}, "seeds": [0, 1],
            "online_config": "c.yaml", "online_args": ["--trainer.max_steps", "1"], "evaluation_config": "e.yaml",
            "best_single_rm": "length", "reference": "bayesian", "sweep_seconds": 90.0, "runs": runs}  # fmt: skip


@pytest.fixture
def inputs(tmp_path):
    docs = tmp_path / "docs"
    (docs / "downstream").mkdir(parents=True)
    for name in DOCS:
        shutil.copy(ROOT / "docs" / name, docs / name)
    shutil.copytree(ROOT / "docs" / "routing_benchmark", docs / "routing_benchmark")
    shutil.copytree(ROOT / "docs" / "routing_drift", docs / "routing_drift")
    (docs / "downstream" / "results.json").write_text(json.dumps(fake_results()))
    (tmp_path / "README.md").write_text(f"# x\n\n{HEADLINE_START}\nold\n{HEADLINE_END}\n\nrest\n")
    return tmp_path


def test_the_report_quotes_every_section_from_its_file(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    write_report(**REAL_POOL)
    report = Path("docs/RESULTS.md").read_text()
    for name in DOCS:
        assert f"[`docs/{name}`]({name})" in report
    offline = (inputs / "docs" / "offline_router_seeds_large.md").read_text()
    assert table_under(offline).text in report  # the table itself, unchanged
    assert "Written by `python benchmarks/online_step.py" in report  # each table's own command
    assert "| BayesianRouter | n/a | 100.0 ± 0.0 |" in report  # the downstream table, from results.json
    assert "![downstream win rates](downstream/win_rates.png)" in report
    assert (inputs / "docs" / "downstream" / "win_rates.png").stat().st_size > 1000
    assert "![oracle_cumulative](routing_benchmark/oracle_cumulative.png)" in report
    readme = Path("README.md").read_text()
    assert "old" not in readme and readme.endswith("\n\nrest\n")
    block = readme[readme.index(HEADLINE_START) : readme.index(HEADLINE_END)]
    assert "[offline_router_seeds_large.md](docs/offline_router_seeds_large.md)" in block
    assert "best single RM +100.0 points (p 0, above)" in block  # BayesianRouter wins every row at both seeds
    assert "[downstream/results.json]" not in block and "(docs/downstream/results.json)" in block
    assert "| | Default pool | Real pool (LLMBar's LLM judges) |" in block  # both pools side by side
    assert "[offline_router_seeds_llmbar.md](docs/offline_router_seeds_llmbar.md)" in block
    real = table_under((inputs / "docs" / "offline_router_seeds_llmbar.md").read_text())
    assert f"{real.cell('test', 'router mean ± se')} against {real.cell('test', 'data-label routing')}" in block
    assert "### Real pool (LLMBar's LLM judges), fidelity (a): paired goals" in report
    task = table_under((inputs / "docs" / "offline_router_task_seeds_llmbar.md").read_text())
    assert "| **Task-aware router** (test split, labels read where known) against data-label routing |" in block
    assert f"{task.cell('test', 'router mean ± se')} against {task.cell('test', 'data-label routing')}" in block
    assert "### Default pool: the task-aware router against the same baselines" in report
    goals = table_under((inputs / "docs" / "routing_drift.md").read_text(), "Goals")
    assert goals.text in report and "![degradation_oracle](routing_drift/degradation_oracle.png)" in report
    assert "- **Under drift** (oracle reward): TaskBayesianRouter against the static lookup" in block
    degradation = next(row for row in goals.rows if row[:3] == ["degradation", "task", "data_label"])
    assert f"degradation {degradation[3].split(' ±')[0]} ({degradation[4]})" in block
    cost = table_under((inputs / "docs" / "cost_frontier.md").read_text(), "Goals")
    assert cost.text in report and "![accuracy against cost](cost_frontier.png)" in report
    singles = [row for row in cost.rows if row[0] == "`test`" and row[1] == "above at no more cost"]
    above = sum(row[5] == "above" for row in singles)
    assert f"- **Accuracy against cost** (seconds of RM time per pair): `test` above {above} of {len(singles)}" in block
    serving = table_under((inputs / "docs" / "serving.md").read_text())
    assert serving.text in report
    routed = serving.rows[0][2].split(" ")[0]
    assert f"the reward server routed, against every RM: {routed} against" in block


def test_without_the_real_pool_the_report_shows_the_default_one(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    write_report()
    report = Path("docs/RESULTS.md").read_text()
    assert "| | Default pool |\n" in report and "Real pool" not in report and "Task-aware router" not in report


def test_a_missing_input_is_named(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    (inputs / "docs" / "reliability.md").unlink()
    with pytest.raises(FileNotFoundError, match="docs/reliability.md"):
        write_report()


def test_tables_are_read_with_their_heading():
    text = "# A\n\n| x | y |\n|---|---:|\n| r | 1 |\n\n## B\n| x | z |\n|---|---|\n| s | 2 |\n| t | 3 |\n"
    first, second = tables(text)
    assert (first.heading, first.header, first.rows) == ("A", ["x", "y"], [["r", "1"]])
    assert second.cell("t", "z") == "3" and table_under(text, "B") == second
    with pytest.raises(KeyError):
        second.cell("u", "z")


def test_the_readme_headline_is_what_the_report_writes_from_the_committed_files():
    from rmrouter.report import headline

    names = dict(offline="offline_router_seeds_large.md", routing="routing_benchmark.md", online_step="online_step.md",
                 downstream="downstream/results.json", offline_real="offline_router_seeds_llmbar.md",
                 routing_real="routing_benchmark_llmbar.md", offline_task="offline_router_task_seeds_large.md",
                 offline_task_real="offline_router_task_seeds_llmbar.md", drift="routing_drift.md",
                 cost="cost_frontier.md", serving="serving.md")  # fmt: skip
    paths = {name: ROOT / "docs" / file for name, file in names.items()}
    docs = {name: path.read_text() for name, path in paths.items() if name != "downstream"}
    results = json.loads(paths["downstream"].read_text())
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(HEADLINE_START) + len(HEADLINE_START) : readme.index(HEADLINE_END)]
    assert block.strip() == headline(docs, results, paths, ROOT)


def test_the_speed_headline_names_every_precision_timed_at_k_2():
    from rmrouter.report import Table, _step_cell

    header = ["precision", "k", "side", "s/step", "ratio to TRL"]
    rows = [["32-true", "2", "rmrouter", "17.18", "0.68"], ["32-true", "2", "trl", "25.36", "1.00"],
            ["32-true", "4", "rmrouter", "24.42", "-"], ["bf16-mixed", "2", "rmrouter", "9.00", "0.76"]]  # fmt: skip
    table = Table("", header, rows, "")
    assert _step_cell(table) == "32-true: 17.18 s a step, 0.68x TRL's; bf16-mixed: 9.00 s a step, 0.76x TRL's"
    with pytest.raises(KeyError, match="no rmrouter row at k = 2"):
        _step_cell(Table("", header, rows[1:3], ""))
