"""`ResumableCheckpoint`: Lightning's `ModelCheckpoint` whose `last.ckpt` is the latest epoch, never a smoke run's,
and written atomically in the run's folder, so `--ckpt_path last` always resumes where a run stopped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol, get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from rmrouter.callbacks.atomic_checkpoint import install_atomic_checkpoint_io
from rmrouter.callbacks.smoke_run import writes_artifacts


class ResumableCheckpoint(LightningModelCheckpoint):
    """Lightning's `ModelCheckpoint` (same arguments; `save_last` on and no `-v1` version suffixes by default), with
    these changes.

    - With no `dirpath`, checkpoints go in the run's folder, `trainer.default_root_dir` (`rmrouter.callbacks.
      run_folder`), beside its logs and reports, where Lightning would use `<logger dir>/checkpoints`.

    - `last.ckpt` is the state at the end of the latest epoch trained, whatever the monitor says. Lightning 2.6 writes
      it only in a step that also saved a top-k checkpoint ("Only save last checkpoint if a checkpoint was actually
      saved in this step", in `on_train_epoch_end` and `on_validation_end`), and its `on_train_end` skips the save once
      any last checkpoint exists; with a `monitor` and `save_top_k: 1`, `last.ckpt` was the last *improvement*, so
      `fit --ckpt_path last` went back to that epoch and trained the rest again. Here each epoch-end save that Lightning
      leaves out is made. A subclass rather than a second, monitor-free callback: one YAML entry per config, and
      `best.ckpt`/`last.ckpt` keep coming from the one callback that `--ckpt_path best|last` resolves through. It
      relies on Lightning's private `_save_last_checkpoint` and `_last_global_step_saved` (the package pins
      `lightning<2.7`); `tests/test_checkpoint.py` pins the upstream behaviour, so an upgrade that changes it is seen.
    - At the end of `fit`, `last.ckpt` is saved once more if the final step was not saved yet (a step schedule such as
      the online configs' `every_n_train_steps: 4` with `max_steps` not a multiple of it), where Lightning keeps the
      last scheduled one.
    - A `fast_dev_run` saves no `last.ckpt` either.
    - Every checkpoint is written atomically (`AtomicCheckpointIO`, installed in `setup` when the trainer has
      Lightning's default IO): a run killed while saving leaves the previous `last.ckpt` whole and loadable.
    """

    def __init__(self, *, save_last: bool | None = True, enable_version_counter: bool = False, **kwargs: Any):
        super().__init__(save_last=save_last, enable_version_counter=enable_version_counter, **kwargs)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        install_atomic_checkpoint_io(trainer)
        self._default_to_run_folder(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        # `--ckpt_path last` is resolved before `setup`: the folder must be known here too
        self._default_to_run_folder(trainer)
        return super()._find_last_checkpoints(trainer)

    def _default_to_run_folder(self, trainer: Trainer) -> None:
        if self.dirpath is None:  # as Lightning treats a `dirpath` it is given: local folders made absolute
            folder = str(trainer.default_root_dir)
            self.dirpath = os.path.realpath(folder) if _is_local_file_protocol(folder) else folder
            self._fs = get_filesystem(self.dirpath)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            self._save_last_of_epoch(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_of_epoch(trainer)

    def _save_last_of_epoch(self, trainer: Trainer) -> None:
        epoch_schedule = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        saved_this_step = self._last_global_step_saved == trainer.global_step
        if self.save_last and epoch_schedule and not saved_this_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = Path(self.dirpath or ".") / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if self.save_last and not writes_artifacts(trainer, last):
            return
        super().on_train_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# Checkpoint state keys start with the callback's class name: ours, and Lightning's (or ours before its rename).
CHECKPOINT_CALLBACKS = ("ResumableCheckpoint", "ModelCheckpoint")


def checkpoint_callback_states(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The states a checkpoint file holds of its model-checkpoint callbacks (best score, monitor, paths), in order."""
    states = (checkpoint.get("callbacks") or {}).items()
    return [
        state for key, state in states if str(key).split("{", 1)[0] in CHECKPOINT_CALLBACKS and isinstance(state, dict)
    ]
