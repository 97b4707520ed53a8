"""A reward model the project trains itself: a Bradley-Terry reward head on a (usually frozen) text encoder.

`reward(x, y) = head(encoder(text(x, y)))` with `text(x, y) = as_text(x) + "\\n\\nAssistant: " + y`: the prompt
as plain text (see `rmrouter.data.records.as_text`), then the response as the next Assistant turn. Long texts are
cut from the left, so the response, which is what differs within a pair, is always kept whole (up to `max_length`
tokens) and only the oldest part of the prompt is dropped.

With a frozen encoder the checkpoint holds the head alone: the encoder is rebuilt from its name on load and checked
against a fingerprint saved with the head, so a head is never silently paired with other encoder weights.
Lightning warns at the start of such a fit that modules are in eval mode: the frozen encoder's, on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jsonargparse.typing import NonNegativeFloat
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

from rmrouter.data.records import Prompt, as_text
from rmrouter.losses import bradley_terry_loss, pair_accuracy
from rmrouter.models.embedding_store import (
    EmbeddingCache,
    drop_frozen_weights,
    restore_frozen_weights,
    weight_fingerprint,
)
from rmrouter.models.encoder import Pooling, TextEncoder

RESPONSE_SEPARATOR = "\n\nAssistant: "
ENCODER_PREFIX = "encoder."
STAGES = ("train", "val")
METRICS = ("loss", "pair_acc")


def compose_text(prompt: Prompt, response: str) -> str:
    """The encoder's input for one (prompt, response) pair."""
    return as_text(prompt) + RESPONSE_SEPARATOR + response


class BradleyTerryRewardModule(LightningModule):
    """Fits a scalar reward to preference pairs with the Bradley-Terry loss.

    Batches are those of `PreferenceDataModule`: dicts with lists `prompt`, `chosen` and `rejected`.

    Args:
        encoder: The text encoder's model name (`all-minilm-l6-v2`, a folder, ...), resolved by the model store.
        pooling: How token states become one vector: `mean` or `last_token`.
        normalize_embeddings: Scale embeddings to unit length before the head.
        max_length: Tokens per prompt+response text; longer texts lose the start of the prompt.
        freeze_encoder: Train the head alone: the encoder runs in eval mode without gradients, stays out of the
            optimizer, and is left out of checkpoints (rebuilt from `encoder` on load).
        head_hidden: Width of the head's hidden layer; 0 makes the head a single linear layer.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(
        self,
        encoder: str,
        pooling: Pooling,
        normalize_embeddings: bool,
        max_length: int,
        freeze_encoder: bool,
        head_hidden: int,
        learning_rate: NonNegativeFloat,
        weight_decay: NonNegativeFloat,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.freeze_encoder = freeze_encoder
        self.encoder = TextEncoder(encoder, pooling, max_length, truncation_side="left", normalize=normalize_embeddings)
        width = self.encoder.hidden_size
        if head_hidden > 0:
            self.head = nn.Sequential(nn.Linear(width, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        else:
            self.head = nn.Linear(width, 1)
        self.encoder.requires_grad_(not freeze_encoder)
        # from_pretrained returns eval mode; a fine-tuned encoder needs dropout like any trained layer
        self.encoder.train(not freeze_encoder)
        # Frozen-encoder embeddings of the texts seen in this fit, keyed by text: a frozen encoder in eval mode is a
        # fixed function, so every epoch after the first trains the head without running the encoder again.
        self._embedding_cache = EmbeddingCache()
        # keyed `<stage>_<metric>`: a bare "train" key would shadow nn.Module.train
        self.metrics = nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in STAGES for name in METRICS})

    def train(self, mode: bool = True) -> BradleyTerryRewardModule:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()  # a frozen encoder is a fixed feature map: no dropout, in training or not
        return self

    def embed(self, texts: list[str]) -> Tensor:
        if self.freeze_encoder:
            with torch.no_grad():
                return self.encoder.encode(texts)
        return self.encoder.encode(texts)

    def _embed_cached(self, texts: list[str]) -> Tensor:
        if not self.freeze_encoder:
            return self.embed(texts)
        return self._embedding_cache.lookup(texts, self.embed)

    def on_fit_end(self) -> None:
        self._embedding_cache.clear()

    def reward(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        """`[len(responses)]` rewards; prompts are plain text or chat messages."""
        return self.head(self.embed(self._texts(prompts, responses))).squeeze(-1)

    @staticmethod
    def _texts(prompts: Sequence[Prompt], responses: Sequence[str]) -> list[str]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts for {len(responses)} responses")
        return [compose_text(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]

    def forward(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> Tensor:
        return self.reward(prompts, responses)

    def _common_step(self, batch: dict[str, list[str]], stage: str) -> Tensor:
        prompts, size = batch["prompt"], len(batch["chosen"])
        # one encoder pass over both sides of every pair
        texts = self._texts(list(prompts) * 2, list(batch["chosen"]) + list(batch["rejected"]))
        scores = self.head(self._embed_cached(texts)).squeeze(-1)
        chosen, rejected = scores[:size], scores[size:]
        loss = bradley_terry_loss(chosen, rejected)
        # weighted by pairs, so epoch values are exact means over pairs whatever the last batch's size
        values = {"loss": loss.detach(), "pair_acc": pair_accuracy(chosen.detach(), rejected.detach())}
        for name, value in values.items():
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(value, weight=size)
            self.log(
                f"{stage}/{name}", metric, on_epoch=True, on_step=False, prog_bar=name == "pair_acc", batch_size=size
            )
        return loss

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> Tensor:
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        parameters = [parameter for parameter in self.trainer.model.parameters() if parameter.requires_grad]
        return torch.optim.AdamW(parameters, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)

    def encoder_fingerprint(self) -> float:
        """A cheap checksum of the encoder weights: the float64 sum of their absolute values."""
        return weight_fingerprint(self.encoder)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.freeze_encoder:
            drop_frozen_weights(checkpoint, ENCODER_PREFIX, self.encoder)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.freeze_encoder:
            # the encoder was just rebuilt from its name; its weights complete the head-only state dict
            restore_frozen_weights(checkpoint, ENCODER_PREFIX, self.encoder, self.hparams.encoder, "reward head")
