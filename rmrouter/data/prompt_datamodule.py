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
    """Training prompts, read from a list of sources and concatenated, reshuffled every epoch with a seed; and the
    held-out prompts `test` evaluates a trained policy on, in file order.

    Args:
        train: Sources of training prompts (in YAML, a list of `class_path` objects); needed by `fit`.
        batch_size: Prompts per batch on each device.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order.
        test: Sources of evaluation prompts (`configs/evaluation/downstream.yaml`); needed by `test`.
        test_batch_size: Prompts per test batch; None: `batch_size`.
    """

    def __init__(
        self,
        train: list[PromptSource] | None = None,
        batch_size: int = 4,
        num_workers: int = 0,
        seed: int = 0,
        test: list[PromptSource] | None = None,
        test_batch_size: int | None = None,
    ):
        super().__init__()
        if not train and not test:
            raise ValueError("PromptDataModule needs prompt sources: `train` to fit, `test` to evaluate")
        for name, value in (("batch_size", batch_size), ("test_batch_size", test_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.save_hyperparameters(ignore=["train", "test"])
        self.train_sources = list(train or [])
        self.test_sources = list(test or [])
        self.batch_size = batch_size
        self.test_batch_size = test_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Prompts | None = None
        self.test_set: Prompts | None = None

    def setup(self, stage: str | None = None) -> None:
        # Idempotent: the trainer calls setup once per stage, and sources re-read their files on every load().
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = _load(self.train_sources, "train", "fit")
        if stage in (None, "test") and self.test_set is None:
            self.test_set = _load(self.test_sources, "test", "test")

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        return seeded_loader(self.train_set, self.batch_size, True, self.seed, self.num_workers, collate_records)

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            raise RuntimeError("call setup('test') before test_dataloader()")
        return DataLoader(self.test_set, self.test_batch_size, shuffle=False, num_workers=self.num_workers,
                          collate_fn=collate_records)  # fmt: skip


def _load(sources: list[PromptSource], key: str, stage: str) -> Prompts:
    if not sources:
        raise ValueError(
            f"PromptDataModule has no `{key}` prompt sources, which `{stage}` needs (data.init_args.{key})"
        )
    records = [record for source in sources for record in source.load()]
    if not records:
        raise ValueError(f"the prompt sources {sources} gave no prompts: check paths, splits and limits")
    return Prompts(records)
