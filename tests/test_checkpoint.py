"""`last.ckpt` is the state of the latest epoch trained, not the last improvement: resume never repeats an epoch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from behaviour_helpers import write_behaviour
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from rmrouter.callbacks import ResumableCheckpoint
from rmrouter.cli import main
from rmrouter.modules.learned_reward import BradleyTerryRewardModule
from rmrouter.modules.offline_router import OfflineRouterModule

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 4  # BoringModel: 64 random rows, batch 2, limited below


class BestFirst(BoringModel):
    """Its monitored `val/score` is best in epoch 0 and worse every epoch after, whatever it learns."""

    def on_validation_epoch_end(self) -> None:
        self.log("val/score", -float(self.current_epoch))


def fit(checkpoint: ResumableCheckpoint, tmp_path: Path, epochs: int, ckpt_path: str | None = None) -> list[int]:
    """Fits `BestFirst` to `epochs` epochs; returns the epochs it trained."""
    trained: list[int] = []

    class Recording(BestFirst):
        def on_train_epoch_start(self) -> None:
            trained.append(self.current_epoch)

    trainer = Trainer(
        default_root_dir=tmp_path, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=epochs, limit_train_batches=STEPS_PER_EPOCH, limit_val_batches=1,
    )  # fmt: skip
    trainer.fit(Recording(), ckpt_path=ckpt_path)
    return trained


def monitored(cls: type, tmp_path: Path) -> ResumableCheckpoint:
    return cls(dirpath=tmp_path, filename="best", monitor="val/score", mode="max", save_top_k=1, save_last=True,
               enable_version_counter=False)  # fmt: skip


def saved(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, weights_only=False)
    return checkpoint["epoch"], checkpoint["global_step"]


def test_lightnings_last_ckpt_is_the_last_improvement(tmp_path):
    # the upstream behaviour the subclass exists for; when this fails, Lightning no longer does it
    fit(monitored(LightningModelCheckpoint, tmp_path), tmp_path, epochs=3)
    assert saved(tmp_path / "best.ckpt") == (0, STEPS_PER_EPOCH)
    assert saved(tmp_path / "last.ckpt") == (0, STEPS_PER_EPOCH)


def test_ours_saves_the_latest_epoch_as_last_and_the_best_as_best(tmp_path):
    fit(monitored(ResumableCheckpoint, tmp_path), tmp_path, epochs=3)
    assert saved(tmp_path / "best.ckpt") == (0, STEPS_PER_EPOCH)
    assert saved(tmp_path / "last.ckpt") == (2, 3 * STEPS_PER_EPOCH)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_resume_from_last_trains_no_epoch_twice(tmp_path):
    assert fit(monitored(ResumableCheckpoint, tmp_path), tmp_path, epochs=2) == [0, 1]
    assert fit(monitored(ResumableCheckpoint, tmp_path), tmp_path, epochs=4, ckpt_path="last") == [2, 3]
    assert saved(tmp_path / "last.ckpt") == (3, 4 * STEPS_PER_EPOCH)
    assert saved(tmp_path / "best.ckpt") == (0, STEPS_PER_EPOCH)


def test_with_no_dirpath_checkpoints_go_in_the_run_folder_and_resume_finds_them(tmp_path):
    # Lightning would write <logger dir>/checkpoints; `--ckpt_path last` is resolved before `setup`, so it must look
    # in the run's folder too, or a resume silently starts over
    assert fit(ResumableCheckpoint(save_top_k=0), tmp_path, epochs=2) == [0, 1]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]  # save_last on, no version suffix
    assert fit(ResumableCheckpoint(save_top_k=0), tmp_path, epochs=3, ckpt_path="last") == [2]
    assert saved(tmp_path / "last.ckpt") == (2, 3 * STEPS_PER_EPOCH)


@pytest.mark.parametrize("every_n_train_steps, saves", [(4, [4, 8]), (3, [3, 6, 8])])
def test_a_step_schedule_saves_on_its_steps_and_the_final_one(tmp_path, monkeypatch, every_n_train_steps, saves):
    # the online configs checkpoint every n steps with save_top_k 0: no save at epoch ends, one at the final step
    # when the schedule missed it (Lightning keeps the last scheduled step then, as the second fit shows)
    steps: list[int] = []
    real_save = Trainer.save_checkpoint
    monkeypatch.setattr(Trainer, "save_checkpoint", lambda self, *a, **k: (steps.append(self.global_step),
                                                                            real_save(self, *a, **k))[1])  # fmt: skip
    ours = ResumableCheckpoint(dirpath=tmp_path / "ours", every_n_train_steps=every_n_train_steps, save_top_k=0,
                           save_last=True)  # fmt: skip
    fit(ours, tmp_path / "ours", epochs=2)
    assert steps == saves and saved(tmp_path / "ours" / "last.ckpt")[1] == 2 * STEPS_PER_EPOCH
    theirs = LightningModelCheckpoint(dirpath=tmp_path / "theirs", every_n_train_steps=3, save_top_k=0, save_last=True)
    fit(theirs, tmp_path / "theirs", epochs=2)
    assert saved(tmp_path / "theirs" / "last.ckpt")[1] == 6


# ---- the shipped monitored configs, on tiny models -------------------------------------------------------------
# learning_rate 0 keeps the weights, so the monitored metric never improves after epoch 0: best.ckpt is epoch 0.


def record_epochs(monkeypatch, module: type[LightningModule]) -> list[int]:
    trained: list[int] = []
    monkeypatch.setattr(module, "on_train_epoch_start", lambda self: trained.append(self.current_epoch))
    return trained


def offline_router_fit(tiny_encoder_dir: str, epochs: int, *extra: str) -> None:
    main(["fit", "--config", str(ROOT / "configs" / "offline_router.yaml"), "--model.init_args.encoder",
          tiny_encoder_dir, "--model.init_args.learning_rate", "0", "--trainer.max_epochs", str(epochs),
          "--data.init_args.batch_size", "8", "--trainer.enable_progress_bar", "false", *extra])  # fmt: skip


def learned_rm_fit(tiny_encoder_dir: str, limits: Path, epochs: int, *extra: str) -> None:
    main(["fit", "--config", str(ROOT / "configs" / "learned_rm" / "safety.yaml"), "--config", str(limits),
          "--model.init_args.encoder", tiny_encoder_dir, "--model.init_args.learning_rate", "0",
          "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false", *extra])  # fmt: skip


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs write under ./checkpoints and ./docs
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    return tmp_path


def test_offline_router_config_last_is_the_latest_epoch_and_resume_repeats_nothing(workdir, monkeypatch,
                                                                                   tiny_encoder_dir):  # fmt: skip
    write_behaviour(workdir / "checkpoints" / "behaviour" / "default.jsonl")
    trained = record_epochs(monkeypatch, OfflineRouterModule)
    folder = workdir / "checkpoints" / "offline_router"
    offline_router_fit(tiny_encoder_dir, 2)
    best_epoch, steps = saved(folder / "best.ckpt")
    assert best_epoch == 0 and saved(folder / "last.ckpt") == (1, 2 * steps)
    trained.clear()
    offline_router_fit(tiny_encoder_dir, 4, "--ckpt_path", "last")
    assert trained == [2, 3]
    assert saved(folder / "last.ckpt") == (3, 4 * steps) and saved(folder / "best.ckpt") == (0, steps)


def test_learned_rm_config_last_is_the_latest_epoch_and_resume_repeats_nothing(workdir, monkeypatch,
                                                                               tiny_encoder_dir):  # fmt: skip
    config = yaml.safe_load((ROOT / "configs" / "learned_rm" / "safety.yaml").read_text())
    for side, limit in (("train", 16), ("val", 8)):
        for source in config["data"]["init_args"][side]:
            source["init_args"]["limit"] = limit
    limits = workdir / "limited.yaml"
    limits.write_text(yaml.safe_dump({"data": config["data"]}))
    trained = record_epochs(monkeypatch, BradleyTerryRewardModule)
    folder = workdir / "checkpoints" / "learned_rm" / "safety"
    learned_rm_fit(tiny_encoder_dir, limits, 2)
    best_epoch, steps = saved(folder / "best.ckpt")
    assert best_epoch == 0 and saved(folder / "last.ckpt") == (1, 2 * steps)
    trained.clear()
    learned_rm_fit(tiny_encoder_dir, limits, 3, "--ckpt_path", "last")
    assert trained == [2]
    assert saved(folder / "last.ckpt") == (2, 3 * steps) and saved(folder / "best.ckpt") == (0, steps)


def test_checkpoint_states_are_read_under_the_new_name_and_the_old_one():
    from rmrouter.callbacks.checkpoint import checkpoint_callback_states

    checkpoint = {
        "callbacks": {
            "ResumableCheckpoint{'monitor': 'val/acc'}": {"best_model_score": 0.9},
            "ModelCheckpoint{'monitor': None}": {"best_model_score": None},  # Lightning's, or ours before the rename
            "RouterPriorWriter": {"path": "prior.pt"},
        }
    }
    states = checkpoint_callback_states(checkpoint)
    assert [state["best_model_score"] for state in states] == [0.9, None]
    assert checkpoint_callback_states({}) == []
