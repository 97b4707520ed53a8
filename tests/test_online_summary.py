"""The closing summary of an online DPO run: its numbers come from the run's own steps, router and outputs."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from test_online_dpo import RM_NAMES, FixedRouter, Prompts, make_module

from rmrouter.callbacks import OnlineSummary
from rmrouter.callbacks.online_summary import _shown, thirds
from rmrouter.data.prompt_datamodule import PromptDataModule


def test_thirds_are_means_of_the_first_and_last_third_of_the_finite_values():
    assert thirds([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.5, 5.5)
    assert thirds([2.0, math.nan, 4.0]) == (2.0, 4.0)  # a step without the value does not count
    assert all(math.isnan(v) for v in thirds([math.nan]))


def test_paths_inside_the_working_directory_are_shown_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _shown(str(tmp_path / "checkpoints" / "online")) == "checkpoints/online"
    assert _shown("/elsewhere/logs") == "/elsewhere/logs"


def test_summary_reports_the_run_and_survives_a_resume(tiny_causal_lm_dir, tmp_path):
    summary = OnlineSummary(path=str(tmp_path / "summary.md"), title="tiny run")
    router = FixedRouter(RM_NAMES, 1)
    trainer = Trainer(
        max_steps=3, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path, name="", version="tb"),
        callbacks=[summary, ModelCheckpoint(dirpath=tmp_path / "ckpt")],
    )  # fmt: skip
    torch.manual_seed(0)
    trainer.fit(
        make_module(tiny_causal_lm_dir, router=router),
        datamodule=PromptDataModule(train=[Prompts(path="u")], batch_size=2),
    )

    pairs = summary.history["train/pairs"]
    assert len(pairs) == 3 and sum(pairs) > 0
    assert summary.history["train/candidate_pairs"] == [6.0, 6.0, 6.0]  # 2 prompts x 3 pairs of 3 samples
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("## tiny run\n")
    assert "- steps: 3 in " in text and f"- pairs trained: {int(sum(pairs))}\n" in text
    assert "18 pairs routed, 18 RM calls (1.00 per pair)" in text
    assert "| right | 0.0 % |" in text and "| wrong | 100.0 % |" in text
    assert summary.routed == {"chat": [0, 18]}
    assert "| prompt domain | pairs | right | wrong |" in text and "| chat | 18 | 0 % | 100 % |" in text
    first, last = thirds(summary.history["train/dpo_loss"])
    assert f"| DPO loss (`train/dpo_loss`) | {first:.4g} | {last:.4g} |" in text
    assert f"`{tmp_path / 'tb'}`" in text and f"`{tmp_path / 'ckpt'}`" in text  # outside the working dir

    restored = OnlineSummary()
    restored.load_state_dict(summary.state_dict())
    assert restored.history == summary.history and restored.routed == summary.routed
    assert restored.seconds == summary.seconds > 0
