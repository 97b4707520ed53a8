"""Online DPO math as plain functions of tensors: response log-probs, the DPO/IPO loss, the implicit KL.

No Trainer and no modules here; `OnlineDPOModule` calls these. The per-pair loss is also the router's reward
(`r = -L_DPO`, docs/concepts/method.md, "Online stage: BayesianRouter"), so `dpo_loss` returns it per pair and leaves
the reduction to the caller.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

LossType = Literal["sigmoid", "ipo"]


def _token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """`log p(targets[b, t] | logits[b, t])` in float32, `[B, T]`, one row at a time.

    A row at a time keeps the float32 copy of the logits to `[T, V]` instead of `[B, T, V]` (the vocabulary makes
    it the largest activation of the step). `logit - logsumexp` is `log_softmax` at one index, without building
    the whole `[T, V]` result a second time.
    """
    rows = []
    for row_logits, row_targets in zip(logits, targets, strict=True):
        row = row_logits.float()  # bf16 has 8 mantissa bits: logsumexp over ~50k entries in bf16 loses the answer
        picked = row.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def response_logprobs(logits: Tensor, input_ids: Tensor, response_mask: Tensor, average: bool = False) -> Tensor:
    """Log-probability of each row's response tokens under `logits`, summed (or averaged) over the response.

    Position `t`'s logits predict token `t + 1` (a causal LM's output), so token `t` is scored with `logits[:, t-1]`.
    Only tokens marked by `response_mask` count: the prompt and the padding (left or right) are masked out, and a
    masked position's value never reaches the result (it is selected away, not multiplied by zero, so even a
    non-finite logit at a pad position leaves the row finite). The softmax runs in float32 whatever the logits'
    dtype, and the result is float32.

    `average=False` gives `log pi(y | x)`, what the sigmoid DPO loss uses. `average=True` divides by the number of
    response tokens, the token-mean log-prob, which TRL feeds to the IPO loss (its `loss_type="ipo"` sets
    `average_log_prob`) and which removes the loss's incentive to change the response length.

    Args:
        logits: `[B, T, V]` causal-LM logits for `input_ids`, any float dtype.
        input_ids: `[B, T]` prompt + response token ids, padded.
        response_mask: `[B, T]`, true (or 1) at the response tokens of `input_ids`, EOS included when generated.
        average: Divide each row's sum by its number of response tokens.

    Returns:
        `[B]` float32 log-probs, differentiable with respect to `logits`.

    Raises:
        ValueError: On mismatched shapes; when position 0 is marked (no logit predicts the first token, so a
            response needs at least one prompt token before it); when a row has no response token (its log-prob
            would be 0 summed and undefined averaged, and either way it means the mask was built wrong).
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, time, vocab], got shape {tuple(logits.shape)}")
    if input_ids.shape != logits.shape[:2] or response_mask.shape != input_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must agree on [batch, time]"
        )
    mask = response_mask.bool()
    if bool(mask[:, 0].any()):
        raise ValueError(
            "response_mask marks position 0, which no logit predicts: a response must follow at least one prompt "
            "token (e.g. BOS or the chat template's generation prompt)"
        )
    mask = mask[:, 1:]
    counts = mask.sum(dim=-1)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no response token in response_mask; the EOS a policy emits counts")
    token_logps = _token_logprobs(logits[:, :-1], input_ids[:, 1:])
    summed = torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(dim=-1)
    return summed / counts if average else summed


class DPOOutput(NamedTuple):
    """Per-pair results of `dpo_loss`, each `[P]`.

    Attributes:
        losses: The loss of each pair, differentiable with respect to the policy log-probs; NaN where an input was
            not finite. Reduce it yourself (`losses.mean()`); `-losses.detach()` is the router's reward.
        chosen_rewards: `beta * (policy_chosen - reference_chosen)`, detached: DPO's implicit reward.
        rejected_rewards: `beta * (policy_rejected - reference_rejected)`, detached.
        reward_margins: `chosen_rewards - rejected_rewards`, detached.
        reward_accuracies: 1.0 where `chosen_rewards > rejected_rewards`, else 0.0 (a tie, as at step 0 where the
            policy is the reference, counts 0, as in TRL); NaN where an input was not finite.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    reward_margins: Tensor
    reward_accuracies: Tensor


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float,
    loss_type: LossType,
) -> DPOOutput:
    """The DPO loss of each preference pair, with the implicit rewards TRL logs.

    With `logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)`, as in TRL's
    `DPOTrainer.dpo_loss`:

    - `"sigmoid"` (DPO, Rafailov et al. 2023): `loss = -log sigmoid(beta * logits)`, computed with `logsigmoid` so
      it stays finite and exact for large margins of either sign. Equals `log 2` when the policy is the reference.
    - `"ipo"` (Azar et al. 2023, eq. 17, `beta` is their tau): `loss = (logits - 1 / (2 * beta)) ** 2`. TRL gives it
      token-mean log-probs (`response_logprobs(..., average=True)`); this function uses whatever it is given.

    The reference inputs are detached here, so only the policy receives a gradient even if the caller forgot
    `torch.no_grad()` for the reference forward pass.

    Non-finite inputs: a pair with a NaN or infinite input gets a NaN loss and NaN rewards and accuracy; other pairs
    are unaffected. Nothing is raised (a check would cost a device-to-host sync every step) and nothing is clamped:
    left alone, `-log sigmoid(+inf)` would be a silent 0 (e.g. `policy_rejected = -inf`), and a sampled response
    cannot truly have probability 0 under the policy that sampled it. The caller must handle NaN losses: drop
    those pairs (`losses[losses.isfinite()]`) or stop the run; a plain `losses.mean()` turns them into a NaN loss.

    Args:
        policy_chosen: `[P]` `log pi(y_w | x)` under the policy being trained.
        policy_rejected: `[P]` `log pi(y_l | x)` under the policy.
        reference_chosen: `[P]` `log pi_ref(y_w | x)` under the frozen reference.
        reference_rejected: `[P]` `log pi_ref(y_l | x)` under the reference.
        beta: Strength of the KL regularisation towards the reference, > 0 (0.1 is usual for DPO).
        loss_type: `"sigmoid"` for DPO, `"ipo"` for IPO.

    Returns:
        A `DPOOutput` of `[P]` tensors; `P = 0` gives empty ones.

    Raises:
        ValueError: On inputs that are not four 1-D tensors of one shape, a `beta` that is not a finite positive
            number, or an unknown `loss_type`.
    """
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1 or policy_chosen.dim() != 1:
        raise ValueError(f"the four log-prob inputs must be 1-D [pairs] of one shape, got shapes {sorted(shapes)}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    reference_chosen, reference_rejected = reference_chosen.detach(), reference_rejected.detach()
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    finite = (
        policy_chosen.isfinite()
        & policy_rejected.isfinite()
        & reference_chosen.isfinite()
        & reference_rejected.isfinite()
    )
    nan = torch.full_like(losses, float("nan"))
    losses = torch.where(finite, losses, nan)
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    chosen_rewards = torch.where(finite, chosen_rewards, nan)
    rejected_rewards = torch.where(finite, rejected_rewards, nan)
    accuracies = torch.where(finite, (chosen_rewards > rejected_rewards).to(losses.dtype), nan)
    return DPOOutput(
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        reward_margins=chosen_rewards - rejected_rewards,
        reward_accuracies=accuracies,
    )


def dpo_loss_of_finite_pairs(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float,
    loss_type: LossType = "sigmoid",
) -> tuple[DPOOutput, Tensor]:
    """`(out, rows)`: `dpo_loss` of the pairs whose four log-probs and whose loss are finite, and those pairs' indices.

    The other pairs are selected away before the loss, not masked after it: a masked NaN stays in the graph, and its
    gradient `0 * NaN` is NaN, which would reach every weight. Arguments as `dpo_loss`; `out` has one row per index.
    """
    inputs = (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    rows = torch.stack(inputs).isfinite().all(dim=0).nonzero().flatten()
    out = dpo_loss(*(t[rows] for t in inputs), beta, loss_type)
    finite = out.losses.isfinite()
    return DPOOutput(*(field[finite] for field in out)), rows[finite]


def implicit_kl(policy_logps: Tensor, reference_logps: Tensor) -> Tensor:
    """The usual sample estimate of `KL(pi || pi_ref)`: `mean(policy_logps - reference_logps)`, detached.

    The responses were sampled from the policy, so the mean of `log pi(y|x) - log pi_ref(y|x)` over them is an
    unbiased estimate of the sequence-level KL (a single sample can be negative). It is a metric: detached, because
    its gradient is not the KL's gradient (that needs the score-function term). NaN inputs give NaN.

    Args:
        policy_logps: `[R]` summed log-probs of the sampled responses under the policy.
        reference_logps: `[R]` the same responses' log-probs under the reference.

    Raises:
        ValueError: On mismatched shapes or no responses (the mean of nothing is undefined).
    """
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(
            f"policy and reference log-probs must have one shape, got {tuple(policy_logps.shape)} and "
            f"{tuple(reference_logps.shape)}"
        )
    if policy_logps.numel() == 0:
        raise ValueError("got no responses: the KL estimate of an empty batch is undefined")
    return (policy_logps - reference_logps).detach().mean()
