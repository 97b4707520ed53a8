"""Keeps a run's resolved config inside each checkpoint it writes, so what reads the checkpoint later (`export`'s model
card) describes that run, whatever a later run writes into the same folder."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

CHECKPOINT_KEY = "rmrouter_run_config"


class RunConfigInCheckpoint(Callback):
    """Adds the run's config (the YAML LightningCLI saves as `config.yaml`) to every checkpoint as plain text, which
    `torch.load(weights_only=True)` reads. `RMRouterCLI` adds it to every run it starts.

    Args:
        config_yaml: The resolved config of the run.
    """

    def __init__(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.config_yaml
