"""Live online DPO under FSDP (2 CPU processes): a rank with no usable pair still takes part in every collective."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_fsdp_lora_run_finishes_when_one_rank_has_only_ties(tiny_causal_lm_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    command = [sys.executable, str(HERE / "fsdp_cpu_run.py"), tiny_causal_lm_dir, str(tmp_path)]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["step"] == rank1["step"] == 2
    assert rank0["train/pairs"] > 0 and rank1["train/pairs"] == 0  # rank 1 ran a dummy forward instead of hanging
    assert rank0["train/skipped_step"] == rank1["train/skipped_step"] == 0  # rank 0's pairs trained both ranks
