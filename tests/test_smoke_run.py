"""A fast_dev_run writes no checkpoint: Lightning's ModelCheckpoint still saves last.ckpt then, ours does not."""

from __future__ import annotations

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from rmrouter.callbacks import ResumableCheckpoint


def fit(tmp_path, checkpoint, **trainer_args) -> None:
    trainer = Trainer(default_root_dir=tmp_path, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                      enable_model_summary=False, **trainer_args)  # fmt: skip
    trainer.fit(BoringModel())


def test_lightnings_checkpoint_saves_last_in_a_fast_dev_run(tmp_path):
    # the upstream behaviour our subclass exists for; when this fails, Lightning no longer does it
    fit(tmp_path, LightningModelCheckpoint(dirpath=tmp_path, save_last=True), fast_dev_run=True)
    assert (tmp_path / "last.ckpt").is_file()


def test_ours_saves_nothing_in_a_fast_dev_run(tmp_path, caplog):
    with caplog.at_level("INFO", logger="rmrouter.callbacks.smoke_run"):
        fit(tmp_path, ResumableCheckpoint(dirpath=tmp_path, save_last=True), fast_dev_run=True)
    assert list(tmp_path.iterdir()) == []
    assert f"not writing {tmp_path / 'last.ckpt'}" in caplog.text


@pytest.mark.parametrize("save_last", [True, False])
def test_ours_saves_as_lightnings_in_a_real_run(tmp_path, save_last):
    fit(tmp_path / "ours", ResumableCheckpoint(dirpath=tmp_path / "ours", save_last=save_last), max_steps=3)
    fit(tmp_path / "theirs", LightningModelCheckpoint(dirpath=tmp_path / "theirs", save_last=save_last), max_steps=3)
    ours = sorted(path.name for path in (tmp_path / "ours").iterdir())
    assert ours == sorted(path.name for path in (tmp_path / "theirs").iterdir())
    assert ("last.ckpt" in ours) is save_last and len(ours) == 1 + save_last
