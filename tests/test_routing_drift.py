"""The drift benchmark script on a tiny behaviour file, priors and encoder: its streams, runs, reuse and report."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from behaviour_helpers import write_behaviour
from test_routing_benchmark import tiny_prior, tiny_task_priors

ROOT = Path(__file__).resolve().parents[1]
GENERATORS = ["alpaca_eval/alpaca-7b", "alpaca_eval/claude-2", "alpaca_eval/phi-2-vs-vicuna-7b-v1.5"]


@pytest.fixture
def drift(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("routing_drift")


def behaviour_with_generators(path: Path) -> Path:
    """The helper's behaviour file, its chat rows' sources the three kinds of AlpacaEval pair the quality stream
    orders."""
    write_behaviour(path, rows=96)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for i, row in enumerate(rows):
        if row["domain"] in ("oasst", "koala"):
            row["source"] = GENERATORS[i % 3]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_drift_benchmark_runs_every_router_on_every_stream_and_reports_them(drift, tmp_path, tiny_encoder_dir):
    output = tmp_path / "docs" / "drift.md"
    argv = ["--behaviour", str(behaviour_with_generators(tmp_path / "behaviour.jsonl")),
            "--prior", str(tiny_prior(tmp_path / "prior.pt", tiny_encoder_dir)),
            "--task-priors", str(tiny_task_priors(tmp_path / "task_priors", tiny_encoder_dir)),
            "--encoder", tiny_encoder_dir, "--seeds", "0", "1", "--phase-pairs", "16", "--window-pairs", "8",
            "--half-life", "8", "--batch-size", "4", "--runs-dir", str(tmp_path / "runs"),
            "--output", str(output)]  # fmt: skip
    runs = drift.main(argv)
    keys = [key for key, *_ in drift.METHODS]
    assert list(runs) == list(drift.STREAMS)
    for stream in drift.STREAMS:
        assert list(runs[stream]["oracle"]) == keys
        # the routers that read no reward, and the windowed lookup, run once: their oracle runs stand for (b)
        assert list(runs[stream]["log_linear_dpo"]) == [key for key in keys if key not in drift.ORACLE_ONLY]
    quality = runs["quality"]["oracle"]["task"][0]["log"]
    assert len(quality["row"]) == 48  # three phases of 16
    assert len(runs["degradation"]["oracle"]["task"][1]["log"]["row"]) == 32
    assert runs["stationary"]["oracle"]["task_forget"][0]["router"]["forgetting"] == pytest.approx(0.5 ** (4 / 8))
    report = output.read_text()
    assert "do not edit by hand" in report and "## Goals (fidelity a)" in report
    for stream in drift.STREAMS:
        assert f"## `{stream}`" in report
        for fidelity in ("oracle", "log_linear_dpo"):
            picture = output.parent / "drift" / f"{stream}_{fidelity}.png"
            assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(drift/{stream}_{fidelity}.png)" in report
    for _, label, *_ in drift.METHODS:
        assert f"| {label} |" in report
    assert "What the DPO reward lets a router see" in report  # at fidelity (b)
    assert "| 16-24 | reference vs claude-2 |" in report  # every RM's accuracy per window, with its phase
    # a second call reuses every run and writes the same report
    saved = tmp_path / "runs" / "quality" / "oracle" / "task" / "seed_1.json"
    before = saved.stat().st_mtime_ns
    drift.main(argv)
    assert saved.stat().st_mtime_ns == before and output.read_text() == report


def test_the_forgetting_factor_halves_a_rewards_weight_every_half_life(drift):
    factor = drift.forgetting_factor(half_life_pairs=200, batch_size=8)
    assert factor ** (200 / 8) == pytest.approx(0.5)
