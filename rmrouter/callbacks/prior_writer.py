"""Writes the offline router's prior artifact when a fit ends, from the checkpoint it selected: a `RouterPrior` for the
paper's router, a `TaskPrior` for the task-aware one (each module's `router_prior`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from rmrouter.callbacks.checkpoint import checkpoint_callback_states
from rmrouter.callbacks.run_folder import in_run_folder
from rmrouter.callbacks.smoke_run import writes_artifacts
from rmrouter.routers.calibration import fit_prior_scale

log = logging.getLogger(__name__)


class RouterPriorWriter(Callback):
    """At the end of `fit`, saves the selected router's prior file (its module's `router_prior`) for the online router.

    The prior holds exactly the weights of the checkpoint that model selection kept: the trainer's monitored
    `ModelCheckpoint` best (`best.ckpt` in the shipped config, the one `test` and the offline report evaluate), not
    the weights the fit ends with, which may be many epochs past it. Its metadata names that checkpoint, its epoch and
    step, the monitored metric and its value, and, for the paper's router, `reward_scale`: the factor that puts its BT
    scores on the online reward's scale, fitted on the validation split (`rmrouter.routers.calibration`;
    BayesianRouter's `prior_scale: calibrated`). Without a monitored checkpoint (checkpointing off, or no `monitor`),
    the final weights are saved and the metadata says `selected: final`. A fine-tuned encoder is saved beside the prior
    (`<stem>-encoder/`, a `from_pretrained` folder the prior names). Only rank zero writes.

    Args:
        path: Where the prior goes; None: `prior.pt` in the run's folder (`trainer.default_root_dir`).
    """

    FILE_NAME = "prior.pt"

    def __init__(self, path: str | None = None):
        self.path = None if path is None else Path(path)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = in_run_folder(trainer, self.path, self.FILE_NAME)
        if trainer.sanity_checking or not trainer.is_global_zero or not writes_artifacts(trainer, path):
            return
        selected, metadata = selected_module(trainer, pl_module)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "path"):
            metadata["behaviour_file"] = str(datamodule.path)
        scale = reward_scale(selected, datamodule) if hasattr(selected, "router_scores") else None
        if scale is not None:
            metadata["reward_scale"] = scale
        encoder_dir = path.parent / f"{path.stem}-encoder"
        selected.router_prior(metadata, encoder_dir=encoder_dir).save(path)
        log.info("wrote the router prior to %s (%s)", path, metadata["selected"])


def selected_module(trainer: Trainer, pl_module: LightningModule) -> tuple[LightningModule, dict[str, Any]]:
    """The module with the weights model selection kept, and metadata that says which they are."""
    checkpoint = trainer.checkpoint_callback
    monitored = isinstance(checkpoint, ModelCheckpoint) and checkpoint.monitor is not None
    if not monitored or not checkpoint.best_model_path:
        log.warning("no monitored best checkpoint: the router prior holds the weights the fit ended with")
        return pl_module, {"selected": "final", "epoch": trainer.current_epoch, "global_step": trainer.global_step}
    best = own_best(checkpoint)
    state = torch.load(best, map_location="cpu", weights_only=True)
    selected = type(pl_module).load_from_checkpoint(best, map_location="cpu", weights_only=True)
    metadata = {"selected": str(best), "epoch": int(state["epoch"]), "global_step": int(state["global_step"]),
                "monitor": checkpoint.monitor}  # fmt: skip
    score = checkpoint.best_model_score if checkpoint.best_model_score is not None else saved_best_score(state)
    if score is not None:
        metadata[checkpoint.monitor] = float(score)
    return selected, metadata


def own_best(checkpoint: ModelCheckpoint) -> Path:
    """The monitored best checkpoint in this run's own folder (`dirpath`).

    A run resumed in a copied or moved folder restores the path of its old folder's best checkpoint, which may since
    hold another run's; the file of that name in this run's folder is the one its own selection kept.

    Raises:
        FileNotFoundError: This run's folder has no such file (one line naming both paths).
    """
    best = Path(checkpoint.best_model_path)
    if checkpoint.dirpath is None:
        own = best
    else:
        own = Path(checkpoint.dirpath) / best.name
        if best.resolve() != own.resolve():
            log.info("the restored best checkpoint %s is another folder's; this run's own is %s", best, own)
    if not own.is_file():
        raise FileNotFoundError(
            f"the monitored best checkpoint {own} is missing (the run's selection named {best}): restore it, or "
            "refit; the prior is written from the checkpoint model selection kept, never from other weights"
        )
    return own


def saved_best_score(state: dict[str, Any]) -> float | None:
    """The monitored best score a checkpoint file saved with its checkpoint callback's state, if any."""
    for value in checkpoint_callback_states(state):
        if value.get("best_model_score") is not None:
            return float(value["best_model_score"])
    return None


def reward_scale(module: LightningModule, datamodule: Any) -> float | None:
    """`fit_prior_scale` of the selected router's scores on the validation split; None (logged) where it cannot be."""
    splits = getattr(datamodule, "splits", None) or {}
    val = splits.get("val")
    if val is None or len(val) == 0 or not hasattr(module, "router_scores"):
        log.warning("no validation rows: the router prior gets no reward_scale (prior_scale: calibrated needs one)")
        return None
    pairs = [record.pair for record in val.records]
    was_training = module.training
    module.eval()
    try:
        scores = module.router_scores([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])
    finally:
        module.train(was_training)
    try:
        return fit_prior_scale(scores.detach().cpu(), val.agree.bool(), val.eligible)
    except ValueError as error:
        log.warning("the router prior gets no reward_scale: %s", error)
        return None
