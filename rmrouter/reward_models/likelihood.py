"""LASER's reward model: how likely a causal LM finds the response, per token."""

from __future__ import annotations

import inspect

import torch

from rmrouter.data.records import Message
from rmrouter.models.shared_prefix import continuation_logprobs
from rmrouter.reward_models._hf import (
    HFRewardModel,
    adds_bos,
    length_sorted_chunks,
    length_sorted_groups,
    pad_right,
    render,
)


class LikelihoodRewardModel(HFRewardModel):
    """Mean token log-likelihood of the response given the prompt under a causal LM.

    The prompt is written with the chat template and its generation prompt; the scored tokens are the response
    followed by the end-of-turn token the template writes after it, up to and including the tokenizer's EOS
    (`<|im_end|>` for SmolLM2): a model that would not have stopped there is charged for it, and whatever the
    template puts after the EOS (a newline) is never generated, so it is not scored. Without a chat template the
    prompt is `User: ...\\n\\nAssistant:` and the scored text is `" " + response + eos`. Prompt and response are
    tokenized separately, as they are in generation, and prompt tokens are masked out. When a row exceeds
    `max_length` tokens the prompt loses its beginning (a leading BOS is kept); a response that alone exceeds
    `max_length - 1` tokens is cut at its end. A row with nothing to score (empty response, no EOS) abstains (NaN).

    Args:
        name: How this RM is called in pools, behaviour records, logs and tables.
        model: A packaged model name, a local folder or a Hugging Face id of a causal LM with a chat template.
        batch_size: Rows per forward pass; `score` takes any number of rows.
        max_length: Most tokens per row (prompt + response).
        dtype: Weights' dtype, e.g. `bfloat16` on GPUs, or `bfloat16_if_native` (bfloat16 on a GPU or a CPU with
            AVX512-BF16 or AMX, float32 elsewhere); None keeps the checkpoint's default (float32 in transformers).
        share_prompts: Run each distinct prompt once per batch and its responses on its KV cache (a pair's two sides
            share it; `rmrouter.models.shared_prefix`). The same scores up to float rounding as whole rows, but
            measured slower on behaviour pairs, whose responses are long next to their prompts
            (docs/likelihood_prompt_cache.md), so off by default.
    """

    def __init__(
        self,
        name: str,
        model: str = "smollm2-135m-instruct",
        batch_size: int = 8,
        max_length: int = 1024,
        dtype: str | None = None,
        share_prompts: bool = False,
    ) -> None:
        from transformers import AutoModelForCausalLM

        super().__init__(name, model, batch_size, max_length, dtype, AutoModelForCausalLM)
        self._bos = self.tokenizer.bos_token_id if adds_bos(self.tokenizer) else None
        # Projecting only the response positions onto the vocabulary saves most of the logits' memory.
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.share_prompts = share_prompts

    def split_text(self, prompt: list[Message], response: str) -> tuple[str, str]:
        """`(context, scored)`: the text the model is conditioned on and the text whose tokens are scored."""
        eos = self.tokenizer.eos_token or ""
        context = render(self.tokenizer, prompt, add_generation_prompt=True)
        if not getattr(self.tokenizer, "chat_template", None):
            return context, " " + response + eos
        full = render(
            self.tokenizer, [*prompt, {"role": "assistant", "content": response}], add_generation_prompt=False
        )
        suffix = full[len(context) :] if full.startswith(context) else ""
        start = suffix.find(response)
        if start < 0:  # the template rewrote earlier turns or the response itself: score what generation would emit
            return context, response + eos
        # Template text between the generation prompt and the response (e.g. an empty think block) is context.
        context, suffix = context + suffix[:start], suffix[start:]
        end = suffix.find(eos, len(response)) if eos else -1
        return context, suffix[: end + len(eos)] if end >= 0 else suffix

    def encode(self, prompt: list[Message], response: str) -> tuple[list[int], list[int]]:
        """`(context_ids, scored_ids)` for one row, truncated to `max_length` tokens in all."""
        context, scored = self.split_text(prompt, response)
        context_ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        scored_ids = self.tokenizer(scored, add_special_tokens=False)["input_ids"][: self.max_length - 1]
        if self._bos is not None and context_ids[:1] != [self._bos]:
            context_ids = [self._bos, *context_ids]
        room = self.max_length - len(scored_ids)
        if len(context_ids) > room:
            head = context_ids[:1] if self._bos is not None and room > 1 else []
            context_ids = head + context_ids[len(context_ids) - room + len(head) :]
        return context_ids, scored_ids

    def _score(self, prompts: list[list[Message]], responses: list[str], references: list[str | None]) -> torch.Tensor:
        rows = [self.encode(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
        if self.share_prompts:
            return self._score_shared(rows)
        return self._score_whole(rows)

    def _score_shared(self, rows: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Mean scored-token log-prob per row, each distinct context run once per batch of about `batch_size` rows."""
        # A row without context has no logit for its first token, which whole rows leave unscored too.
        rows = [(context, scored) if context else (scored[:1], scored[1:]) for context, scored in rows]
        scores = torch.full((len(rows),), float("nan"))  # nothing to score: abstain
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (context, scored) in enumerate(rows):
            if scored:
                groups.setdefault(tuple(context), []).append(index)
        # Groups of similar length together (little padding), whole groups per batch so each context runs once.
        members = sorted(groups.values(), key=lambda group: max(len(rows[i][0]) + len(rows[i][1]) for i in group))
        for chunk in length_sorted_groups(members, self.batch_size):
            contexts, continuations = [rows[i][0] for i in chunk], [rows[i][1] for i in chunk]
            scores[chunk] = continuation_logprobs(
                self.model, contexts, continuations, self.tokenizer.pad_token_id, True, self._keeps_logits
            ).cpu()
        return scores

    def _score_whole(self, rows: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """Mean scored-token log-prob per row, from right-padded prompt + response rows."""
        sequences = [context + scored for context, scored in rows]
        starts = torch.tensor([len(context) for context, _ in rows])
        ends = torch.tensor([len(sequence) for sequence in sequences])
        scores = torch.empty(len(rows))
        for chunk in length_sorted_chunks(ends.tolist(), self.batch_size):
            input_ids, attention_mask = pad_right(
                [sequences[i] for i in chunk], self.tokenizer.pad_token_id, self.device
            )
            # Position p predicts token p + 1: keep the positions that predict a scored token of some row.
            first = max(int(starts[chunk].min()) - 1, 0)
            predicting = torch.arange(first, input_ids.shape[1] - 1, device=self.device)
            if self._keeps_logits:
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=predicting
                ).logits
            else:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, predicting]
            logits = logits.float()
            targets = input_ids[:, predicting + 1]
            token_logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            target_positions = (predicting + 1).cpu()
            scored = (target_positions >= starts[chunk, None]) & (target_positions < ends[chunk, None])
            token_logp = token_logp.cpu().masked_fill(~scored, 0.0)
            scores[chunk] = token_logp.sum(-1) / scored.sum(-1)  # 0 / 0 = NaN: nothing to score, abstain
        return scores
