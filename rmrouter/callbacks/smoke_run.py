"""A smoke run (`--trainer.fast_dev_run`) leaves no file behind: it must never replace what a real run wrote.

Lightning turns checkpointing and loggers off under `fast_dev_run`, but two things still write: its own
`ModelCheckpoint`, which saves `last.ckpt` in `on_train_end` whatever the mode (Lightning 2.6: that hook does not ask
`_should_skip_saving_checkpoint`, the check every other save goes through), and callbacks of our own that write an
artifact when a run ends. A one-batch smoke test of a shipped config, pointed at the same folders as the real run,
would then replace a trained router's `last.ckpt` and `prior.pt` or a committed report with one batch's worth. Every
artifact writer of `rmrouter.callbacks` asks `writes_artifacts` first, and the shipped configs checkpoint with
`rmrouter.callbacks.checkpoint.ResumableCheckpoint`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Trainer

log = logging.getLogger(__name__)


def writes_artifacts(trainer: Trainer, path: str | Path) -> bool:
    """Whether a callback may write `path`: not under `fast_dev_run`, which logs that it is left alone."""
    if not trainer.fast_dev_run:
        return True
    log.info("fast_dev_run: not writing %s (a smoke run leaves the real run's files as they are)", path)
    return False
