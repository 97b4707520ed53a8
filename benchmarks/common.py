"""What the benchmark scripts share: the real preference pairs they time, and how they write their report."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from rmrouter.data import AlpacaEvalPairs, GSM8KSolutionPairs, HHRLHFHarmlessPairs, PreferenceRecord

PAIRS_ORIGIN = "GSM8K solutions + HH-RLHF harmless + AlpacaEval, round-robin"


def real_pairs(count: int) -> list[PreferenceRecord]:
    """`count` vendored pairs, taken in turn from GSM8K, HH-RLHF harmless and AlpacaEval."""
    sources = [GSM8KSolutionPairs(limit=count), HHRLHFHarmlessPairs(limit=count), AlpacaEvalPairs(limit=count)]
    columns = [source.load() for source in sources]
    interleaved = [column[index] for index in range(count) for column in columns if index < len(column)]
    return interleaved[:count]


def write_report(path: Path, title: str, notes: str, table: str) -> None:
    """A markdown report that names the exact command and machine that produced `table`."""
    command = " ".join(["python", *sys.argv])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\nWritten by `{command}` ({machine}); do not edit by hand.\n{notes}\n\n{table}\n")
