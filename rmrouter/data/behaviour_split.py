"""How a behaviour file is split: by prompt into train/val/test, with whole domains or sources held out as `ood`.

Every config that must split one pool's behaviour file the same way names one file of `configs/splits/` (e.g.
`split: ../splits/default.yaml`): the offline routers, whose prior is trained on `train`; the simulated online run,
which routes only the `test` and `ood` rows the prior never saw; and routing by data label, fitted on the same `train`
rows as the prior. jsonargparse reads a dataclass argument from a YAML path, so the split is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rmrouter.data.records import PreferenceRecord
from rmrouter.data.sources import assign_split, split_key

IN_DISTRIBUTION_SPLITS = ("train", "val", "test")


def _default_fractions() -> dict[str, float]:
    return {"train": 0.8, "val": 0.1, "test": 0.1}


@dataclass(frozen=True)
class BehaviourSplit:
    """The split of a behaviour file.

    Args:
        fractions: Relative sizes of `train` (required), `val` and `test`.
        seed: Seed of the prompt-keyed split assignment (`rmrouter.data.sources.assign_split`).
        ood_domains: Domains held out whole as split `ood` (never trained, validated or tested on).
        ood_sources: Source prefixes held out whole as split `ood` (e.g. `hh-rlhf` or `alpaca_eval/gpt4`).
    """

    fractions: dict[str, float] = field(default_factory=_default_fractions)
    seed: int = 0
    ood_domains: list[str] = field(default_factory=list)
    ood_sources: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fractions) - set(IN_DISTRIBUTION_SPLITS))
        if "train" not in self.fractions or unknown:
            raise ValueError(
                f"split fractions must name 'train' and may name 'val' and 'test' (ood rows are chosen by "
                f"ood_domains/ood_sources), got {dict(self.fractions)}"
            )

    @property
    def holds_out(self) -> bool:
        """Whether any row can be `ood`."""
        return bool(self.ood_domains or self.ood_sources)

    def split_of(self, pair: PreferenceRecord) -> str:
        """`ood` for a held-out domain or source, else the pair's prompt-keyed split."""
        if pair.domain in self.ood_domains or any(pair.source.startswith(prefix) for prefix in self.ood_sources):
            return "ood"
        return assign_split(split_key(pair), dict(self.fractions), self.seed)

    def as_dict(self) -> dict:
        """Plain values, as a checkpoint's hyperparameters keep them (loadable with `weights_only=True`)."""
        return {"fractions": dict(self.fractions), "seed": self.seed, "ood_domains": list(self.ood_domains),
                "ood_sources": list(self.ood_sources)}  # fmt: skip


def split_named_by(config: str | Path) -> BehaviourSplit:
    """The split a LightningCLI config's data names: a `configs/splits/` file (its path relative to the config, as
    jsonargparse reads it) or inline values; the default split when it names none."""
    config = Path(config)
    value = ((yaml.safe_load(config.read_text()).get("data") or {}).get("init_args") or {}).get("split")
    if isinstance(value, str):
        value = yaml.safe_load((config.parent / value).read_text())
    return BehaviourSplit(**(value or {}))
