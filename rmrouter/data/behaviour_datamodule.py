"""The DataModule of the offline router: behaviour records (how each RM of a pool judged labelled pairs).

Batches are dicts: `id`, `domain`, `source`, `prompt` (rendered with `as_text`), `chosen`, `rejected` as lists of
strings; `agree`, `margin` as float tensors `[B, N]` and `eligible` as a bool tensor `[B, N]`, whose column `n` is
`rm_names[n]`; `scores` `[B, N, 2]` (each RM's score of `chosen`, then `rejected`); and `label_route` `[B]` long.
`agree` is 1.0 where the RM ranks the pair as the label does; `margin` is `score(chosen) - score(rejected)`, NaN where
the RM could not judge the pair (`eligible` False). `label_route` is the RM that routing by data label picks for the
pair (`rmrouter.routers.data_label`, fitted on the `train` split; -1 when no RM can judge it).

Splits are keyed by prompt (`assign_split(split_key(pair), ...)`), so no prompt is in two splits; `evaluate_all` makes
every row of the file the evaluated split instead, to test a trained router on any behaviour file. Rows of the
out-of-distribution domains or sources are held out whole as split `ood`, evaluated next to `test`; when `ood` spans
several domains, each domain is evaluated alone too (`ood/<domain>`), so a mixed result shows where it comes from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from rmrouter.data.behaviour import BehaviourRecord, read_behaviour, rm_names_of
from rmrouter.data.behaviour_split import IN_DISTRIBUTION_SPLITS, BehaviourSplit
from rmrouter.data.loading import seeded_loader
from rmrouter.data.records import as_text
from rmrouter.routers.data_label import DataLabelRouting

log = logging.getLogger(__name__)


class BehaviourPairs(Dataset):
    """Behaviour records as rows: strings for the pair, `[N]` tensors for the RMs in `rm_names` order.

    `label_route` is filled in by the DataModule once the data-label routing is fitted (-1 until then).
    """

    def __init__(self, records: list[BehaviourRecord], rm_names: Sequence[str]):
        self.records = records
        shape = (len(records), len(rm_names))  # reshape keeps [0, N] for an empty split
        scores = [[record.scores[name] for name in rm_names] for record in records]
        self.scores = torch.tensor(scores, dtype=torch.float64).reshape(*shape, 2)
        self.margin = (self.scores[..., 0] - self.scores[..., 1]).float()
        self.eligible = ~self.scores.isnan().any(dim=-1)
        self.agree = (self.eligible & (self.scores[..., 0] > self.scores[..., 1])).float()
        self.label_route = torch.full((len(records),), -1, dtype=torch.long)

    @property
    def domains(self) -> list[str]:
        return [record.pair.domain for record in self.records]

    @property
    def sources(self) -> list[str]:
        return [record.pair.source for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.records[index].pair
        return {
            "id": pair.id,
            "domain": pair.domain,
            "source": pair.source,
            "prompt": as_text(pair.prompt),
            "chosen": pair.chosen,
            "rejected": pair.rejected,
            "agree": self.agree[index],
            "margin": self.margin[index],
            "eligible": self.eligible[index],
            "scores": self.scores[index].float(),
            "label_route": self.label_route[index],
        }


class BehaviourDataModule(LightningDataModule):
    """Behaviour records of one RM pool, split by prompt into train/val/test, plus an optional held-out `ood` split.

    Args:
        path: The behaviour file (JSON lines, as written by behaviour collection).
        rm_names: The RMs to route between, in pool order; it fixes the columns of `agree` and `margin`. The file
            must carry these RMs; others it has are left out (e.g. the verifier of `configs/pool/with_verifier.yaml`
            for the default pool's router).
        split: The split (`BehaviourSplit`: fractions, seed, held-out domains and sources); in a config, the path of
            a `configs/splits/` file that every config splitting this file names. None: 80/10/10, nothing held out.
        train_splits: The splits the train loader serves; None serves `train`. The simulated online run serves
            `[test, ood]` of the offline router's split, so it routes only pairs the prior never saw.
        evaluate_all: Evaluate a trained router on every row of `path`: `val` and `test` (hence `validate`, `test`
            and `predict`) are the whole file, there is no train split and no `ood` (the split settings are then
            unused), and data-label routing is fitted on those same rows, so its baseline is in-sample (optimistic).
            For `python cli.py test --ckpt_path ... --data.init_args.path other.jsonl --data.init_args.evaluate_all
            true`; `fit` refuses it.
        batch_size: Pairs per batch on each device.
        num_workers: DataLoader worker processes.
        seed: Seed of the training order (reshuffled every epoch, reproducibly).
    """

    def __init__(
        self,
        path: str,
        rm_names: list[str],
        split: BehaviourSplit | None = None,
        train_splits: list[str] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        evaluate_all: bool = False,
    ):
        super().__init__()
        if not rm_names or len(set(rm_names)) != len(rm_names):
            raise ValueError(f"rm_names must be a non-empty list of distinct RM names, got {rm_names}")
        split = BehaviourSplit() if split is None else split
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        train_splits = list(train_splits or ["train"])
        known = [*IN_DISTRIBUTION_SPLITS, *(["ood"] if split.holds_out else [])]
        if not train_splits or any(name not in known for name in train_splits):
            raise ValueError(f"train_splits must name splits among {known}, got {train_splits}")
        self.save_hyperparameters(ignore=["split"])
        self.hparams["split"] = split.as_dict()  # plain values: a checkpoint loads with weights_only=True
        self.path = path
        self.rm_names = list(rm_names)
        self.split = split
        self.train_splits = train_splits
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.evaluate_all = evaluate_all
        self.splits: dict[str, BehaviourPairs] | None = None
        self.ood_by_domain: dict[str, BehaviourPairs] = {}  # `ood/<domain>` views when `ood` spans several domains
        self.train_pairs: BehaviourPairs | None = None  # the rows of `train_splits`
        self.data_label_routing: DataLabelRouting | None = None  # fitted on the `train` split in `setup`

    @property
    def has_ood(self) -> bool:
        return self.split.holds_out and not self.evaluate_all

    @property
    def evaluation_name(self) -> str | None:
        """With `evaluate_all`, the evaluated file's stem, which reports and predictions add to their file names (so
        evaluating another file leaves the main run's outputs alone); otherwise None."""
        return Path(self.path).name.split(".")[0] if self.evaluate_all else None

    def setup(self, stage: str | None = None) -> None:
        # Idempotent: every split comes from one read of one small file, done on the first call whatever the stage.
        if self.splits is not None:
            return
        records = read_behaviour(self.path, self.rm_names, exact=False)
        extra = [name for name in rm_names_of(self.path) if name not in self.rm_names]
        if extra:
            log.info("%s: routing among %s; the file's other RMs %s are left out", self.path, self.rm_names, extra)
        if self.evaluate_all:
            self._setup_evaluate_all(records)
            return
        names = [*IN_DISTRIBUTION_SPLITS, *(["ood"] if self.has_ood else [])]
        grouped: dict[str, list[BehaviourRecord]] = {name: [] for name in names}
        for record in records:
            grouped[self.split.split_of(record.pair)].append(record)
        train_rows = [record for name in self.train_splits for record in grouped[name]]
        if not train_rows:
            sizes = {name: len(rows) for name, rows in grouped.items()}
            raise ValueError(
                f"{self.path}: the {' + '.join(self.train_splits)} split is empty ({len(records)} rows, split sizes "
                f"{sizes}): raise the split's train fraction or narrow its ood_domains / ood_sources"
            )
        self._warn_unmatched_ood(records)
        self.splits = {name: BehaviourPairs(rows, self.rm_names) for name, rows in grouped.items()}
        self.train_pairs = BehaviourPairs(train_rows, self.rm_names)
        ood_domains = sorted({record.pair.domain for record in grouped.get("ood", [])})
        if len(ood_domains) > 1:
            self.ood_by_domain = {
                f"ood/{domain}": BehaviourPairs([r for r in grouped["ood"] if r.pair.domain == domain], self.rm_names)
                for domain in ood_domains
            }
        self._fit_data_label_routing()
        log.info("%s: behaviour split sizes %s", self.path, self.split_sizes)

    def _setup_evaluate_all(self, records: list[BehaviourRecord]) -> None:
        if not records:
            raise ValueError(f"{self.path}: no behaviour rows to evaluate")
        every = BehaviourPairs(records, self.rm_names)
        self.splits = {"train": BehaviourPairs([], self.rm_names), "val": every, "test": every}
        self.train_pairs = every  # data-label routing is fitted on these; train_dataloader refuses to serve them
        self._fit_data_label_routing()
        log.info("%s: evaluate_all: every one of its %d rows is the val and test split", self.path, len(records))

    def _fit_data_label_routing(self) -> None:
        # Fitted on `train` alone, like the router; with an empty `train` (the simulated stream's test + ood rows
        # only) on the rows served for training instead, and said so.
        fitted_on = self.splits["train"] if len(self.splits["train"]) else self.train_pairs
        if self.evaluate_all:
            log.warning(
                "%s: evaluate_all: data-label routing is fitted on the evaluated rows themselves, so its baseline is "
                "in-sample (an optimistic bound)", self.path,
            )  # fmt: skip
        elif fitted_on is not self.splits["train"]:
            log.warning(
                "%s: the train split is empty: data-label routing is fitted on %s", self.path, self.train_splits
            )
        right = fitted_on.agree.bool()  # agree is already False where the RM could not judge
        self.data_label_routing = DataLabelRouting.fit(fitted_on.domains, fitted_on.sources, right, fitted_on.eligible)
        for dataset in {*self.splits.values(), *self.ood_by_domain.values(), self.train_pairs}:
            dataset.label_route = self.data_label_routing.route(dataset.domains, dataset.sources, dataset.eligible)
        log.info("%s: data-label routing (top RM per label): %s", self.path,
                 self.data_label_routing.describe(self.rm_names))  # fmt: skip

    def _warn_unmatched_ood(self, records: list[BehaviourRecord]) -> None:
        # A misspelt domain or source would silently leave its rows in training; say which names matched nothing.
        domains = {record.pair.domain for record in records}
        sources = {record.pair.source for record in records}
        unmatched = [d for d in self.split.ood_domains if d not in domains]
        unmatched += [p for p in self.split.ood_sources if not any(s.startswith(p) for s in sources)]
        if unmatched:
            log.warning(
                "%s: ood_domains/ood_sources %s match no row (domains %s, sources %s)",
                self.path,
                unmatched,
                sorted(domains),
                sorted(sources),
            )

    @property
    def split_sizes(self) -> dict[str, int]:
        """Rows per split (`train`, `val`, `test`, and `ood` when it is configured), then per `ood/<domain>` view."""
        return {name: len(dataset) for name, dataset in {**self._splits(), **self.ood_by_domain}.items()}

    @property
    def test_split_names(self) -> list[str]:
        """The split of each loader `test_dataloader` returns, in order: `test`, `ood`, then each `ood/<domain>`.

        Empty splits are left out. Use it to name test metrics: dataloader `i` is `test_split_names[i]`, e.g.
        `test/acc`, `ood/acc` and `ood/koala/acc`.
        """
        return [name for name, dataset in self._test_splits().items() if len(dataset) > 0]

    def _test_splits(self) -> dict[str, BehaviourPairs]:
        splits = self._splits()
        return {**{name: splits[name] for name in ("test", "ood") if name in splits}, **self.ood_by_domain}

    def train_dataloader(self) -> DataLoader:
        self._splits()
        if self.evaluate_all:
            raise ValueError(
                f"{self.path}: evaluate_all serves every row for evaluation (validate, test, predict) and none for "
                "training: fit without it"
            )
        return self._loader(self.train_pairs, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = self._loaders(["val"])
        return loaders[0] if loaders else []  # Lightning runs no validation for an empty list

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per name of `test_split_names`, in that order."""
        return self._loaders(["test", *(["ood"] if self.has_ood else []), *self.ood_by_domain])

    def predict_dataloader(self) -> list[DataLoader]:
        """The test loaders (`test_split_names`): `predict` gives the router's decision on every test row."""
        return self.test_dataloader()

    def _loaders(self, names: list[str]) -> list[DataLoader]:
        splits = {**self._splits(), **self.ood_by_domain}
        for name in names:
            if len(splits[name]) == 0:
                log.warning(
                    "%s: the %s split is empty, so it is skipped (see the split's fractions and ood_*)", self.path, name
                )
        return [self._loader(splits[name], shuffle=False) for name in names if len(splits[name]) > 0]

    def _splits(self) -> dict[str, BehaviourPairs]:
        if self.splits is None:
            raise RuntimeError("call setup() before asking BehaviourDataModule for its splits or dataloaders")
        return self.splits

    def _loader(self, dataset: BehaviourPairs, shuffle: bool) -> DataLoader:
        return seeded_loader(dataset, self.batch_size, shuffle, self.seed, self.num_workers)
