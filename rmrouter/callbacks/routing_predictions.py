"""Writes the offline router's per-row routing decisions after `predict`, one JSON line per row."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from rmrouter.callbacks.offline_report import evaluated_path
from rmrouter.callbacks.run_folder import in_run_folder
from rmrouter.callbacks.smoke_run import writes_artifacts

log = logging.getLogger(__name__)


class RoutingPredictionWriter(BasePredictionWriter):
    """After `predict`, writes every row `OfflineRouterModule.predict_step` returned to a JSON-lines file.

    Each line names the split, the pair (id, domain, source), the RM the router picked and the one data-label routing
    picks (indices into `rm_names`, which the first line lists), the router scores, and per RM whether it could judge
    the pair and was right. Under several processes each rank writes `<stem>.rank<r><suffix>`; a run that evaluates a
    whole other behaviour file (`evaluate_all`) writes `<stem>.<file stem><suffix>` beside the main run's file.

    Args:
        path: The file; None: `predictions.jsonl` in the run's folder (`trainer.default_root_dir`).
    """

    FILE_NAME = "predictions.jsonl"

    def __init__(self, path: str | None = None):
        super().__init__(write_interval="epoch")
        self.path = None if path is None else Path(path)

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list[Any], batch_indices: Any
    ) -> None:
        path = in_run_folder(trainer, self.path, self.FILE_NAME)
        path = evaluated_path(path, trainer.datamodule)  # evaluate_all: beside the main run's file
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        if not writes_artifacts(trainer, path):
            return
        # Lightning nests one list per dataloader only when there are several
        loaders = predictions if len(trainer.num_predict_batches) > 1 else [predictions]
        rows = [row for batches in loaders for batch in batches for row in batch]
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {"rm_names": list(pl_module.hparams.rm_names), "checkpoint": str(trainer.ckpt_path)}
        lines = [json.dumps(header)] + [json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("wrote %d routing decisions to %s", len(rows), path)


def read_predictions(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header (`rm_names`, `checkpoint`) and the rows of a file `RoutingPredictionWriter` wrote."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or "rm_names" not in json.loads(lines[0]):
        raise ValueError(f"{path}: not a routing-predictions file (its first line must list rm_names)")
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
