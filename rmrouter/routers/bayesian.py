"""The paper's online router: per-pair Thompson sampling over per-RM Bayesian linear rewards, with an offline prior.

See docs/concepts/method.md, "Online stage: BayesianRouter". The pair embedding `h` comes from the offline prior's pair
encoder (or, without a prior, from the mean of the two sides' text embeddings); the posteriors, reward normaliser and
RNG are the state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from rmrouter.models.encoder import Pooling
from rmrouter.routers.base import PairBatch, PairJudge, Router, Routing
from rmrouter.routers.cost import checked_cost_weight
from rmrouter.routers.decisions import best_eligible
from rmrouter.routers.embedding import LazyEmbedder
from rmrouter.routers.judges import ask_by_rm, ask_eligible, preference
from rmrouter.routers.normalizer import HeldRewards, QuantileNormalizer, batch_baseline, centred
from rmrouter.routers.posterior import GaussianPosteriors
from rmrouter.routers.prior import RouterPrior

log = logging.getLogger(__name__)


class BayesianRouter(Router):
    """Routes each pair to the RM with the highest Thompson score `h^T w_n` among the RMs that can judge it (the
    judge's `eligible`), then learns from the pairs' DPO losses.

    `observe` rewards the pairs trained on (finite losses) with `QuantileNormalizer(batch_baseline(losses))` and adds
    them to their RMs' posteriors; non-finite losses of labelled pairs are skipped, counted
    (`router/nonfinite_losses`) and warned about, and never reach the posterior.

    What the paper leaves implicit, each a switch (the paper's form is the default; `configs/routers/bayesian.yaml`
    sets the project's): `prior_scale` puts the prior on the reward scale (`mu0 = prior_scale * E_bt`, e.g. fitted on
    validation data by `rmrouter.routers.calibration.fit_prior_scale`; the paper: 1); `warmup_rewards: held` learns
    the pairs routed during the normaliser's warm-up once it has its scale, with their real rewards (the paper's
    `placeholder` learns the neutral 0.5 for them as if observed); `centred_rewards` learns `2r - 1` on `[-1, 1]`, so
    an average pair pulls an RM's score toward 0 rather than up toward 0.5; `eligible_only` never routes a pair to an
    RM that cannot judge it (false: the argmax over every RM, as the paper writes it; such a pair gets no label).

    Ablations: `use_prior: false` starts the posteriors at mean 0 (no offline prior); `online_updates: false` routes
    by the offline BT scores `argmax_n h^T E_bt[n]` alone and never changes its state; `integration: weighted_score`
    scores `offline_weight * h^T E_bt[n] + (1 - offline_weight) * online_sample` with the online posteriors started
    at mean 0, instead of injecting `E_bt` as their prior mean.

    Args:
        rm_names: The pool's RM names, in pool (and prior) order; None takes the pool's (`Router`). The prior must be
            for these RMs, in this order.
        prior_path: The offline router's `RouterPrior` file, or None for the no-prior ablation (then `encoder` is
            required and `h` is the mean of the two sides' text embeddings).
        sigma2: Observation noise variance of the normalised rewards.
        lambda0: Prior precision of every posterior.
        warmup: Raw rewards seen before the quantile normaliser starts (0.5 before that; the paper: 20).
        use_prior: Start the posteriors at the prior's BT embeddings (false: at 0).
        online_updates: Update the posteriors from the losses (false: route by the offline BT scores alone).
        integration: `prior_injection` (the paper's method) or `weighted_score` (the ablation).
        offline_weight: `alpha`, the offline score's weight under `weighted_score` (unused otherwise).
        seed: Seed of the router's own generator (Thompson draws).
        encoder: Text encoder for `h` when no prior is given. A prior brings its own: None, or the prior's (a
            prior built with another encoder is refused).
        pooling: That encoder's pooling (`mean` or `last_token`); with a prior, None or the prior's.
        max_length: That encoder's token limit per text; with a prior, None or the prior's.
        prior_scale: `c` in `mu0 = c * E_bt` (and on the offline score under `weighted_score`); >= 0, or
            `calibrated` for the prior's own `reward_scale` (fitted on the offline validation split when the prior
            was written).
        warmup_rewards: `placeholder` (the paper) or `held` (see above).
        centred_rewards: Learn rewards on `[-1, 1]` instead of `[0, 1]`.
        eligible_only: Choose only among the RMs that can judge each pair.
        forgetting: `g` in `(0, 1]`: before each learning step every posterior forgets (`GaussianPosteriors.
            forget`) toward `forget_toward`, so a reward `k` steps old weighs `g^k` of what it did and the router can
            follow an RM whose reliability changes. 1 (the paper) keeps every reward for good.
        forget_toward: `prior_mean`: the prior's means held with the precision of one reward (`I / sigma2`), so
            the offline evidence fades too and a direction without recent rewards goes back to its prior mean with
            the uncertainty of a single reward, which the Thompson draws explore; `prior`: the prior as it started,
            so the offline evidence is kept whole and only the online rewards fade.
        cost_weight: `lambda`, what one unit of the pool's cost per call (`RewardModelPool.costs`) is worth in
            probability of being right: each RM's score, a prediction of its reward, less `lambda * cost` on the
            reward's scale (`rmrouter.routers.cost`). The BT prior's scores are cosines, not chances, so with a prior
            this needs `prior_scale: calibrated`, which fits them to the reward. 0 ignores cost; > 0 needs a pool
            that declares costs.
    """

    def __init__(
        self,
        rm_names: list[str] | None,
        prior_path: str | None,
        sigma2: float,
        lambda0: float,
        warmup: int,
        use_prior: bool,
        online_updates: bool,
        integration: Literal["prior_injection", "weighted_score"],
        offline_weight: float,
        seed: int,
        encoder: str | None = None,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        prior_scale: float | Literal["calibrated"] = 1.0,
        warmup_rewards: Literal["placeholder", "held"] = "placeholder",
        centred_rewards: bool = False,
        eligible_only: bool = True,
        forgetting: float = 1.0,
        forget_toward: Literal["prior_mean", "prior"] = "prior_mean",
        cost_weight: float = 0.0,
    ) -> None:
        super().__init__(rm_names)
        self.forgetting, self.forget_toward = checked_forgetting(forgetting, forget_toward)
        self.cost_weight = checked_cost_weight(cost_weight)
        if self.cost_weight and prior_path is not None and prior_scale != "calibrated":
            raise ValueError(
                f"BayesianRouter: cost_weight {cost_weight} weighs each RM's chance of being right against its cost, "
                "but the prior's BT scores are cosines, not chances: set prior_scale: calibrated (the factor fitted "
                "on the offline validation split that turns them into predicted rewards)"
            )
        if integration not in ("prior_injection", "weighted_score"):
            raise ValueError(f"integration must be 'prior_injection' or 'weighted_score', got {integration!r}")
        if not 0.0 <= offline_weight <= 1.0:
            raise ValueError(f"offline_weight (alpha) must lie in [0, 1], got {offline_weight}")
        if prior_scale != "calibrated" and not (
            isinstance(prior_scale, (int, float)) and math.isfinite(prior_scale) and prior_scale >= 0
        ):
            raise ValueError(f"prior_scale must be a finite factor >= 0 or 'calibrated', got {prior_scale!r}")
        if prior_scale == "calibrated" and prior_path is None:
            raise ValueError("prior_scale: calibrated reads the prior's reward_scale; it needs prior_path")
        if warmup_rewards not in ("placeholder", "held"):
            raise ValueError(f"warmup_rewards must be 'placeholder' or 'held', got {warmup_rewards!r}")
        self.sigma2, self.lambda0 = float(sigma2), float(lambda0)
        self.warmup_rewards = warmup_rewards
        self.prior_scale = 1.0 if prior_scale == "calibrated" else float(prior_scale)
        self.centred_rewards, self.eligible_only = centred_rewards, eligible_only
        self.online_updates, self.integration, self.offline_weight = online_updates, integration, float(offline_weight)
        self.offline_scores: Tensor | None = None  # [N, d] float64 E_bt, when a prior is given
        self._prior_check: Callable[[list[str]], None] | None = None
        if prior_path is None:
            if use_prior or not online_updates or integration != "prior_injection":
                raise ValueError(
                    "BayesianRouter without prior_path: use_prior, online_updates: false and integration: "
                    "weighted_score all need the offline prior; give prior_path, or set use_prior: false, "
                    "online_updates: true, integration: prior_injection"
                )
            if encoder is None or pooling is None or max_length is None:
                raise ValueError(
                    "BayesianRouter without prior_path needs encoder, pooling and max_length to embed pairs"
                )
            self.embedder = LazyEmbedder(encoder, pooling, max_length, None, None)
            self.posteriors: GaussianPosteriors | None = None  # built once `h`'s size is known
        else:
            if not use_prior and (integration == "weighted_score" or not online_updates):
                raise ValueError("use_prior: false is the prior-injection ablation; it needs online_updates: true")
            prior = RouterPrior.load(prior_path)
            mismatch = prior_encoder_mismatch(prior, encoder, pooling, max_length)
            if mismatch is not None:
                raise ValueError(f"BayesianRouter {mismatch[0]}: {mismatch[1]}")
            self._prior_check = prior.check_pool  # for check_rm_names, once the pool's names are known
            if prior_scale == "calibrated":
                self.prior_scale = calibrated_scale(prior)
            self.embedder = LazyEmbedder(
                prior.encoder, prior.pooling, prior.max_length, prior.mlp_config, prior.mlp_state
            )  # type: ignore[arg-type]
            self.offline_scores = prior.bt_embeddings.detach().double().cpu()
            inject = use_prior and integration == "prior_injection"
            means = self.prior_scale * self.offline_scores if inject else torch.zeros_like(self.offline_scores)
            self.posteriors = GaussianPosteriors.prior(means, self.lambda0, self.sigma2)
            self.anchor = forgetting_anchor(means, self.lambda0, self.sigma2, forget_toward)
        self.normalizer = QuantileNormalizer(warmup=warmup)
        self.generator = torch.Generator().manual_seed(seed)
        self.nonfinite_losses = 0
        self.held = HeldRewards()  # pairs routed during the normaliser's warm-up (`warmup_rewards: held`)
        if self.rm_names is not None:
            self.check_rm_names()

    def check_rm_names(self) -> None:
        """The prior's rows are per RM, in its order: the pool must have exactly its RMs, in that order."""
        if self._prior_check is not None:
            self._prior_check(self.rm_names)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.embedder.to(pl_module.device)  # where the encoder runs; no state is touched

    def _posteriors(self, dim: int) -> GaussianPosteriors:
        if self.posteriors is None:
            zeros = torch.zeros(len(self.rm_names), dim, dtype=torch.float64)
            self.posteriors = GaussianPosteriors.prior(zeros, self.lambda0, self.sigma2)
            self.anchor = forgetting_anchor(zeros, self.lambda0, self.sigma2, self.forget_toward)
        return self.posteriors

    def scores(self, h: Tensor) -> Tensor:
        """`[P, N]` routing scores of pairs `h [P, d]`: Thompson draws, offline scores, or their weighted sum; less
        `cost_weight * cost` on the reward's scale (a centred reward `2 p - 1` moves twice as far as the chance `p`
        it stands for)."""
        if not self.cost_weight:
            return self.reward_scores(h)
        costs = self.declared_costs()
        scores = self.reward_scores(h, predicted=True)
        scale = 2.0 if self.centred_rewards else 1.0
        return scores - scale * self.cost_weight * costs.to(scores)

    def reward_scores(self, h: Tensor, predicted: bool = False) -> Tensor:
        """`[P, N]` Thompson draws, offline scores, or their weighted sum. The no-online offline scores rank alone
        unless `predicted`, when they are put on the reward's scale (`prior_scale`) to be weighed against cost."""
        if not self.online_updates:
            offline = h @ self.offline_scores.T
            return self.prior_scale * offline if predicted else offline
        sampled = self._posteriors(h.shape[1]).sample_scores(h, self.generator)
        if self.integration == "weighted_score":
            offline = self.prior_scale * (h @ self.offline_scores.T)
            return self.offline_weight * offline + (1 - self.offline_weight) * sampled
        return sampled

    def context(self, pairs: PairBatch) -> Tensor:
        """`[P, d]` float64 CPU features the posteriors score: the prior's pair embedding `h`."""
        return self.embedder.pairs(pairs)

    def label(self, pairs: PairBatch, judge: PairJudge) -> Routing:
        h = self.context(pairs)
        # Thompson draws over every rank's pairs, so the generator advances alike everywhere; each keeps its slice.
        every_h, mine = self.all_gather_rows(h)
        scores = self.scores(every_h)[mine]
        # only among the RMs that can judge each pair: one that would abstain yields no label and teaches nothing
        if self.eligible_only:
            chosen = best_eligible(scores, ask_eligible(judge, pairs, len(self.rm_names)).to(scores.device))
        else:
            chosen = scores.argmax(dim=1)
        margins = ask_by_rm(judge, pairs, chosen)
        return Routing(preference(margins), chosen, rm_calls=len(pairs), context=h)

    def observe(self, routing: Routing, losses: Tensor) -> None:
        if not self.online_updates:
            return
        # Every rank learns from every rank's pairs (in rank order), so all apply the same update.
        losses, _ = self.all_gather_rows(losses.detach().to("cpu", torch.float64))
        preference, _ = self.all_gather_rows(routing.preference.detach().cpu())
        rm_index, _ = self.all_gather_rows(routing.rm_index.detach().cpu())
        h, _ = self.all_gather_rows(routing.context)
        labelled = preference != 0
        finite = torch.isfinite(losses)
        bad = int((labelled & ~finite).sum())
        if bad:
            self.nonfinite_losses += bad
            log.warning("BayesianRouter: skipped %d non-finite DPO losses of labelled pairs (not learned from)", bad)
        keep = finite & labelled & (rm_index >= 0)
        if not keep.any():
            return
        raw = batch_baseline(losses[keep])
        reward, rm_index, h = self.normalizer(raw), rm_index[keep], h[keep]
        if self.warmup_rewards == "held":
            released = self.held.release(self.normalizer, rm_index, h, raw)
            if released is None:
                return
            rm_index, h, reward = released
        if self.centred_rewards:
            reward = centred(reward)
        posteriors = self._posteriors(h.shape[1])
        if self.forgetting < 1:
            posteriors.forget(self.forgetting, self.anchor)
        posteriors.update(rm_index, h, reward)

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "router/nonfinite_losses": float(self.nonfinite_losses)}

    def state_dict(self) -> dict[str, Any]:
        state = {
            **super().state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "generator": self.generator.get_state(),
            "nonfinite_losses": self.nonfinite_losses,
            "held": self.held.state_dict(),
        }
        if self.posteriors is not None:
            state["posteriors"] = self.posteriors.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "posteriors" in state_dict:
            dim = state_dict["posteriors"]["vector"].shape[1]
            if self.posteriors is not None and self.posteriors.dim != dim:
                raise ValueError(
                    f"checkpointed posteriors have dimension {dim}, this router's h has {self.posteriors.dim}"
                )
            self._posteriors(dim).load_state_dict(state_dict["posteriors"])
        self.normalizer.load_state_dict(state_dict["normalizer"])
        self.generator.set_state(state_dict["generator"])
        self.nonfinite_losses = int(state_dict["nonfinite_losses"])
        self.held.load_state_dict(state_dict["held"])
        super().load_state_dict(state_dict)


def forgetting_anchor(means: Tensor, lambda0: float, sigma2: float, toward: str) -> GaussianPosteriors:
    """Where forgetting returns the posteriors to: their prior means held with the precision of one reward
    (`prior_mean`), or the prior `N(means, I / lambda0)` itself (`prior`)."""
    return GaussianPosteriors.prior(means, 1.0 / sigma2 if toward == "prior_mean" else lambda0, sigma2)


def checked_forgetting(factor: float, toward: str) -> tuple[float, str]:
    if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
        raise ValueError(f"forgetting must lie in (0, 1] (1: never forget), got {factor!r}")
    if toward not in ("prior_mean", "prior"):
        raise ValueError(f"forget_toward must be 'prior_mean' or 'prior', got {toward!r}")
    return float(factor), toward


def calibrated_scale(prior: RouterPrior) -> float:
    """The prior's `reward_scale` metadata, checked."""
    scale = prior.metadata.get("reward_scale")
    if not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale >= 0):
        raise ValueError(
            f"prior_scale: calibrated, but the prior {prior.source or ''} has no reward_scale (got {scale!r}; the "
            "offline fit writes it from its validation split): refit the offline router, or give prior_scale a number"
        )
    return float(scale)


def prior_encoder_mismatch(
    prior: RouterPrior, encoder: str | None, pooling: str | None, max_length: int | None
) -> tuple[str, str] | None:
    """`(key, why)` when `encoder`, `pooling` or `max_length` (each None, or what a config states) differs from the
    prior's own pair encoder, else None: the prior's BT embeddings live in that encoder's space."""
    where = f" {prior.source}" if prior.source else ""
    for key, given, built in (
        ("encoder", encoder, prior.encoder),
        ("pooling", pooling, prior.pooling),
        ("max_length", max_length, prior.max_length),
    ):
        if given is not None and given != built:
            return key, (
                f"{given!r}, but the router prior{where} was built with {key} {built!r}: leave {key} out (the "
                f"prior's is used), or train the offline router with {key} {given!r}"
            )
    return None
