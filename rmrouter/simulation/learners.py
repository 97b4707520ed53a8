"""What the routed labels train in a simulated stream, and the per-pair loss each router learns from.

Three fidelities share one loop (`rmrouter.simulation.loop`): route, label, loss, observe, update.
- `OracleLearner` (a): no policy; a pair's loss is 0 when its routed label is right and 1 when it is wrong, so the
  router's reward is exactly whether it chose well. The pure bandit.
- `LogLinearDPO` (b): a real DPO learner that costs microseconds. The policy is log-linear over frozen embeddings of
  each side, `log pi(y | x) = theta . phi(x, y) + const(x)`, the reference is `theta = 0`, and it trains with the
  DPO loss on the routed labels; its per-pair loss before the update is the router's reward, as in Online DPO.
- `LMPolicyDPO` (c, `rmrouter.simulation.lm_learner`): the LM policy of `OnlineDPOModule` in simulated mode (SmolLM2
  with LoRA), its log-prob code and loss, one AdamW step per batch.

A learner's `step(batch, preference)` returns the `[B]` per-pair losses before its update (NaN where a pair has no
label: it is not trained on), then updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from rmrouter.models.pair_encoder import pair_text
from rmrouter.simulation.stream import StreamBatch


class Learner(Protocol):
    def step(self, batch: StreamBatch, preference: Tensor) -> Tensor:
        """`[B]` losses of the routed labels before the update (NaN where `preference` is 0), then the update."""
        ...


class OracleLearner:
    """Fidelity (a): loss 0 for a right label, 1 for a wrong one; nothing is trained."""

    def step(self, batch: StreamBatch, preference: Tensor) -> Tensor:
        wrong = (preference != batch.truth).double()
        return torch.where(preference != 0, wrong, torch.nan)


def log_linear_dpo_losses(theta: Tensor, winner: Tensor, loser: Tensor, beta: float) -> Tensor:
    """`[B]` DPO losses `-log sigmoid(beta * theta . (phi_w - phi_l))` of a log-linear policy against `theta = 0`.

    With `log pi(y | x) = theta . phi(x, y) + const(x)` the prompt's normaliser cancels in the DPO margin, and the
    reference (`theta = 0`) contributes nothing, so the loss needs the two sides' features alone.

    Args:
        theta: `[D]` policy weights.
        winner: `[B, D]` features of the responses the labels prefer.
        loser: `[B, D]` features of the others.
        beta: DPO's KL strength.
    """
    return F.softplus(-beta * ((winner - loser) @ theta))


def log_linear_dpo_gradient(theta: Tensor, winner: Tensor, loser: Tensor, beta: float) -> Tensor:
    """`[D]` gradient of the mean `log_linear_dpo_losses`: `-beta * mean(sigmoid(-beta m) (phi_w - phi_l))`."""
    difference = winner - loser
    return -beta * (torch.sigmoid(-beta * (difference @ theta)).unsqueeze(1) * difference).mean(dim=0)


class LogLinearDPO:
    """Fidelity (b): the log-linear DPO policy, trained by SGD on each batch's labelled pairs.

    In a linear policy `beta` and the step size only rescale each other, so `beta` stays at DPO's usual 0.1 and
    `learning_rate` sets how fast the policy moves.

    Args:
        features: Texts to `[len, D]` frozen embeddings (the pair texts `pair_text(prompt, response)`).
        dim: `D`.
        beta: DPO's KL strength.
        learning_rate: SGD step size.
    """

    def __init__(self, features: Callable[[list[str]], Tensor], dim: int, beta: float, learning_rate: float) -> None:
        if not (beta > 0 and learning_rate > 0):
            raise ValueError(f"beta and learning_rate must be positive, got {beta} and {learning_rate}")
        self.features, self.beta, self.learning_rate = features, float(beta), float(learning_rate)
        self.theta = torch.zeros(dim, dtype=torch.float64)

    def sides(self, batch: StreamBatch) -> tuple[Tensor, Tensor]:
        """`[B, D]` features of every pair's `first` and `second`."""
        pairs = batch.pairs
        texts = [pair_text(p, r) for p, r in zip(pairs.prompts, pairs.first, strict=True)]
        texts += [pair_text(p, r) for p, r in zip(pairs.prompts, pairs.second, strict=True)]
        embeddings = self.features(texts).detach().to("cpu", torch.float64)
        return embeddings[: len(pairs)], embeddings[len(pairs) :]

    def step(self, batch: StreamBatch, preference: Tensor) -> Tensor:
        first, second = self.sides(batch)
        labelled = preference != 0
        prefers_first = (preference > 0).unsqueeze(1)
        winner = torch.where(prefers_first, first, second)[labelled]
        loser = torch.where(prefers_first, second, first)[labelled]
        losses = torch.full((len(preference),), torch.nan, dtype=torch.float64)
        if labelled.any():
            losses[labelled] = log_linear_dpo_losses(self.theta, winner, loser, self.beta)
            self.theta = self.theta - self.learning_rate * log_linear_dpo_gradient(self.theta, winner, loser, self.beta)
        return losses

    def agreement(self, batch: StreamBatch) -> Tensor:
        """`[B]` bool: the policy's implicit reward prefers the labelled chosen side (ties count as not)."""
        first, second = self.sides(batch)
        return torch.sign((first - second) @ self.theta) == batch.truth.double()
