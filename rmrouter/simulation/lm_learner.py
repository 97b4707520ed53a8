"""Fidelity (c) of the simulated stream: a causal LM policy (SmolLM2 with LoRA by default) trained by DPO.

The same policy, LoRA, truncation and loss as `OnlineDPOModule` in simulated mode (`configs/online/simulated.yaml`),
built and trained by the same code (`rmrouter.policy.core`), but driven by `run_stream` like fidelities
(a) and (b), so its routers see the very batches theirs do and every pair's outcome is kept. The Lightning module
stays the way to train a policy; this learner is the way to measure routing on one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from rmrouter.data.records import as_messages
from rmrouter.dpo import LossType
from rmrouter.models.store import load_tokenizer
from rmrouter.policy import generation as gen
from rmrouter.policy.core import build_policy, dpo_on_labels
from rmrouter.routers.base import PairBatch
from rmrouter.simulation.stream import StreamBatch


class LMPolicyDPO:
    """Fidelity (c): one optimizer step of DPO on each batch's labelled pairs, the policy an LM.

    Args:
        policy: The policy's model name (a folder, a packaged name or a HF id), resolved by the model store.
        lora: peft `LoraConfig` keyword arguments; the reference is the base with the adapter off. None trains every
            weight against a frozen copy.
        beta: DPO's KL strength.
        loss_type: `sigmoid` (DPO) or `ipo`.
        learning_rate: AdamW's step size (no weight decay, as the simulated config).
        max_prompt_length: Prompt tokens kept, from the end.
        max_new_tokens: Response tokens kept (EOS included), as a simulated response is cut.
        bfloat16: Autocast the forward passes to bfloat16 (`bf16-mixed`); the weights stay float32.
        seed: Seeds the adapter's initialisation.
        device: Where the policy runs (`cpu`, `cuda`, ...).
    """

    def __init__(
        self,
        policy: str,
        lora: dict[str, Any] | None,
        beta: float,
        loss_type: LossType,
        learning_rate: float,
        max_prompt_length: int,
        max_new_tokens: int,
        bfloat16: bool,
        seed: int,
        device: str = "cpu",
    ) -> None:
        if not (beta > 0 and learning_rate > 0):
            raise ValueError(f"beta and learning_rate must be positive, got {beta} and {learning_rate}")
        self.beta, self.loss_type = float(beta), loss_type
        self.max_prompt_length, self.max_new_tokens, self.bfloat16 = max_prompt_length, max_new_tokens, bfloat16
        self.tokenizer = load_tokenizer(policy)
        model, reference = build_policy(policy, lora, torch.float32, seed=seed)
        self.reference = None if reference is None else reference.to(device)
        self.policy = model.to(device)
        self.keep_logits = gen.keeps_logits(model)
        self.eos = min(gen.eos_ids(model, self.tokenizer))
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)

    def with_token_ids(self, batch: StreamBatch) -> PairBatch:
        """The batch's pairs with the token ids the simulated module gives them: prompts cut from the left, responses
        cut to `max_new_tokens` with EOS."""
        pairs = batch.pairs
        return dataclasses.replace(
            pairs,
            prompt_ids=gen.prompt_ids(self.tokenizer, [as_messages(p) for p in pairs.prompts], self.max_prompt_length),
            first_ids=[gen.text_ids(self.tokenizer, text, self.eos, self.max_new_tokens) for text in pairs.first],
            second_ids=[gen.text_ids(self.tokenizer, text, self.eos, self.max_new_tokens) for text in pairs.second],
        )

    def step(self, batch: StreamBatch, preference: Tensor) -> Tensor:
        rows = preference.nonzero().flatten().tolist()
        if not rows:
            return torch.full((len(preference),), torch.nan, dtype=torch.float64)
        device_type = next(self.policy.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bfloat16):
            step = dpo_on_labels(
                self.policy,
                self.reference,
                self.with_token_ids(batch),
                rows,
                preference,
                pad_id=self.pad,
                beta=self.beta,
                loss_type=self.loss_type,
                keep_logits=self.keep_logits,
            )
        if step.pairs_trained:
            self.optimizer.zero_grad(set_to_none=True)
            step.output.losses.mean().backward()
            self.optimizer.step()
        return step.losses.double()
