"""A reward model trained by the project itself: a `BradleyTerryRewardModule` checkpoint served as an RM."""

from __future__ import annotations

from pathlib import Path

import torch

from rmrouter.data.records import Message
from rmrouter.modules.learned_reward import BradleyTerryRewardModule
from rmrouter.reward_models.base import RewardModel

DEFAULT_TRAIN_CONFIG = "configs/learned_rm/safety.yaml"

# Per frozen encoder (see `LearnedRewardModel._sharing_key`): the texts it embedded last and their embeddings.
_LAST_EMBEDDINGS: dict[tuple, tuple[list[str], torch.Tensor]] = {}


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
        texts = self.module._texts(prompts, responses)
        with torch.no_grad():
            return self.module.head(self._embeddings(texts)).squeeze(-1)

    def _embeddings(self, texts: list[str]) -> torch.Tensor:
        """The encoder's embeddings of `texts` (called under `no_grad`), in chunks of `batch_size`. The last ones are
        kept for the learned RMs whose frozen encoder is the same (e.g. the default pool's three MiniLM heads): a pool
        scores one batch with RM after RM, so the second and third reuse the first's instead of running it again."""
        key = self._sharing_key()
        last = _LAST_EMBEDDINGS.get(key) if key is not None else None
        if last is not None and last[0] == texts:
            return last[1]
        chunks = [
            self.module.embed(texts[start : start + self.batch_size]) for start in range(0, len(texts), self.batch_size)
        ]
        embeddings = torch.cat(chunks)
        if key is not None:
            _LAST_EMBEDDINGS[key] = (texts, embeddings)
        return embeddings

    def _sharing_key(self) -> tuple | None:
        """What makes two frozen encoders the same function: the weights, rebuilt from the encoder's name when the
        checkpoint is loaded, and every setting of the encoding. None for a fine-tuned encoder, never shared."""
        if not self.module.freeze_encoder:
            return None
        encoder = self.module.encoder
        parameter = next(encoder.parameters())
        return (encoder.name, encoder.pooling, encoder.max_length, encoder.tokenizer.truncation_side, encoder.normalize,
                encoder.batch_size, parameter.dtype, parameter.device, self.batch_size)  # fmt: skip

    def extra_repr(self) -> str:
        return f"name={self.name!r}, checkpoint={self.checkpoint!r}"
