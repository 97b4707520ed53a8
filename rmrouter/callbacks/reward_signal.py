"""Whether the router's reward carries signal: in the simulated mode, how well a low DPO loss tells a right label."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from rmrouter.simulation.metrics import signal_auroc


class RewardSignal(Callback):
    """Logs `train/reward_auroc` every `window_steps` steps: the AUROC of `-L_DPO` (what every learning router's
    reward grows with) for "the routed label was right", over that window's trained pairs.

    The simulation knows the truth, so this answers from data whether the reward can teach the router anything: 0.5
    is no signal (at step 0 policy and reference are equal and every loss is log 2), 1 a perfect one. Needs the
    `labelling` and `losses` outputs of `OnlineDPOModule.training_step` (simulated mode); a live run logs nothing.
    Counts this rank's pairs.

    Args:
        window_steps: Steps per window.
    """

    def __init__(self, window_steps: int = 10) -> None:
        if window_steps < 1:
            raise ValueError(f"window_steps must be positive, got {window_steps}")
        self.window_steps = window_steps
        self._losses: list[torch.Tensor] = []
        self._right: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or outputs.get("labelling") is None or outputs.get("losses") is None:
            return
        losses, right = outputs["losses"].double(), outputs["labelling"][1].bool().cpu()
        trained = torch.isfinite(losses)
        self._losses.append(losses[trained])
        self._right.append(right[trained])
        if len(self._losses) >= self.window_steps:
            auroc = signal_auroc(torch.cat(self._losses), torch.cat(self._right))
            self._losses, self._right = [], []
            if auroc is not None:
                pl_module.log("train/reward_auroc", auroc, on_step=True, on_epoch=False, batch_size=1)
