"""The one way rmrouter's DataModules build a DataLoader: seeded shuffling, persistent workers when there are any, and
a position that survives a checkpoint.

torchdata's `StatefulDataLoader` is a drop-in `DataLoader` with `state_dict`/`load_state_dict`; Lightning saves that
state in its checkpoints and restores it on `--ckpt_path`, so a run resumed in the middle of an epoch goes on with
the batches it had not seen yet, in the same order, instead of starting the epoch again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> StatefulDataLoader:
    """A DataLoader whose shuffled order depends only on `seed` (never on the global RNG) and that resumes mid-epoch."""
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )
