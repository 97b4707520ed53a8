"""A reward model trained by the project itself: a `BradleyTerryRewardModule` checkpoint served as an RM."""

from __future__ import annotations

from pathlib import Path

import torch

from rmrouter.data.records import Message
from rmrouter.modules.learned_reward import BradleyTerryRewardModule
from rmrouter.reward_models.base import RewardModel

DEFAULT_TRAIN_CONFIG = "configs/learned_rm/safety.yaml"


def train_command(checkpoint: Path) -> str:
    """The command that writes `checkpoint`: `checkpoints/learned_rm/<domain>/...` comes from
    `configs/learned_rm/<domain>.yaml` (the layout the shipped configs use); other paths get the safety example."""
    parts = checkpoint.parts
    config = DEFAULT_TRAIN_CONFIG
    if "learned_rm" in parts[:-2]:
        domain = parts[parts.index("learned_rm") + 1]
        config = f"configs/learned_rm/{domain}.yaml"
    return f"python cli.py fit --config {config}"


class LearnedRewardModel(RewardModel):
    """Scores with the reward head of a checkpoint written by `python cli.py fit --config configs/learned_rm/...`.

    Loading is `weights_only`: the checkpoint holds tensors and plain hyperparameters, and the encoder weights of a
    frozen-encoder run come from the encoder's name, not from the file.

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
        checkpoint: A `BradleyTerryRewardModule` checkpoint, e.g. `checkpoints/learned_rm/safety/best.ckpt`.
        batch_size: Rows per forward pass; `score` takes any number of rows.
    """

    def __init__(self, name: str, checkpoint: str, batch_size: int = 32):
        super().__init__(name)
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: learned reward model checkpoint '{path}' does not exist (looked in {Path.cwd()}); "
                f"train it first with `{train_command(path)}`"
            )
        self.checkpoint = str(path)
        self.batch_size = batch_size
        self.module = BradleyTerryRewardModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
        self.module.eval()

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        chunks = [
            self.module.reward(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            for start in range(0, len(responses), self.batch_size)
        ]
        return torch.cat(chunks)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, checkpoint={self.checkpoint!r}"
