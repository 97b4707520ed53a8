"""A live online DPO run of the shipped config through the CLI, on the tiny Llama and a pool of two length RMs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RM_NAMES = ["length", "words"]
POOL = {
    "class_path": "rmrouter.reward_models.RewardModelPool",
    "init_args": {
        "reward_models": [
            {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "length"}},
            {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "words", "unit": "words"}},
        ]
    },
}


def write_online_config(folder: Path, policy: str) -> Path:
    """configs/online/live.yaml on `policy`, two cheap RMs and a random router, 2 steps of 4 prompts in float32."""
    (folder / "pool.yaml").write_text(yaml.safe_dump(POOL))
    online = yaml.safe_load((CONFIGS / "online" / "live.yaml").read_text())
    online["model"]["init_args"].update(
        policy=policy, pool="pool.yaml", num_samples=4, pairing="all", max_new_tokens=6, log_text_every_n_steps=1
    )
    online["model"]["init_args"]["optimizer"]["init_args"]["lr"] = 0.05  # a LoRA that visibly moves the logits
    online["model"]["init_args"]["router"] = {
        "class_path": "rmrouter.routers.baseline_routers.RandomRouter",
        "init_args": {"rm_names": RM_NAMES, "seed": 0},
    }
    online["trainer"].update(max_steps=2, enable_progress_bar=False, precision="32-true", accelerator="cpu")
    for source in online["data"]["init_args"]["train"]:
        source["init_args"]["limit"] = 2
    path = folder / "online.yaml"
    path.write_text(yaml.safe_dump(online))
    return path


def run_online(folder: Path, policy: str, *overlays: str):
    """Fits the config of `write_online_config` in `folder` (its outputs under `folder/checkpoints/online/live`) and
    returns the LightningCLI object (`.model`, `.trainer`)."""
    from rmrouter.commands import RMRouterCLI, prepare_process

    config = write_online_config(folder, policy)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["cli.py"])
        prepare_process()
        args = ["fit", "--config", str(config), *[a for overlay in overlays for a in ("--config", overlay)]]
        return RMRouterCLI(args=args)
