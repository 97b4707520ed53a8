"""Fidelity (c) of the simulated stream: a causal LM policy (SmolLM2 with LoRA by default) trained by DPO.

The same policy, LoRA, truncation and loss as `OnlineDPOModule` in simulated mode (`configs/online/simulated.yaml`),
with the same log-prob code (`generation.policy_and_reference_logprobs`), but driven by `run_stream` like fidelities
(a) and (b), so its routers see the very batches theirs do and every pair's outcome is kept. The Lightning module
stays the way to train a policy; this learner is the way to measure routing on one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rmrouter.data.records import as_messages
from rmrouter.dpo import LossType, dpo_loss_of_finite_pairs
from rmrouter.modules import generation as gen
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
        from transformers import AutoModelForCausalLM

        from rmrouter.models.store import load_model, load_tokenizer

        if not (beta > 0 and learning_rate > 0):
            raise ValueError(f"beta and learning_rate must be positive, got {beta} and {learning_rate}")
        self.beta, self.loss_type = float(beta), loss_type
        self.max_prompt_length, self.max_new_tokens, self.bfloat16 = max_prompt_length, max_new_tokens, bfloat16
        self.tokenizer = load_tokenizer(policy)
        model = load_model(AutoModelForCausalLM, policy, dtype=torch.float32)
        torch.manual_seed(seed)
        self.reference = None
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(**lora))
        else:
            import copy

            self.reference = copy.deepcopy(model).requires_grad_(False).eval().to(device)
        self.policy = model.to(device).train()  # transformers 5 returns models in eval mode
        self.keep_logits = gen.keeps_logits(model)
        self.eos = min(gen.eos_ids(model, self.tokenizer))
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        trainable = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)

    def token_ids(self, batch: StreamBatch) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """Per pair: prompt ids, `first` ids and `second` ids, cut as the simulated module cuts them."""
        pairs = batch.pairs
        prompts = gen.prompt_ids(self.tokenizer, [as_messages(p) for p in pairs.prompts], self.max_prompt_length)
        first = [gen.text_ids(self.tokenizer, text, self.eos, self.max_new_tokens) for text in pairs.first]
        second = [gen.text_ids(self.tokenizer, text, self.eos, self.max_new_tokens) for text in pairs.second]
        return prompts, first, second

    def step(self, batch: StreamBatch, preference: Tensor) -> Tensor:
        rows = preference.nonzero().flatten().tolist()
        losses = torch.full((len(preference),), torch.nan, dtype=torch.float64)
        if not rows:
            return losses
        prompts, first, second = self.token_ids(batch)
        chosen = [first[r] if preference[r] > 0 else second[r] for r in rows]
        rejected = [second[r] if preference[r] > 0 else first[r] for r in rows]
        prompt_rows = [prompts[r] for r in rows]
        device_type = next(self.policy.parameters()).device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bfloat16):
            policy, reference = gen.policy_and_reference_logprobs(
                self.policy,
                self.reference,
                prompt_rows + prompt_rows,
                chosen + rejected,
                self.pad,
                self.loss_type == "ipo",
                self.keep_logits,
            )
        n = len(rows)
        out, trained = dpo_loss_of_finite_pairs(
            policy[:n], policy[n:], reference[:n], reference[n:], self.beta, self.loss_type
        )
        if len(trained):
            losses[[rows[i] for i in trained.tolist()]] = out.losses.detach().double().cpu()
            self.optimizer.zero_grad(set_to_none=True)
            out.losses.mean().backward()
            self.optimizer.step()
        return losses
