"""Checkpoint files that a kill never leaves half-written: temp file in the same folder, fsync, `os.replace`.

Lightning's `TorchCheckpointIO` (2.6) saves through `_atomic_save`: it serialises into memory, then writes through an
fsspec transaction, whose local file is a `tempfile.mkstemp()` in the *system* temp folder moved over the target by
`shutil.move` at commit. Where that folder is another file system than the checkpoints' (a tmpfs `/tmp`, a scratch
disk), the move is a copy into `last.ckpt` itself, so a kill during it leaves a torn `last.ckpt` and the previous
one is gone; nothing is fsynced, so a power cut may lose even a renamed file; and a kill at any point leaves a
checkpoint-sized orphan in `/tmp`. `AtomicCheckpointIO` writes next to the target instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

PARTIAL = ".partial"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` such that `path` holds either its previous content or all of `obj`, never a part.

    The bytes go to a hidden `.<name>.<unique>.partial` file in `path`'s folder, are fsynced, and the file is renamed
    over `path` (`os.replace`, atomic within one file system); the folder is fsynced so the rename itself survives a
    power cut. A failed write removes its temporary file; one that a kill left behind is removed by the next
    successful write of the same `path`. The new file's permissions follow the umask, as a plain `open` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL}")
    try:
        with open(partial, "xb") as handle:
            _write_and_sync(obj, handle)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    _fsync_folder(path.parent)
    for orphan in path.parent.glob(f".{path.name}.*{PARTIAL}"):  # left by a killed writer of this path
        with contextlib.suppress(FileNotFoundError):
            orphan.unlink()


def _write_and_sync(obj: Any, handle: IO[bytes]) -> None:
    # streamed into the file rather than through an in-memory copy, which would double a large checkpoint's memory
    torch.save(obj, handle)
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems (and Windows) cannot open or fsync a folder
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` with local saves made by `atomic_torch_save`; remote URLs (`s3://`, ...) keep
    Lightning's own path. The project's `ResumableCheckpoint` installs it when a trainer has the default checkpoint
    IO, so every shipped config writes this way; give `Trainer(plugins=[AtomicCheckpointIO()])` to a trainer without
    it."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)


def install_atomic_checkpoint_io(trainer: Trainer) -> None:
    """Gives `trainer` an `AtomicCheckpointIO` where it has Lightning's default IO; a chosen one is kept."""
    strategy = trainer.strategy
    current = strategy._checkpoint_io  # None until first used: the getter would create the default
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
