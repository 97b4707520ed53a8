"""The GPU check: a machine without CUDA is told so in one line and nothing is written; its RM comparison works on
any device pair (here the CPU against itself, on the tiny models)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_the_script_says_so_in_one_line_and_exits_0(tmp_path):
    output = tmp_path / "gpu_check.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    expected = f"no CUDA device here: the GPU check did not run ({output} left as it is)"
    script = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--output", str(output)], cwd=ROOT, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert script.stdout.splitlines() == [expected]
    wrapper = subprocess.run(["bash", "scripts/gpu_check.sh", "--output", str(output)], cwd=ROOT, env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert wrapper.returncode == 0 and wrapper.stdout.splitlines()[-1] == expected, wrapper.stderr
    assert not output.exists()


def test_the_rm_comparison_times_and_compares_each_rm(gpu_check, tiny_causal_lm_dir, tiny_encoder_dir):
    from rmrouter.data.records import PreferenceRecord, as_messages

    pairs = [
        PreferenceRecord(
            f"p{i}",
            as_messages(f"question {i}"),
            "a longer kind answer" * (i + 1),
            "no",
            "toy",
            "t",
            reference="a kind answer" if i % 2 else None,
        )  # fmt: skip
        for i in range(6)
    ]
    here = gpu_check.scoring_rms("float32", tiny_causal_lm_dir, tiny_encoder_dir)
    cpu = gpu_check.scoring_rms("float32", tiny_causal_lm_dir, tiny_encoder_dir)
    table = gpu_check.compare_rms(pairs, "cpu", "float32", here, cpu).splitlines()
    assert len(table) == 2 + 3
    names = ["likelihood", "reference-similarity", "sequence-classifier"]
    for line, name, judged in zip(table[2:], names, [6, 3, 6], strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == f"{name} (float32)"
        assert float(cells[3]) == 0.0  # the same weights (the classifier's head seeded alike) on the same device
        assert cells[4] == f"100.0% of {judged}"
