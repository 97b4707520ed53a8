"""A test-only callback, importable by the subprocesses of a DDP run: each rank saves its router's state at the end."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from rmrouter.routers.base import Router


class DumpRouterState(Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        (router,) = [callback for callback in trainer.callbacks if isinstance(callback, Router)]
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(router.state_dict(), self.folder / f"rank{trainer.global_rank}.pt")
