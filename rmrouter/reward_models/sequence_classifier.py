"""Any `AutoModelForSequenceClassification` reward model, e.g. the RewardBench ones (Skywork-Reward-V2, ...)."""

from __future__ import annotations

import torch

from rmrouter.data.records import Message
from rmrouter.reward_models._hf import (
    HFRewardModel,
    adds_bos,
    length_sorted_chunks,
    pad_right,
    render,
)


class SequenceClassifierRewardModel(HFRewardModel):
    """A classifier with one output read as the reward: score = `logits[:, 0]` on the whole conversation.

    The conversation (prompt turns, then the response as an assistant turn) is written with the model's own chat
    template, or as `User: ...\\n\\nAssistant: ...` when its tokenizer has none. The recipe follows the
    Skywork-Reward model cards: a BOS the template already wrote is dropped from the text so that the tokenizer adds
    exactly one. Conversations longer than `max_length` tokens lose their beginning, never the response's end.
    Rows are padded on the right with the tokenizer's pad token (its EOS when it has none), which is also set as
    the model's `pad_token_id`, so the classifier pools the last real token of each row (transformers pools the last
    token that is not the pad id: with an EOS fallback, a row the template ends with EOS is pooled one token earlier,
    alone or batched alike).

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
        model: A packaged model name, a local folder or a Hugging Face id (e.g. `Skywork/Skywork-Reward-V2-Qwen3-0.6B`).
        batch_size: Rows per forward pass; `score` takes any number of rows.
        max_length: Most tokens per conversation; longer ones are cut from the left.
        dtype: Weights' dtype, e.g. `bfloat16` on GPUs, or `bfloat16_if_native` (bfloat16 on a GPU or a CPU with
            AVX512-BF16 or AMX, float32 elsewhere); None keeps the checkpoint's default (float32 in transformers).
        trust_remote_code: Run the Python code a hub model ships with its weights (transformers' flag). Off unless a
            config turns it on: only for a model whose code you have read.
    """

    def __init__(
        self,
        name: str,
        model: str,
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        super().__init__(
            name, model, batch_size, max_length, dtype, AutoModelForSequenceClassification, trust_remote_code
        )
        self.tokenizer.truncation_side = "left"
        self._strip_bos = adds_bos(self.tokenizer)
        # The pooled token is the last one that is not `pad_token_id`: it must be the id the batches are padded with.
        self.model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def conversation_text(self, prompt: list[Message], response: str) -> str:
        """The text that is tokenized for one row (before the tokenizer adds its special tokens)."""
        text = render(
            self.tokenizer, [*prompt, {"role": "assistant", "content": response}], add_generation_prompt=False
        )
        bos = self.tokenizer.bos_token
        if self._strip_bos and text.startswith(bos):
            text = text[len(bos) :]
        return text

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        texts = [self.conversation_text(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        scores = torch.empty(len(texts))
        for rows in length_sorted_chunks([len(ids) for ids in encoded], self.batch_size):
            input_ids, attention_mask = pad_right([encoded[i] for i in rows], self.tokenizer.pad_token_id, self.device)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            scores[rows] = logits[:, 0].float().cpu()
        return scores
