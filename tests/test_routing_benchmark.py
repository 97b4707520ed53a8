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


def test_the_benchmark_runs_every_method_at_both_fidelities_and_reports_what_its_runs_say(
    benchmark, tmp_path, tiny_encoder_dir
):
    write_behaviour(tmp_path / "behaviour.jsonl", rows=48)
    output = tmp_path / "docs" / "routing.md"
    argv = ["--behaviour", str(tmp_path / "behaviour.jsonl"), "--prior", str(tiny_prior(tmp_path / "prior.pt",
            tiny_encoder_dir)), "--encoder", tiny_encoder_dir, "--seeds", "0", "1", "--pairs", "40", "--batch-size",
            "4", "--window", "3", "--runs-dir", str(tmp_path / "runs"), "--output", str(output)]  # fmt: skip
    runs = benchmark.main(argv)
    keys = [key for key, *_ in benchmark.METHODS]
    assert set(runs) == {"oracle", "log_linear_dpo"} and all(list(runs[f]) == keys for f in runs)
    report = output.read_text()
    assert "do not edit by hand" in report and "Fidelity (a)" in report and "Fidelity (b)" in report
    for _, label, *_ in benchmark.METHODS:
        assert f"| {label} |" in report
    # the table's figure is the mean over the run files
    accuracies = [runs["oracle"]["data_label"][seed]["summary"]["accuracy"] for seed in (0, 1)]
    sd = statistics.stdev(accuracies)
    row = f"| routing by data label | {100 * statistics.fmean(accuracies):.1f} ± {100 * sd:.1f} |"
    assert row in report
    assert "| BayesianRouter above best single RM (on train) |" in report
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
