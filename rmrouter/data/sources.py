"""Base classes for configurable data sources, the vendored data kit, and deterministic splits.

A source is a small object with typed `__init__` arguments (so a YAML `class_path` builds it) and a `load()`
that returns records. Every source can restrict itself to one named split: a record's split is a pure function
of its id and a seed, so splits never change when a file grows, shrinks or is read in another order.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from rmrouter.data.jsonl import OnError
from rmrouter.data.records import PreferenceRecord, PromptRecord

if TYPE_CHECKING:
    import datasets

R = TypeVar("R", PreferenceRecord, PromptRecord)


def vendored_path(relative: str) -> Path:
    """A file of the data kit shipped inside the package (`rmrouter/vendor/<relative>`)."""
    return Path(str(resources.files("rmrouter") / "vendor" / relative))


def split_key(record: PreferenceRecord | PromptRecord) -> str:
    """What a split is decided by: the prompt, so no prompt is ever both trained and tested on."""
    return json.dumps(record.prompt, sort_keys=True, ensure_ascii=False)


def assign_split(key: str, fractions: dict[str, float], seed: int) -> str:
    """The split of `key` (see `split_key`): a hash of it, the seed and the split names, mapped onto the cumulative
    `fractions`.

    The names are hashed too so that two split schemes over the same rows, such as a source's `{behaviour, ood}`
    and a DataModule's `{train, val, test}` later, are independent at the same seed; hashing the seed alone nests
    them, and every `behaviour` row (the lower half) would then land in `train` (the lower 70 %). Resizing a
    scheme's fractions keeps its names and so moves as few rows as possible.
    """
    total = sum(fractions.values())
    if not fractions or total <= 0 or any(value < 0 for value in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum to more than 0, got {fractions}")
    digest = hashlib.sha256(f"{seed}:{'/'.join(fractions)}:{key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64 * total
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if position < cumulative:
            return name
    return name  # only reached through float rounding at the very top of the range


# The split schemes of the vendored kit that several configs share: a learned RM trains on the `rm_train`/`train` and
# `rm_val`/`val` splits of its scheme, and the behaviour and online configs read the other splits of the same scheme,
# so naming the scheme (`split_fractions: gsm8k`) instead of restating it keeps those prompts apart by construction.
# The order of a scheme's splits is part of it (`assign_split` maps a hash onto the cumulative fractions in order),
# and a name also survives tools that sort mapping keys when they rewrite a YAML file.
SPLIT_SCHEMES: dict[str, dict[str, float]] = {
    "gsm8k": {"rm_train": 0.3, "rm_val": 0.05, "behaviour": 0.4, "ood": 0.25},
    "alpaca_eval": {"rm_train": 0.3, "rm_val": 0.05, "behaviour": 0.65},
    "hh_rlhf": {"train": 0.4, "val": 0.1, "behaviour": 0.5},
    # A second scheme over the AlpacaEval `behaviour` instructions (`subsplit`), for what the behaviour records leave
    # free: the online policy's training prompts, the downstream judge's training and validation data, and the
    # held-out instructions the trained policies are evaluated on. Apart by construction, so no policy is evaluated
    # on an instruction it trained on and the judge never scores an answer to an instruction it learned from.
    "alpaca_eval_behaviour": {"online": 0.3, "judge_train": 0.25, "judge_val": 0.1, "eval": 0.35},
}


def resolve_split_fractions(split_fractions: dict[str, float] | str | None) -> dict[str, float] | None:
    """The fractions themselves, or those of the scheme a string names in `SPLIT_SCHEMES`."""
    if not isinstance(split_fractions, str):
        return split_fractions
    if split_fractions not in SPLIT_SCHEMES:
        raise ValueError(
            f"split_fractions '{split_fractions}' names no split scheme: use one of {sorted(SPLIT_SCHEMES)} or give "
            "the fractions, e.g. {train: 0.5, test: 0.5}"
        )
    return dict(SPLIT_SCHEMES[split_fractions])


class Source(ABC, Generic[R]):
    """Loads records of one kind from one place, optionally one split of them.

    Args:
        path: The file to read; None reads the copy vendored with the package.
        limit: Keep at most this many records (after the split is applied).
        on_error: `raise` stops at the first bad row naming file, line and field; `skip` drops and counts them.
        split: Keep only this split (a key of `split_fractions`); None keeps every record.
        split_fractions: Relative sizes of the splits, e.g. `{train: 0.5, test: 0.5}`, or the name of a shared
            scheme of `SPLIT_SCHEMES` (`gsm8k`, `alpaca_eval`, `hh_rlhf`).
        split_seed: Seed of the split assignment.
        subsplit: Keep only this part of `split`, by a second scheme over its records (`subsplit_fractions`, the
            same seed); needs `split`.
        subsplit_fractions: Relative sizes of the parts of `split`, or a scheme's name (`alpaca_eval_behaviour`).
    """

    default_path: str = ""

    def __init__(
        self,
        path: str | None = None,
        limit: int | None = None,
        on_error: OnError = "raise",
        split: str | None = None,
        split_fractions: dict[str, float] | str | None = None,
        split_seed: int = 0,
        subsplit: str | None = None,
        subsplit_fractions: dict[str, float] | str | None = None,
    ):
        split_fractions = resolve_split_fractions(split_fractions)
        subsplit_fractions = resolve_split_fractions(subsplit_fractions)
        if split is not None and (not split_fractions or split not in split_fractions):
            raise ValueError(f"split '{split}' is not one of split_fractions {sorted(split_fractions or {})}")
        if subsplit is not None and split is None:
            raise ValueError(f"subsplit '{subsplit}' divides a split: set `split` too")
        if subsplit is not None and (not subsplit_fractions or subsplit not in subsplit_fractions):
            raise ValueError(
                f"subsplit '{subsplit}' is not one of subsplit_fractions {sorted(subsplit_fractions or {})}"
            )
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.path = Path(path) if path is not None else vendored_path(self.default_path)
        self.limit = limit
        self.on_error = on_error
        self.split = split
        self.split_fractions = split_fractions
        self.split_seed = split_seed
        self.subsplit = subsplit
        self.subsplit_fractions = subsplit_fractions

    def load(self) -> list[R]:
        records = self.read()
        if self.split is not None:
            fractions, seed = self.split_fractions, self.split_seed
            records = [r for r in records if assign_split(split_key(r), fractions, seed) == self.split]
        if self.subsplit is not None:
            # The second scheme's names are hashed with the key (`assign_split`), so its parts are independent of
            # the first scheme's at the same seed.
            fractions, seed = self.subsplit_fractions, self.split_seed
            records = [r for r in records if assign_split(split_key(r), fractions, seed) == self.subsplit]
        return records if self.limit is None else records[: self.limit]

    @abstractmethod
    def read(self) -> list[R]:
        """Every record of the file, in file order, with bad rows handled by `self.on_error`."""

    def load_dataset(self) -> datasets.Dataset:
        """The loaded records as a `datasets.Dataset` (one column per record field)."""
        return records_to_dataset(self.load())

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        split += f", subsplit={self.subsplit!r}" if self.subsplit else ""
        return f"{type(self).__name__}(path={str(self.path)!r}{split}, limit={self.limit})"


class PreferenceSource(Source[PreferenceRecord]):
    """A source of labelled preference pairs."""


class PromptSource(Source[PromptRecord]):
    """A source of prompts for online training."""


def records_to_dataset(records: list[PreferenceRecord] | list[PromptRecord]) -> datasets.Dataset:
    import datasets  # imported here: it costs about a second and most users of the data layer never need it

    return datasets.Dataset.from_list([record.to_dict() for record in records])
