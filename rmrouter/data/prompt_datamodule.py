"""The DataModule of online training: prompts from any `PromptSource`s, batched as lists of `PromptRecord`s.

Online DPO samples its own responses, so a batch is just the prompts. Records are kept whole (chat messages, domain,
reference answer, metadata) instead of being collated into tensors: the policy renders them with its chat template
and the RMs may read the reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from rmrouter.data.loading import seeded_loader
from rmrouter.data.records import PromptRecord
from rmrouter.data.sources import PromptSource


class Prompts(Dataset):
    """Prompt records, one per row."""

    def __init__(self, records: list[PromptRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]


class PromptBatch:
    """The records of one batch, in order: iterate, index and `len` it like a list.

    Not a list, tuple or dataclass on purpose: Lightning walks those with `apply_to_collection` (device transfer,
    the FSDP and mixed-precision plugins' input conversion), which refuses the frozen `PromptRecord`s inside; an
    object it does not know passes through untouched.
    """

    def __init__(self, records: Sequence[PromptRecord]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[PromptRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self.records[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PromptBatch) and self.records == other.records

    def __repr__(self) -> str:
        return f"PromptBatch({[record.id for record in self.records]})"


def collate_records(rows: list[PromptRecord]) -> PromptBatch:
    """Keeps a batch as its records (the default collate would try to stack their fields)."""
    return PromptBatch(rows)


class PromptDataModule(LightningDataModule):
    """Training prompts, read from a list of sources and concatenated, reshuffled every epoch with a seed.

    Args:
        train: Sources of training prompts (in YAML, a list of `class_path` objects).
        batch_size: Prompts per batch on each device.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order.
    """

    def __init__(self, train: list[PromptSource], batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if not train:
            raise ValueError("PromptDataModule needs at least one prompt source in `train`")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["train"])
        self.train_sources = list(train)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Prompts | None = None

    def setup(self, stage: str | None = None) -> None:
        # Idempotent: the trainer calls setup once per stage, and sources re-read their files on every load().
        if self.train_set is not None:
            return
        records = [record for source in self.train_sources for record in source.load()]
        if not records:
            raise ValueError(f"the prompt sources {self.train_sources} gave no prompts: check paths, splits and limits")
        self.train_set = Prompts(records)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        return seeded_loader(self.train_set, self.batch_size, True, self.seed, self.num_workers, collate_records)
