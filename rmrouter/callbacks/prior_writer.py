"""Writes the offline router's prior artifact (`RouterPrior`) when a fit ends."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from rmrouter.callbacks.smoke_run import writes_artifacts
from rmrouter.routers.prior import RouterPrior

log = logging.getLogger(__name__)


class RouterPriorWriter(Callback):
    """At the end of `fit`, saves `pl_module.prior_state()` as a `RouterPrior` file for the online router.

    The prior holds the weights the module ends the fit with (those of `last.ckpt`). A fine-tuned encoder is saved
    beside it (`<stem>-encoder/`, a `from_pretrained` folder the prior names). Only rank zero writes.

    Args:
        path: Where the prior goes, e.g. `checkpoints/offline_router/prior.pt`.
    """

    def __init__(self, path: str):
        self.path = Path(path)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not writes_artifacts(trainer, self.path):
            return
        metadata = {
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            **{key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")},
        }
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "path"):
            metadata["behaviour_file"] = str(datamodule.path)
        encoder_dir = self.path.parent / f"{self.path.stem}-encoder"
        prior = RouterPrior(**pl_module.prior_state(encoder_dir=encoder_dir), metadata=metadata)
        prior.save(self.path)
        log.info("wrote the router prior to %s", self.path)
