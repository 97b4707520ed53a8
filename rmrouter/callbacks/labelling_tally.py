"""Exact run totals of simulated online DPO labelling: pairs routed and labelled right, overall and per domain.

`train/labelling_acc` is logged per step; a mean of those per-step means weighs a small last batch like a full one.
`LabellingTally` counts pairs instead, over the whole run, and keeps the counts in its `state_dict`, so a run resumed
with `--ckpt_path` goes on counting. It also snapshots the router's own run counters (RM calls, per-RM selections).

    python cli.py fit --config configs/online/simulated.yaml --config configs/routers/bayesian.yaml \
        --trainer.callbacks+=rmrouter.callbacks.LabellingTally --trainer.callbacks.path=labelling.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from rmrouter.callbacks.smoke_run import writes_artifacts
from rmrouter.routers.base import Router

log = logging.getLogger(__name__)

OVERALL = "overall"


class LabellingTally(Callback):
    """Counts routed pairs and correctly labelled pairs of a simulated online DPO fit, overall and per domain.

    Each training batch it reads `outputs["labelling"]` (`(domains, correct)` per routed pair, returned by
    `OnlineDPOModule.training_step` in the simulated mode; a live run has none and is not counted). Under several
    processes every rank's pairs are gathered each batch, so the counts cover the global batch and are identical on
    every rank, as the router's counters are. A pair the router left unlabelled (abstention or tie) counts as routed,
    not correct.

    Args:
        path: Where rank zero writes `summary()` as JSON when training ends (e.g. `labelling.json`); None writes
            nothing (read `summary()` from the callback).
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.pairs: dict[str, int] = {}
        self.correct: dict[str, int] = {}
        self.batches = 0
        self.global_step = 0
        self.router: dict[str, Any] = {}

    def add(self, domains: Sequence[str], correct: Tensor | Sequence[bool]) -> None:
        """Adds one batch: per routed pair, its domain and whether its label was right."""
        flags = [bool(flag) for flag in (correct.tolist() if isinstance(correct, Tensor) else correct)]
        if len(flags) != len(domains):
            raise ValueError(f"{len(domains)} domains but {len(flags)} correctness flags: one of each per routed pair")
        for domain, flag in zip(domains, flags, strict=True):
            for key in (domain, OVERALL):
                self.pairs[key] = self.pairs.get(key, 0) + 1
                self.correct[key] = self.correct.get(key, 0) + int(flag)
        self.batches += 1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        outcome = outputs.get("labelling") if isinstance(outputs, dict) else None
        if outcome is None:
            return
        domains, correct = list(outcome[0]), outcome[1].detach().bool().cpu().tolist()
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            parts: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(parts, (domains, correct))  # rank order, like the router's gathered rows
            domains = [d for part_domains, _ in parts for d in part_domains]
            correct = [c for _, part_correct in parts for c in part_correct]
        self.add(domains, correct)
        self.global_step = trainer.global_step
        self._snapshot_router(trainer)

    def _snapshot_router(self, trainer: Trainer) -> None:
        router = next((cb for cb in trainer.callbacks if isinstance(cb, Router)), None)
        if router is None:
            return
        self.router = {
            "name": type(router).__name__,
            "pairs_routed": int(router.pairs_routed),
            "rm_calls": int(router.rm_calls),
            "selections": {name: int(n) for name, n in zip(router.rm_names, router.selections.tolist(), strict=True)},
        }

    def summary(self) -> dict[str, Any]:
        """Counts and shares over the run so far.

        `accuracy` maps `overall` and each domain to correct / routed pairs. `rm_calls_per_pair` is the router's RM
        calls over its routed pairs; `select_rate` each RM's share of the pairs labelled by one RM (empty for routers
        that aggregate every RM, such as majority vote and UWO). Router entries are None when no router was found.
        """
        selections = self.router.get("selections", {})
        attributed = sum(selections.values())
        routed = self.router.get("pairs_routed", 0)
        return {
            "pairs": dict(self.pairs),
            "correct": dict(self.correct),
            "accuracy": {key: self.correct[key] / n for key, n in self.pairs.items()},
            "batches": self.batches,
            "global_step": self.global_step,
            "router": self.router.get("name"),
            "rm_calls": self.router.get("rm_calls"),
            "rm_calls_per_pair": self.router["rm_calls"] / routed if routed else None,
            "select_rate": {name: n / attributed for name, n in selections.items()} if attributed else {},
        }

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.path is None or not trainer.is_global_zero or not writes_artifacts(trainer, self.path):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        log.info("wrote the labelling tally to %s", self.path)

    def state_dict(self) -> dict[str, Any]:
        return {
            "pairs": dict(self.pairs),
            "correct": dict(self.correct),
            "batches": self.batches,
            "global_step": self.global_step,
            "router": json.loads(json.dumps(self.router)),  # a deep copy of plain values
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pairs = {key: int(n) for key, n in state_dict["pairs"].items()}
        self.correct = {key: int(n) for key, n in state_dict["correct"].items()}
        self.batches = int(state_dict["batches"])
        self.global_step = int(state_dict["global_step"])
        self.router = json.loads(json.dumps(state_dict["router"]))
