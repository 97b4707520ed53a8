"""What every router trained on behaviour data shares, whatever its scores: the pair encoder's embedding cache and
frozen weights, one `RoutingMetrics` per stage logged at each epoch's end, the test splits' names, and the
per-row decisions of `predict`.

A subclass builds `self.pair_encoder` and implements `_scores(batch)`: the `[B, N]` routing scores (the routed RM is
the best eligible one), the `[B, N]` logits of "RM n is right" and the batch's losses, named as `loss_names`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor

from rmrouter.models.embedding_store import drop_frozen_weights, restore_frozen_weights
from rmrouter.models.pair_encoder import PairEncoder
from rmrouter.routers.decisions import best_eligible, majority_vote_credit
from rmrouter.routers.metrics import RoutingMetrics

ENCODER_PREFIX = "pair_encoder.encoder."
STAGES = ("train", "val", "test", "ood")


def _metrics_key(stage: str) -> str:
    # a bare "train" key would shadow nn.Module.train; "/" (as in `ood/koala`) is no module-name character
    return f"{stage.replace('/', '__')}_metrics"


class BehaviourRouterModule(LightningModule):
    """The Lightning side of a router trained on `BehaviourDataModule` batches (see that module for their keys).

    Args:
        rm_names: The pool's RM names in the column order of `agree` and `margin`.
        loss_names: The losses `_scores` returns, the first being the one optimised (logged as `<stage>/<name>`).
    """

    pair_encoder: PairEncoder
    router_label = "router"  # the router's row in reports

    def __init__(self, rm_names: Sequence[str], loss_names: Sequence[str]):
        super().__init__()
        if len(rm_names) < 2 or len(set(rm_names)) != len(rm_names):
            raise ValueError(f"rm_names must list at least two distinct RMs to route between, got {rm_names}")
        self.rm_names = list(rm_names)
        self.loss_names = tuple(loss_names)
        self.stage_metrics = torch.nn.ModuleDict(
            {_metrics_key(stage): RoutingMetrics(rm_names, self.loss_names) for stage in STAGES}
        )
        self._stages_to_log: list[str] = []

    def _scores(self, batch: dict[str, Any], stage: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Routing scores `[B, N]`, logits of "RM n is right" `[B, N]`, and the losses by name."""
        raise NotImplementedError

    def _check_batch(self, batch: dict[str, Any]) -> None:
        agree, margin, eligible = batch["agree"], batch["margin"], batch["eligible"]
        columns = len(self.rm_names)
        if agree.dim() != 2 or agree.shape[1] != columns or not margin.shape == eligible.shape == agree.shape:
            raise ValueError(
                f"batch 'agree' {tuple(agree.shape)}, 'margin' {tuple(margin.shape)} and 'eligible' "
                f"{tuple(eligible.shape)} must all be [batch, {len(self.rm_names)}], one column per RM of "
                f"rm_names={self.rm_names}: build the data with these RMs"
            )

    def _common_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        self._check_batch(batch)
        scores, right_logits, losses = self._scores(batch, stage)
        self._metrics(stage).update(
            losses, scores.detach(), right_logits.detach(), batch["agree"], batch["margin"], batch["eligible"],
            batch["label_route"],
        )  # fmt: skip
        return losses[self.loss_names[0]]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._common_step(batch, self._test_stage(dataloader_idx))

    @torch.no_grad()
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Per row of a test split: the router's scores and choice among the eligible RMs, next to what each RM and
        the data-label routing got right, so routing decisions can be compared row by row (paired tests).

        Rows are those of `datamodule.test_split_names[dataloader_idx]` (`predict_dataloader` serves the test splits).
        """
        split = self._test_stage(dataloader_idx)
        scores = self._scores(batch, split)[0]
        eligible = batch["eligible"]
        chosen = best_eligible(scores, eligible)
        right = (batch["agree"] == 1) & eligible
        majority = majority_vote_credit(batch["margin"])
        return [
            {
                "split": split,
                "id": batch["id"][i],
                "domain": batch["domain"][i],
                "source": batch["source"][i],
                "routed": int(chosen[i]),
                "label_route": int(batch["label_route"][i]),
                "scores": scores[i].tolist(),
                "right": right[i].tolist(),
                "eligible": eligible[i].tolist(),
                "majority_credit": float(majority[i]),
            }  # fmt: skip
            for i in range(len(chosen))
        ]

    def pair_encoder_state(self, encoder_dir: str | Path | None = None) -> dict[str, Any]:
        """A prior's pair-encoder fields: `encoder`, `pooling`, `max_length`, `mlp_config` and `mlp_state`.

        Args:
            encoder_dir: Where a fine-tuned encoder is saved (`save_pretrained`, with its tokenizer); the prior then
                names that folder as its encoder. Unused, and nothing is written, when the encoder is frozen.

        Raises:
            ValueError: The encoder was fine-tuned and no `encoder_dir` was given: its name alone would load other
                weights online.
        """
        encoder = self.pair_encoder.encoder
        encoder_name = encoder.name
        if not self.pair_encoder.freeze_encoder:
            if encoder_dir is None:
                raise ValueError(
                    f"the router fine-tuned its encoder '{encoder_name}': pass encoder_dir so the prior can name a "
                    "folder holding the fine-tuned weights"
                )
            encoder.model.save_pretrained(encoder_dir)
            encoder.tokenizer.save_pretrained(encoder_dir)
            encoder_name = str(encoder_dir)
        mlp_state = {key: value.detach().cpu().clone() for key, value in self.pair_encoder.mlp.state_dict().items()}
        return {"encoder": encoder_name, "pooling": encoder.pooling, "max_length": encoder.max_length,
                "mlp_config": self.pair_encoder.mlp_config(), "mlp_state": mlp_state}  # fmt: skip

    def _use_cache(self) -> bool:
        # while fitting the same train and val texts come back every epoch; a store keeps them for the next process
        fitting = self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING
        return fitting or self.pair_encoder.stores_embeddings

    def _metrics(self, stage: str) -> RoutingMetrics:
        key = _metrics_key(stage)
        if key not in self.stage_metrics:
            self.stage_metrics[key] = RoutingMetrics(self.rm_names, self.loss_names).to(self.device)
        if stage not in self._stages_to_log:
            self._stages_to_log.append(stage)
        return self.stage_metrics[key]

    def _test_stage(self, dataloader_idx: int) -> str:
        """A test dataloader's split: `datamodule.test_split_names[i]`, else `test` (`test_<i>` after the first)."""
        names = getattr(getattr(self._trainer, "datamodule", None), "test_split_names", None)
        if names is None:
            return "test" if dataloader_idx == 0 else f"test_{dataloader_idx}"
        if dataloader_idx >= len(names):
            raise ValueError(f"test dataloader {dataloader_idx} has no name in datamodule.test_split_names={names}")
        return names[dataloader_idx]

    def on_train_epoch_end(self) -> None:
        self._log_epoch(["train"])
        self.pair_encoder.cache.flush()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(["val"])
        self.pair_encoder.cache.flush()

    def on_test_epoch_end(self) -> None:
        self._log_epoch([stage for stage in self._stages_to_log if stage not in ("train", "val")])
        self.pair_encoder.cache.flush()

    def on_predict_epoch_end(self) -> None:
        self.pair_encoder.cache.flush()

    def _log_epoch(self, stages: list[str]) -> None:
        # stages in first-seen order, the same on every rank, as each compute is a collective under DDP
        for stage in [stage for stage in self._stages_to_log if stage in stages]:
            metrics = self.stage_metrics[_metrics_key(stage)]
            values = {f"{stage}/{name}": value for name, value in metrics.compute().items()}
            shown = {name: values.pop(name) for name in (f"{stage}/loss", f"{stage}/router_acc")}
            # already reduced across processes by torchmetrics: sync_dist averages identical values
            self.log_dict(shown, prog_bar=True, sync_dist=True)
            self.log_dict(values, sync_dist=True)
            metrics.reset()
            self._stages_to_log.remove(stage)

    def on_fit_end(self) -> None:
        self.pair_encoder.cache.clear()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.pair_encoder.freeze_encoder:
            drop_frozen_weights(checkpoint, ENCODER_PREFIX, self.pair_encoder.encoder)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.pair_encoder.freeze_encoder:
            restore_frozen_weights(
                checkpoint, ENCODER_PREFIX, self.pair_encoder.encoder, self.hparams.encoder, "router head"
            )
