"""The one way rmrouter's DataModules build a DataLoader: seeded shuffling, persistent workers when there are any, and
a position that survives a checkpoint.

torchdata's `StatefulDataLoader` is a drop-in `DataLoader` with `state_dict`/`load_state_dict`; Lightning saves that
state in its checkpoints and restores it on `--ckpt_path`, so a run resumed in the middle of an epoch goes on with
the batches it had not seen yet, in the same order, instead of starting the epoch again. The shuffled order comes
from `EpochShuffler`, not torchdata's own random sampler: that one restores the interrupted epoch but draws every
later epoch's order from a generator in another state than the uninterrupted run's (measured with torchdata 0.11:
epoch 1 came out `[7, 5, 1, 4], [6, 2, 0, 3]` after a resume and `[3, 0, 4, 2], [7, 6, 5, 1]` without one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader


class EpochShuffler(Sampler[int]):
    """Each pass a new order of `range(size)`, a pure function of `(seed, epoch)` as in torch's DistributedSampler.

    Its state is the epoch of the pass in progress and the position in it, so a resumed run yields exactly the
    indices an uninterrupted one would, in this epoch and every later one. A pass's epoch is fixed when it yields its
    first index (the pass before plus one), so iterators that are made and dropped unused, as loaders do while
    restoring, count for nothing, and neither does a pass that Lightning stops after `len(loader)` batches without
    exhausting it.

    `set_epoch` (Lightning calls it at every epoch start) only places a shuffler that has neither run nor been
    restored. Lightning restores a loader's state only when it resumes inside an epoch or in a `max_steps` run: an
    epoch-based fit resumed from an epoch-end `last.ckpt` (the offline router's and learned RMs') gets a fresh loader,
    which would start again at epoch 0's order (measured: the resumed offline router ended with other weights), and
    this puts it at Lightning's epoch instead. Everywhere else the shuffler's own count rules: after a `max_steps` stop
    in mid-epoch Lightning counts that epoch as finished, and following it would switch to the next epoch's order.

    Args:
        size: How many indices to shuffle (the dataset's length).
        seed: Seed of every epoch's order (the order of epoch `e` is seeded with `seed + e`).
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = -1  # the pass in progress; -1 before the first
        self.yielded = 0  # indices that pass has handed out
        self._resume: tuple[int, int] | None = None  # a restored pass to finish first
        self._placed = False  # has run or been restored: set_epoch no longer moves it

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        # a generator: nothing below runs until the first index is asked for
        self._placed = True
        if self._resume is not None:
            (self.epoch, self.yielded), self._resume = self._resume, None
        else:
            self.epoch, self.yielded = self.epoch + 1, 0
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        for index in order[self.yielded :]:
            self.yielded += 1
            yield index

    def set_epoch(self, epoch: int) -> None:
        """Makes `epoch` the next pass of a shuffler that has neither run nor been restored; otherwise does nothing."""
        if not self._placed:
            self.epoch = epoch - 1

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "yielded": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.yielded, self._placed = state["epoch"], state["yielded"], True
        unfinished = 0 <= self.epoch and self.yielded < self.size
        self._resume = (self.epoch, self.yielded) if unfinished else None  # a finished pass: the next one is new


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> StatefulDataLoader:
    """A DataLoader whose shuffled order depends only on `seed` and the epoch (never on the global RNG) and that
    resumes exactly, mid-epoch and in every epoch after."""
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffler(len(dataset), seed) if shuffle else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_fn,
    )
