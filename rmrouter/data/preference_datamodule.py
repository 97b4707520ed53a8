"""The shared DataModule of labelled preference pairs, read from any `PreferenceSource`s.

Batches are dicts of equal-length lists of strings: `id`, `prompt`, `chosen`, `rejected`, `domain`. The prompt is
rendered to plain text with `rmrouter.data.records.as_text` (single user turn: its content; a conversation: turns
joined as `Role: content`), so batches collate with the default collate function and any text model can read them.
Consumers that need chat messages back can look records up by `id`.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from rmrouter.data.loading import seeded_loader
from rmrouter.data.records import PreferenceRecord, as_text
from rmrouter.data.sources import PreferenceSource

PairRow = dict[str, str]


class PreferencePairs(Dataset):
    """Preference records as flat rows of strings."""

    def __init__(self, records: list[PreferenceRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PairRow:
        record = self.records[index]
        return {
            "id": record.id,
            "prompt": as_text(record.prompt),
            "chosen": record.chosen,
            "rejected": record.rejected,
            "domain": record.domain,
        }


def load_sources(sources: list[PreferenceSource]) -> list[PreferenceRecord]:
    return [record for source in sources for record in source.load()]


class PreferenceDataModule(LightningDataModule):
    """Preference pairs for training and validation, each side read from a list of sources and concatenated.

    Args:
        train: Sources of training pairs (in YAML, a list of `class_path` objects).
        val: Sources of validation pairs; None or empty runs no validation.
        batch_size: Pairs per batch on each device.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order (reshuffled every epoch, reproducibly).
    """

    def __init__(
        self,
        train: list[PreferenceSource],
        val: list[PreferenceSource] | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        if not train:
            raise ValueError("PreferenceDataModule needs at least one training source in `train`")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["train", "val"])
        self.train_sources = list(train)
        self.val_sources = list(val or [])
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: PreferencePairs | None = None
        self.val_set: PreferencePairs | None = None

    def setup(self, stage: str | None = None) -> None:
        # Idempotent: the trainer calls setup once per stage, and sources re-read their files on every load().
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._load("train", self.train_sources)
        if stage in (None, "fit", "validate") and self.val_set is None and self.val_sources:
            self.val_set = self._load("val", self.val_sources)

    @staticmethod
    def _load(name: str, sources: list[PreferenceSource]) -> PreferencePairs:
        records = load_sources(sources)
        if not records:
            raise ValueError(f"the {name} sources {sources} gave no preference pairs: check paths, splits and limits")
        return PreferencePairs(records)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before train_dataloader()")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []  # Lightning runs no validation for an empty list
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: PreferencePairs, shuffle: bool) -> DataLoader:
        return seeded_loader(dataset, self.batch_size, shuffle, self.seed, self.num_workers)
