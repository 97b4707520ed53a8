"""Per-RM Bayesian linear regression in information form: the online router's posteriors, with no Trainer.

RM `n` models the reward of a pair with embedding `h` as `r = w_n^T h + eps`, `eps ~ N(0, sigma2)`. Its Gaussian
posterior `N(mu_n, Sigma_n)` is kept as precision `Lambda_n = Sigma_n^-1` and vector `b_n = Lambda_n mu_n`, so an
update is a plain sum. State is two tensors and a float, exposed through `state_dict()` for a callback to checkpoint;
every draw takes an explicit `torch.Generator`.

Routing needs `Sigma_n` (a score's variance is `h^T Sigma_n h`). From d = 128 on (`rank_updates`) it is kept
beside the precision and updated in place by Woodbury's identity on the rows each RM got: `O(m d^2)` for `m` rows
instead of refactorising a `d x d` precision, `O(d^3)`. Every `refresh_every` updates of an RM its covariance is
re-derived exactly from its precision, so round-off cannot build up; `rank_updates=False` is the exact form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

# Relative jitter ladder for a precision that round-off left not quite positive definite (it is lambda0 I plus a sum
# of outer products, so exact arithmetic never needs it).
_JITTERS = (1e-10, 1e-8, 1e-6)


class GaussianPosteriors:
    """`N` Gaussian posteriors over `d`-dimensional weights, one per RM, in information form.

    Tensors live on the device and dtype of `precision`; inputs are moved there, outputs are returned there. float64
    is the intended dtype: the precision sums thousands of rank-one terms on top of a small prior.

    Args:
        precision: `[N, d, d]` symmetric positive definite precisions `Lambda_n`.
        vector: `[N, d]` information vectors `b_n = Lambda_n mu_n`.
        sigma2: Observation noise variance of the rewards; each update is scaled by `1 / sigma2`.
        rank_updates: Keep the covariances and update them by Woodbury's identity; false refactorises each changed
            precision and scores by triangular solves (the exact form). None: rank updates from `d >= 128` on,
            where `benchmarks/router_math.py` measured them faster, and slower at d = 32 and 64
            (`docs/router_math.md`).
        refresh_every: With `rank_updates`, an RM's covariance is re-derived from its precision after this many
            updates of that RM.
    """

    def __init__(
        self,
        precision: Tensor,
        vector: Tensor,
        sigma2: float,
        rank_updates: bool | None = None,
        refresh_every: int = 256,
    ) -> None:
        if precision.ndim != 3 or precision.shape[1] != precision.shape[2] or not precision.is_floating_point():
            raise ValueError(f"precision must be a float tensor [N, d, d], got shape {list(precision.shape)}")
        if vector.shape != precision.shape[:2]:
            raise ValueError(f"vector must be [N, d] = {list(precision.shape[:2])}, got {list(vector.shape)}")
        if not (isinstance(sigma2, (int, float)) and math.isfinite(sigma2) and sigma2 > 0):
            raise ValueError(f"sigma2 must be a positive finite noise variance, got {sigma2!r}")
        if not (torch.isfinite(precision).all() and torch.isfinite(vector).all()):
            raise ValueError("precision and vector must be finite")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1, got {refresh_every}")
        # Own, contiguous copies: updates write the changed RMs' rows in place.
        self.precision = precision.detach().clone(memory_format=torch.contiguous_format)
        self.vector = vector.detach().to(precision, copy=True).contiguous()
        self.sigma2 = float(sigma2)
        rank_updates = precision.shape[1] >= 128 if rank_updates is None else rank_updates
        self.rank_updates, self.refresh_every = bool(rank_updates), int(refresh_every)
        self._cholesky: Tensor | None = None
        self._stale: Tensor | None = None  # [N] bool: RMs whose factor an update left out of date
        self._covariance: Tensor | None = None  # [N, d, d] Sigma_n, kept current by rank updates
        self._since_refresh = torch.zeros(precision.shape[0], dtype=torch.long)  # rank updates per RM since exact

    @classmethod
    def prior(
        cls, means: Tensor, lambda0: float, sigma2: float, dtype: torch.dtype = torch.float64
    ) -> GaussianPosteriors:
        """The prior `N(means[n], I / lambda0)` per RM: `Lambda = lambda0 I`, `b = lambda0 * means`.

        Args:
            means: `[N, d]` prior means, e.g. the offline prior's `bt_embeddings` (zeros for the no-prior ablation).
            lambda0: Prior precision; larger trusts the prior means for longer.
            sigma2: Observation noise variance of the rewards.
            dtype: Floating dtype of the state.
        """
        if means.ndim != 2:
            raise ValueError(f"means must be [N, d], got shape {list(means.shape)}")
        if not (isinstance(lambda0, (int, float)) and math.isfinite(lambda0) and lambda0 > 0):
            raise ValueError(f"lambda0 must be a positive finite precision, got {lambda0!r}")
        means = means.detach().to(dtype)
        n, d = means.shape
        eye = torch.eye(d, dtype=dtype, device=means.device)
        return cls(lambda0 * eye.expand(n, d, d), lambda0 * means, sigma2)  # the constructor copies

    @property
    def num_rms(self) -> int:
        return self.precision.shape[0]

    @property
    def dim(self) -> int:
        return self.precision.shape[1]

    def means(self) -> Tensor:
        """`[N, d]` posterior means `mu_n = Lambda_n^-1 b_n`: `Sigma_n b_n`, or Cholesky solves without rank updates."""
        if self.rank_updates:
            return (self.covariance() @ self.vector.unsqueeze(-1)).squeeze(-1)
        return torch.cholesky_solve(self.vector.unsqueeze(-1), self._factor()).squeeze(-1)

    def covariance(self) -> Tensor:
        """`[N, d, d]` posterior covariances `Sigma_n = Lambda_n^-1`."""
        if not self.rank_updates:
            return torch.cholesky_inverse(self._factor())
        if self._covariance is None:
            self._covariance = torch.cholesky_inverse(self._factor())
            self._since_refresh.zero_()
        return self._covariance

    def score_moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of the scalar score `h_i^T w_n` under each posterior.

        Args:
            h: `[B, d]` pair embeddings.

        Returns:
            `(mean, var)`, both `[B, N]`: `h^T mu_n` and `h^T Sigma_n h = ||L_n^-1 h||^2` with `Lambda_n = L_n L_n^T`.
        """
        h = self._check_h(h, "h")
        if self.rank_updates:  # one [B, d] x [d, d] product per RM serves both: h^T mu = (Sigma h)^T b
            projected = h @ self.covariance()  # [N, B, d]
            return (projected @ self.vector.unsqueeze(-1)).squeeze(-1).T, (projected * h).sum(dim=-1).T
        mean = h @ self.means().T
        whitened = torch.linalg.solve_triangular(self._factor(), h.T.expand(self.num_rms, -1, -1), upper=False)
        return mean, whitened.square().sum(dim=1).T

    def sample_scores(self, h: Tensor, generator: torch.Generator) -> Tensor:
        """`[B, N]` Thompson scores: per pair and RM an independent draw of `h^T w_n ~ N(h^T mu_n, h^T Sigma_n h)`.

        Exact for each pair on its own (only this scalar enters its argmax), and needs no factorisation per draw.
        """
        mean, var = self.score_moments(h)
        return mean + var.sqrt() * _standard_normal(mean.shape, generator, mean)

    def thompson_select(self, h: Tensor, generator: torch.Generator) -> Tensor:
        """`LongTensor[B]`: the RM with the highest Thompson score for each pair (see `sample_scores`)."""
        return self.sample_scores(h, generator).argmax(dim=1)

    def sample_weights(self, num_draws: int, generator: torch.Generator) -> Tensor:
        """`[num_draws, N, d]` whole weight vectors `w_n = mu_n + L_n^-T z`, `z ~ N(0, I)`, so `Cov = Lambda_n^-1`."""
        if num_draws < 0:
            raise ValueError(f"num_draws must be non-negative, got {num_draws}")
        noise = _standard_normal((self.num_rms, self.dim, num_draws), generator, self.vector)
        offsets = torch.linalg.solve_triangular(self._factor().mT, noise, upper=True)
        return self.means().unsqueeze(0) + offsets.permute(2, 0, 1)

    def full_vector_sample(self, h: Tensor, generator: torch.Generator) -> Tensor:
        """`[B, N]` scores `h_i^T w_{i,n}` with a whole `w_{i,n} ~ N(mu_n, Sigma_n)` drawn per pair: the reference
        that `sample_scores` must match in distribution, at the cost of a `d`-dimensional draw per pair and RM."""
        h = self._check_h(h, "h")
        return torch.einsum("bd,bnd->bn", h, self.sample_weights(h.shape[0], generator))

    def update(self, rm_index: Tensor, h: Tensor, reward: Tensor) -> None:
        """Adds the rows routed to each RM: `Lambda_n += sum h h^T / sigma2`, `b_n += sum r h / sigma2` over `n`'s rows.

        All or nothing: non-finite inputs, an unknown RM index or an overflow raise `ValueError` before the state is
        touched, so a bad batch can never leave a corrupted posterior behind.

        Args:
            rm_index: `LongTensor[M]`, the RM each row was routed to.
            h: `[M, d]` the rows' pair embeddings.
            reward: `[M]` the rows' (normalised) rewards.
        """
        h = self._check_h(h, "h")
        reward = reward.detach().to(self.precision)
        rm_index = rm_index.detach().to(self.precision.device)
        m = h.shape[0]
        if rm_index.shape != (m,) or reward.shape != (m,):
            raise ValueError(
                f"rm_index and reward must be [M] for h of shape {list(h.shape)}, got {list(rm_index.shape)} and "
                f"{list(reward.shape)}"
            )
        if rm_index.dtype not in (torch.int64, torch.int32):  # a bool tensor would index as a mask
            raise ValueError(f"rm_index must be an integer (int64 or int32) tensor, got dtype {rm_index.dtype}")
        if m and (rm_index.min() < 0 or rm_index.max() >= self.num_rms):
            raise ValueError(f"rm_index must lie in [0, {self.num_rms}), got values {rm_index.unique().tolist()}")
        if not torch.isfinite(reward).all():
            raise ValueError(f"rewards must be finite, got {reward.tolist()}; the posterior is left unchanged")
        keeps_covariance = self.rank_updates and self._covariance is not None
        if keeps_covariance:
            self._add_per_rm(rm_index, h, reward)
        else:
            self._add_batched(rm_index, h, reward)
        changed = torch.zeros(self.num_rms, dtype=torch.bool, device=self.precision.device)
        changed[rm_index] = True
        self._stale = changed if self._stale is None else self._stale | changed
        if keeps_covariance:
            self._refresh_worn()

    def forget(self, factor: float, prior: GaussianPosteriors) -> None:
        """Exponential forgetting toward `prior`: `Lambda_n = g Lambda_n + (1 - g) Lambda0_n` and `b_n = g b_n +
        (1 - g) b0_n` with `g = factor`, so a reward seen `k` forgettings ago weighs `g^k` and, with no new rewards, a
        posterior returns to its prior (stabilised forgetting: the precision never falls below `(1 - g) Lambda0_n`,
        so it stays positive definite and its variance bounded). `factor = 1` changes nothing.
        See docs/concepts/method.md, "Forgetting (rmrouter's extension, off by default)".

        Args:
            factor: `g` in `(0, 1]`.
            prior: The posteriors to forget toward (the router's starting point), of the same shape.
        """
        if not (isinstance(factor, (int, float)) and 0 < factor <= 1):
            raise ValueError(f"the forgetting factor must lie in (0, 1], got {factor!r}")
        if prior.precision.shape != self.precision.shape:
            raise ValueError(f"prior precision {list(prior.precision.shape)} != {list(self.precision.shape)}")
        if factor == 1:
            return
        prior_precision, prior_vector = prior.precision.to(self.precision), prior.vector.to(self.vector)
        self.precision = factor * self.precision + (1 - factor) * prior_precision
        self.vector = factor * self.vector + (1 - factor) * prior_vector
        self._cholesky, self._stale, self._covariance = None, None, None  # every RM changed: derived anew
        self._since_refresh.zero_()

    def _add_batched(self, rm_index: Tensor, h: Tensor, reward: Tensor) -> None:
        """The update for the exact form: every RM's sum of outer products as one batched product over a one-hot
        mask (`N` times the flops of per-RM sums, but one call, and dwarfed by the refactorisation that follows)."""
        routed = torch.zeros(self.num_rms, len(h), dtype=h.dtype, device=h.device)
        routed[rm_index, torch.arange(len(h), device=h.device)] = 1.0
        precision = self.precision + (routed.unsqueeze(-1) * h).mT @ h / self.sigma2
        vector = (
            self.vector + torch.zeros_like(self.vector).index_add_(0, rm_index, reward.unsqueeze(1) * h) / self.sigma2
        )
        if not (torch.isfinite(precision).all() and torch.isfinite(vector).all()):
            raise ValueError("the update overflows (h or reward too large); the posterior is left unchanged")
        self.precision, self.vector = precision, vector

    def _add_per_rm(self, rm_index: Tensor, h: Tensor, reward: Tensor) -> None:
        """The update for the rank form, in place and per RM that got rows: `O(m d^2)` for its `m` rows, checked
        for overflow on every RM before any is written."""
        updates = []
        for n in rm_index.unique().tolist():
            mine = rm_index == n
            rows = h[mine]
            vector = self.vector[n] + reward[mine] @ rows / self.sigma2
            # No entry of a positive definite Lambda exceeds its largest diagonal one, nor any of h^T h the rows'
            # squared norms: where twice their sum is finite, adding in place cannot overflow.
            bound = 2 * (self.precision[n].diagonal().max() + rows.square().sum() / self.sigma2)
            if not (torch.isfinite(bound) and torch.isfinite(vector).all()):
                raise ValueError("the update overflows (h or reward too large); the posterior is left unchanged")
            updates.append((n, rows, vector))
        for n, rows, vector in updates:
            self.precision[n].addmm_(rows.mT, rows, alpha=1 / self.sigma2)
            self.vector[n] = vector
            self._update_covariance(n, rows)

    def _update_covariance(self, n: int, rows: Tensor) -> None:
        """Adds `rows` to RM `n`'s covariance in place by Woodbury's identity: with `U = H Sigma` and
        `sigma2 I + U H^T = L L^T`, `Sigma' = Sigma - W^T W` for `W = L^-1 U`, so it costs `O(m d^2)` for `m` rows."""
        covariance = self._covariance[n]
        u = rows @ covariance  # [m, d]
        noise = self.sigma2 * torch.eye(len(rows), dtype=u.dtype, device=u.device)
        factor, info = torch.linalg.cholesky_ex(torch.addmm(noise, u, rows.mT))
        if info:  # round-off broke Sigma's positive definiteness: re-derive this RM exactly instead
            self._since_refresh[n] = self.refresh_every
            return
        w = torch.linalg.solve_triangular(factor, u, upper=False)
        covariance.addmm_(w.mT, w, alpha=-1)
        self._since_refresh[n] += 1

    def _refresh_worn(self) -> None:
        """Re-derives from the precision, exactly, the covariance of every RM updated `refresh_every` times since."""
        worn = torch.nonzero(self._since_refresh >= self.refresh_every).flatten()
        if len(worn):
            rows = worn.to(self._covariance.device)
            self._covariance[rows] = torch.cholesky_inverse(self._factor()[rows])
            self._since_refresh[worn] = 0

    def state_dict(self) -> dict[str, Any]:
        """The whole state: `precision`, `vector` (tensors) and `sigma2` (a float)."""
        return {"precision": self.precision.clone(), "vector": self.vector.clone(), "sigma2": self.sigma2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a `state_dict()` of posteriors with the same `N`, `d` and `sigma2`, checked before any change."""
        missing = {"precision", "vector", "sigma2"} - set(state)
        if missing:
            raise ValueError(f"posterior state lacks {sorted(missing)}; expected a GaussianPosteriors.state_dict()")
        precision, vector = state["precision"], state["vector"]
        if tuple(precision.shape) != tuple(self.precision.shape) or tuple(vector.shape) != tuple(self.vector.shape):
            raise ValueError(
                f"posterior state has precision {list(precision.shape)} and vector {list(vector.shape)}, but this "
                f"router has {self.num_rms} RMs of dimension {self.dim} (precision {list(self.precision.shape)}): "
                "resume with the same RM pool and pair encoder"
            )
        if not math.isclose(float(state["sigma2"]), self.sigma2, rel_tol=1e-9):
            raise ValueError(
                f"posterior state was built with sigma2={state['sigma2']}, this router has sigma2={self.sigma2}: "
                "resume with the same sigma2 (the precision's scale depends on it)"
            )
        # The constructor copies both tensors.
        loaded = GaussianPosteriors(precision.to(self.precision), vector.to(self.vector), self.sigma2)
        loaded._factor()  # refuses a precision that is not positive definite before it replaces ours
        self.precision, self.vector, self._cholesky = loaded.precision, loaded.vector, loaded._cholesky
        self._stale, self._covariance = None, None

    def _check_h(self, h: Tensor, name: str) -> Tensor:
        if h.ndim != 2 or h.shape[1] != self.dim:
            raise ValueError(f"{name} must be [B, {self.dim}], got shape {list(h.shape)}")
        h = h.detach().to(self.precision)
        if not torch.isfinite(h).all():
            raise ValueError(f"{name} has non-finite entries (NaN or inf); nothing was computed or changed")
        return h

    def _factor(self) -> Tensor:
        """Lower Cholesky factors `[N, d, d]` of the precisions, cached; after an update only the RMs it changed are
        refactorised (one arm per batch under LASER)."""
        if self._cholesky is None:
            self._cholesky = self._factorise(self.precision, torch.arange(self.num_rms))
        elif self._stale is not None and self._stale.any():
            rows = torch.nonzero(self._stale).flatten()
            self._cholesky[rows] = self._factorise(self.precision[rows], rows)
        self._stale = None
        return self._cholesky

    def _factorise(self, precision: Tensor, rms: Tensor) -> Tensor:
        symmetric = (precision + precision.mT) / 2  # matmul round-off can break exact symmetry
        factor, info = torch.linalg.cholesky_ex(symmetric)
        scale = symmetric.diagonal(dim1=1, dim2=2).mean(dim=1).abs().clamp_min(1e-30)
        eye = torch.eye(self.dim, dtype=symmetric.dtype, device=symmetric.device)
        for jitter in _JITTERS:
            if not info.any():
                break
            retry, info_retry = torch.linalg.cholesky_ex(symmetric + (jitter * scale)[:, None, None] * eye)
            factor = torch.where((info > 0)[:, None, None], retry, factor)
            info = torch.where(info > 0, info_retry, info)
        if info.any():
            bad = rms[torch.nonzero(info).flatten().cpu()].tolist()
            raise ValueError(f"precision of RMs {bad} is not positive definite; the posterior state is invalid")
        return factor


def _standard_normal(shape: tuple[int, ...] | torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """Draws on the generator's own device, then moves: a CPU generator shared by every rank works for any device."""
    draws = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=like.dtype)
    return draws.to(like.device)
