"""Live online DPO (LoRA) under Lightning's FSDPStrategy on 2 CPU processes, rank 1 seeing only ties.

Run by `test_fsdp_cpu.py` in a subprocess: `python fsdp_cpu_run.py <tiny policy dir> <output dir>`. Lightning refuses
FSDP without a GPU, so a subclass of the strategy (its check tests the exact type) and a wrapper that puts FSDP units
on the CPU stand in; everything else (auto-wrap and activation checkpointing per decoder layer, use_orig_params,
the precision plugin's batch conversion) is the real FSDP path the paper's overlay takes on GPUs.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch
import torch.distributed.fsdp as fsdp
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import FSDPStrategy
from test_online_dpo import RM_NAMES, FakeJudge, FixedRouter, Prompts, make_module
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from rmrouter.data.prompt_datamodule import PromptDataModule


class CPUFSDPStrategy(FSDPStrategy):
    """Not `FSDPStrategy` itself, so Lightning's accelerator check lets it run on the CPU."""


class CPUFullyShardedDataParallel(fsdp.FullyShardedDataParallel):
    def __init__(self, *args, device_id=None, **kwargs):
        super().__init__(*args, device_id=torch.device("cpu"), **kwargs)


class TiesOnRankOne(FakeJudge):
    def margins(self, rm_index, pairs):
        margins = super().margins(rm_index, pairs)
        return torch.zeros_like(margins) if torch.distributed.get_rank() == 1 else margins


def main(policy: str, output: Path) -> None:
    fsdp.FullyShardedDataParallel = CPUFullyShardedDataParallel
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
    module = make_module(policy, lora=lora, max_new_tokens=6)
    module.fake_judge = TiesOnRankOne()
    strategy = CPUFSDPStrategy(
        auto_wrap_policy={LlamaDecoderLayer}, activation_checkpointing_policy={LlamaDecoderLayer},
        process_group_backend="gloo", timeout=datetime.timedelta(seconds=60), use_orig_params=True,
    )  # fmt: skip
    trainer = Trainer(
        max_steps=2, accelerator="cpu", devices=2, strategy=strategy, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, callbacks=[FixedRouter(RM_NAMES, 0)],
    )  # fmt: skip
    trainer.fit(module, datamodule=PromptDataModule(train=[Prompts(path="unused")], batch_size=2))
    metrics = {k: float(v) for k, v in trainer.logged_metrics.items() if k.startswith("train/")}
    result = {"step": trainer.global_step, **metrics}
    (output / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
