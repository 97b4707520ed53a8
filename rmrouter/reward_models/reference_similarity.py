"""A reference-based reward model: how close the response is in meaning to a reference answer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmrouter.data.records import Message
from rmrouter.reward_models._hf import HFRewardModel, length_sorted_chunks, pad_right


class ReferenceSimilarityRewardModel(HFRewardModel):
    """Cosine similarity of sentence embeddings of the response and the reference; abstains without a reference.

    Embeddings follow sentence-transformers' all-MiniLM-L6-v2 recipe: the encoder's last hidden states averaged over
    real (attention-masked) tokens, then L2-normalised. Texts longer than `max_length` tokens keep their beginning, as
    sentence-transformers does. The prompt is not used.

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
        model: A packaged model name, a local folder or a Hugging Face id of an encoder (`AutoModel`).
        batch_size: Texts per forward pass; `score` takes any number of rows.
        max_length: Most tokens per text (all-MiniLM-L6-v2 was trained with 256).
        dtype: Weights' dtype, e.g. `bfloat16` on GPUs; None keeps the checkpoint's default (float32 in transformers).
    """

    needs_reference = True

    def __init__(
        self,
        name: str,
        model: str = "all-minilm-l6-v2",
        batch_size: int = 32,
        max_length: int = 256,
        dtype: str | None = None,
    ) -> None:
        from transformers import AutoModel

        super().__init__(name, model, batch_size, max_length, dtype, AutoModel)
        self.tokenizer.truncation_side = "right"

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """`[len(texts), dim]` unit-length float32 embeddings."""
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        embeddings: list[torch.Tensor | None] = [None] * len(texts)
        for rows in length_sorted_chunks([len(ids) for ids in encoded], self.batch_size):
            input_ids, attention_mask = pad_right([encoded[i] for i in rows], self.tokenizer.pad_token_id, self.device)
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            for row, vector in zip(rows, F.normalize(pooled, p=2, dim=-1).cpu(), strict=True):
                embeddings[row] = vector
        return torch.stack(embeddings)

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        # Pools score both sides of a pair against the same reference: embed each distinct text once.
        texts = list(dict.fromkeys([*responses, *references]))
        index = {text: i for i, text in enumerate(texts)}
        embeddings = self.embed(texts)
        response_vectors = embeddings[[index[text] for text in responses]]
        reference_vectors = embeddings[[index[text] for text in references]]
        return (response_vectors * reference_vectors).sum(-1)
