"""A run's folder: `trainer.default_root_dir`. Each training config names it once, and everything the run writes
(the TensorBoard logs, `last.ckpt`/`best.ckpt`, the prior, the report, the predictions, the summary) goes there
unless a callback is given a path of its own."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Trainer


def in_run_folder(trainer: Trainer, path: str | Path | None, name: str) -> Path:
    """`path` when one was configured, else the file `name` in the run's folder."""
    return Path(path) if path is not None else Path(trainer.default_root_dir) / name
