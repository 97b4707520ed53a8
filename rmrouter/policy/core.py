"""The policy online DPO trains, built and stepped one way for every entry point.

`OnlineDPOModule`, the LM learner of the simulated streams (`rmrouter.simulation.lm_learner`) and `export` all build
the policy with `build_policy`, and the module and the learner both train it with `dpo_on_labels`, so a pair routed
in a stream and a pair routed in a run are scored and trained alike. These are functions of the models, not an object
holding them: under FSDP the trainer wraps the module's submodules in place, so a kept reference would go stale.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rmrouter.dpo import DPOOutput, LossType, dpo_loss_of_finite_pairs
from rmrouter.policy.generation import policy_and_reference_logprobs
from rmrouter.routers.base import PairBatch


def build_policy(
    name: str, lora: dict[str, Any] | None, dtype: torch.dtype, with_reference: bool = True, seed: int | None = None
) -> tuple[nn.Module, nn.Module | None]:
    """`(policy, reference)`: the causal LM `name` (a folder, a packaged name or a HF id) in `dtype`, in train mode.

    With `lora` (peft `LoraConfig` keyword arguments) the policy is a peft model and the reference is None: the base
    with the adapter disabled. Without, every weight trains and the reference is a frozen copy in eval mode (no dropout
    in its log-probs), or None when `with_reference` is false (export needs the policy alone).

    Args:
        name: The policy's model name, resolved by the model store.
        lora: The adapter's settings, or None for a full finetune.
        dtype: The weights' dtype (the module passes the default dtype, which bf16-true sets).
        with_reference: Build the frozen copy of a full finetune.
        seed: Seeds torch's global RNG right before the adapter's initialisation; None leaves it as it is (a
            Lightning run has seeded it).
    """
    from transformers import AutoModelForCausalLM

    from rmrouter.models.store import load_model

    policy = load_model(AutoModelForCausalLM, name, dtype=dtype)
    if seed is not None:
        torch.manual_seed(seed)
    reference = None
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(**lora))
    elif with_reference:
        reference = copy.deepcopy(policy).requires_grad_(False).eval()
    return policy.train(), reference  # transformers 5 returns models in eval mode


@dataclass
class DPOStep:
    """What `dpo_on_labels` computed.

    Attributes:
        losses: `[P]` float32, each pair's DPO loss (detached), NaN for a pair not trained on.
        output: `dpo_loss` of the forwarded pairs whose log-probs are finite (their losses differentiable), or None
            when nothing was forwarded.
        trained: Indices into the forwarded rows of the pairs in `output`.
        policy_logps: `[2R]` log-probs of the forwarded rows' chosen then rejected sides under the policy (with grad).
        reference_logps: The same under the reference.
        responses: The forwarded sides' token ids, in the order of `policy_logps`.
    """

    losses: Tensor
    output: DPOOutput | None = None
    trained: Tensor | None = None
    policy_logps: Tensor | None = None
    reference_logps: Tensor | None = None
    responses: list[list[int]] | None = None

    @property
    def pairs_trained(self) -> int:
        return 0 if self.trained is None else len(self.trained)

    def trained_sides(self) -> tuple[Tensor, Tensor, list[list[int]]]:
        """`(policy, reference, responses)` of the trained pairs' sides only: chosen, then rejected."""
        both = torch.cat([self.trained, self.trained + len(self.policy_logps) // 2])
        return self.policy_logps[both], self.reference_logps[both], [self.responses[i] for i in both.tolist()]


def dpo_on_labels(
    policy: nn.Module,
    reference: nn.Module | None,
    pairs: PairBatch,
    rows: list[int],
    preference: Tensor,
    *,
    pad_id: int,
    beta: float,
    loss_type: LossType,
    keep_logits: bool,
    share_prompts: bool = False,
) -> DPOStep:
    """DPO on the routed labels of `rows`: one forward of their chosen and rejected sides under the policy and the
    reference, and the loss of every pair whose log-probs are finite.

    Args:
        policy: The trained causal LM (a peft model when `reference` is None).
        reference: The frozen copy, or None (the adapter disabled).
        pairs: The routed pairs, with their token ids.
        rows: The pairs to train on, each labelled (`preference[row]` is +1 or -1).
        preference: `[P]` the routed labels.
        pad_id: Padding id (masked out).
        beta: DPO's KL strength.
        loss_type: `sigmoid` (DPO) or `ipo` (token-mean log-probs, as TRL).
        keep_logits: The model takes `logits_to_keep`.
        share_prompts: Run each prompt once and its responses on its KV cache.
    """
    losses = torch.full((len(preference),), float("nan"))
    if not rows:
        return DPOStep(losses)
    chosen, rejected = pairs.chosen_and_rejected(rows, preference)
    prompts = [pairs.prompt_ids[row] for row in rows]
    responses = chosen + rejected
    policy_logps, reference_logps = policy_and_reference_logprobs(
        policy, reference, prompts + prompts, responses, pad_id, loss_type == "ipo", keep_logits, share_prompts
    )
    n = len(rows)
    output, trained = dpo_loss_of_finite_pairs(
        policy_logps[:n], policy_logps[n:], reference_logps[:n], reference_logps[n:], beta, loss_type
    )
    losses[[rows[i] for i in trained.tolist()]] = output.losses.detach().float().cpu()
    return DPOStep(losses, output, trained, policy_logps, reference_logps, responses)
