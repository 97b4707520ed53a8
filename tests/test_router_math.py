"""The online routers' pure math: Gaussian posteriors and Thompson sampling, the quantile normaliser, LinUCB, UWO and
the majority vote, checked against closed forms, reference samplers and small learning problems."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from rmrouter.routers import GaussianPosteriors, LinUCB, QuantileNormalizer, batch_baseline, majority_vote, uwo_scores
from rmrouter.routers.decisions import majority_vote_credit


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trained_posteriors() -> GaussianPosteriors:
    """Three RMs in 4-d with close means and unequal, correlated covariances: every RM wins a fair share of draws."""
    g = seeded(0)
    means = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1) * 0.3
    post = GaussianPosteriors.prior(means, lambda0=2.0, sigma2=0.5)
    h = torch.randn(12, 4, generator=g)
    post.update(torch.tensor([0] * 6 + [1] * 3 + [2] * 3), h, torch.rand(12, generator=g))
    return post


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


# Gaussian posteriors


def test_prior_injection_gives_prior_means_and_lambda0_sets_the_precision():
    means = torch.nn.functional.normalize(torch.randn(3, 5, generator=seeded(1)), dim=-1)
    for lambda0 in (0.5, 4.0):
        post = GaussianPosteriors.prior(means, lambda0=lambda0, sigma2=1.0)
        assert torch.allclose(post.means(), means.double(), atol=1e-12)
        assert torch.equal(post.precision, lambda0 * torch.eye(5, dtype=torch.float64).expand(3, 5, 5))
        assert torch.allclose(post.vector, lambda0 * means.double())
        h = torch.randn(2, 5, generator=seeded(2), dtype=torch.float64)
        mean, var = post.score_moments(h)
        assert torch.allclose(mean, h @ means.double().T)
        assert torch.allclose(var, (h.square().sum(1, keepdim=True) / lambda0).expand(2, 3))


def test_update_on_hand_computed_2d_data_equals_the_closed_form():
    post = GaussianPosteriors.prior(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), lambda0=2.0, sigma2=0.5)
    # Both rows go to RM 1: Lambda_1 = 2 I + [[2, 1], [1, 1]] / 0.5 = [[6, 2], [2, 4]], b_1 = (2, 0) + (1, 1) / 0.5.
    post.update(torch.tensor([1, 1]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), torch.tensor([1.0, 0.0]))
    assert torch.equal(post.precision[1], torch.tensor([[6.0, 2.0], [2.0, 4.0]], dtype=torch.float64))
    assert torch.equal(post.vector[1], torch.tensor([4.0, 2.0], dtype=torch.float64))
    # mu_1 = [[4, -2], [-2, 6]] / 20 (4, 2) = (0.6, 0.2); RM 0 keeps its prior.
    assert torch.allclose(post.means(), torch.tensor([[1.0, 0.0], [0.6, 0.2]], dtype=torch.float64), atol=1e-12)
    _, var = post.score_moments(torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(var, torch.tensor([[0.5, 4.0 / 20]], dtype=torch.float64))
    post.update(torch.tensor([1]), torch.tensor([[0.0, 1.0]]), torch.tensor([-3.0]))
    assert torch.allclose(post.means()[1], torch.linalg.solve(post.precision[1], post.vector[1]), atol=1e-12)


def test_batched_update_equals_one_row_at_a_time_and_empty_update_is_a_no_op():
    g = seeded(3)
    h, reward, index = torch.randn(20, 4, generator=g), torch.randn(20, generator=g), torch.randint(0, 3, (20,))
    batched, sequential = trained_posteriors(), trained_posteriors()
    batched.update(index, h, reward)
    for row in range(20):
        sequential.update(index[row : row + 1], h[row : row + 1], reward[row : row + 1])
    assert torch.allclose(batched.precision, sequential.precision) and torch.allclose(batched.vector, sequential.vector)
    before = batched.state_dict()
    batched.update(torch.empty(0, dtype=torch.long), torch.empty(0, 4), torch.empty(0))
    assert state_equal(before, batched.state_dict())


def test_score_variance_is_h_sigma_h_with_the_explicit_inverse():
    post = trained_posteriors()
    h = torch.randn(5, 4, generator=seeded(4), dtype=torch.float64)
    _, var = post.score_moments(h)
    expected = torch.einsum("bi,nij,bj->bn", h, torch.linalg.inv(post.precision), h)
    assert torch.allclose(var, expected, atol=1e-12)


def test_thompson_marginal_sampling_matches_full_vector_sampling_in_distribution():
    post, draws = trained_posteriors(), 20_000
    h = torch.tensor([[0.8, -0.4, 0.5, 1.0]]).expand(draws, 4)
    marginal = torch.bincount(post.thompson_select(h, seeded(5)), minlength=3).double() / draws
    full_scores = post.full_vector_sample(h, seeded(6))
    full = torch.bincount(full_scores.argmax(1), minlength=3).double() / draws
    assert (marginal > 0.05).all()  # a posterior where every RM has a real chance, else the test says little
    stderr = (2 * marginal * (1 - marginal) / draws).sqrt()
    assert ((marginal - full).abs() < 5 * stderr).all(), (marginal, full)
    mean, var = post.score_moments(h[:1])
    for scores in (full_scores, post.sample_scores(h, seeded(7))):
        assert ((scores.mean(0) - mean[0]).abs() < 5 * (var[0] / draws).sqrt()).all()
        assert ((scores.var(0) - var[0]).abs() < 5 * var[0] * math.sqrt(2 / draws)).all()


def test_posterior_learns_which_rm_is_right_in_each_cluster():
    g = seeded(8)
    centres = torch.tensor([[1.0, 0.2], [0.2, 1.0]])  # RM c is right on cluster c
    # A misleading prior: RM 0 looks better everywhere, so on cluster 1 the data must overturn it.
    prior = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]), dim=-1)
    post = GaussianPosteriors.prior(prior, lambda0=1.0, sigma2=0.25)
    assert post.score_moments(centres)[0].argmax(1).tolist() == [0, 0]
    right = torch.zeros(2)
    for step in range(300):
        cluster = torch.arange(8) % 2
        h = centres[cluster] + 0.1 * torch.randn(8, 2, generator=g)
        chosen = post.thompson_select(h, g)
        reward = (chosen == cluster).double()
        post.update(chosen, h, reward)
        if step >= 250:
            right.index_add_(0, cluster, reward.float())
    assert (right / (50 * 4) > 0.9).all(), right


@pytest.mark.parametrize(
    ("h", "reward", "index", "match"),
    [
        (torch.ones(2, 2), torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]), "rewards must be finite"),
        (torch.ones(2, 2), torch.tensor([1.0, float("inf")]), torch.tensor([0, 1]), "rewards must be finite"),
        (torch.tensor([[1.0, float("nan")], [1, 1]]), torch.ones(2), torch.tensor([0, 1]), "non-finite"),
        (torch.ones(2, 2), torch.ones(2), torch.tensor([0, 2]), r"rm_index must lie in \[0, 2\)"),
        (torch.ones(2, 2), torch.ones(3), torch.tensor([0, 1]), "must be \\[M\\]"),
        (torch.ones(2, 3), torch.ones(2), torch.tensor([0, 1]), r"h must be \[B, 2\]"),
        (torch.ones(2, 2), torch.ones(2), torch.tensor([0.0, 1.0]), "integer"),
        (torch.ones(2, 2), torch.ones(2), torch.tensor([True, False]), "integer"),
        (torch.full((1, 2), 1e200, dtype=torch.float64), torch.ones(1), torch.tensor([0]), "overflows"),
        # RM 0's rows are fine and come first; RM 1's overflow must stop both.
        (
            torch.tensor([[0.5, 0.5], [1e200, 1e200]], dtype=torch.float64),
            torch.ones(2),
            torch.tensor([0, 1]),
            "overflows",
        ),
    ],
)
@pytest.mark.parametrize("rank_updates", [False, True], ids=["exact", "rank"])
def test_bad_updates_are_rejected_and_leave_the_posterior_untouched(h, reward, index, match, rank_updates):
    post = GaussianPosteriors.prior(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), lambda0=1.0, sigma2=1.0)
    post.rank_updates = rank_updates
    post.update(torch.tensor([0]), torch.tensor([[0.5, 0.5]]), torch.tensor([1.0]))
    before, means, covariance = post.state_dict(), post.means(), post.covariance().clone()
    with pytest.raises(ValueError, match=match):
        post.update(index, h, reward)
    assert state_equal(before, post.state_dict()) and torch.equal(means, post.means())
    assert torch.equal(covariance, post.covariance())


def test_state_dict_round_trip_with_restored_generator_gives_identical_future_draws():
    post, g = trained_posteriors(), seeded(9)
    post.thompson_select(torch.randn(4, 4), g)
    buffer = io.BytesIO()
    torch.save({"router": post.state_dict(), "rng": g.get_state()}, buffer)
    h = torch.randn(6, 4, generator=seeded(10))

    def future(posteriors: GaussianPosteriors, generator: torch.Generator) -> list[torch.Tensor]:
        picks = []
        for _ in range(3):
            picks.append(posteriors.thompson_select(h, generator))
            posteriors.update(picks[-1], h, torch.rand(6, generator=generator))
        return picks + [posteriors.sample_weights(2, generator)]

    expected = future(post, g)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = GaussianPosteriors.prior(torch.zeros(3, 4), lambda0=7.0, sigma2=0.5)
    restored.load_state_dict(saved["router"])
    g_restored = torch.Generator()
    g_restored.set_state(saved["rng"])
    assert all(torch.equal(a, b) for a, b in zip(expected, future(restored, g_restored), strict=True))


def test_load_state_dict_refuses_other_shapes_sigma2_and_damaged_precision():
    post = trained_posteriors()
    state = post.state_dict()
    with pytest.raises(ValueError, match="3 RMs of dimension 4"):
        post.load_state_dict({**state, "precision": torch.eye(5).expand(3, 5, 5), "vector": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match="sigma2=1.0, this router has sigma2=0.5"):
        post.load_state_dict({**state, "sigma2": 1.0})
    with pytest.raises(ValueError, match=r"lacks \['vector'\]"):
        post.load_state_dict({"precision": state["precision"], "sigma2": 0.5})
    with pytest.raises(ValueError, match="not positive definite"):
        post.load_state_dict({**state, "precision": -state["precision"]})
    assert state_equal(state, post.state_dict())


# Quantile normaliser


def test_batch_baseline_is_mean_loss_minus_loss():
    assert torch.equal(batch_baseline(torch.tensor([1.0, 2.0, 3.0, 6.0])), torch.tensor([2.0, 1.0, 0.0, -3.0]))
    with pytest.raises(ValueError, match="non-empty"):
        batch_baseline(torch.empty(0))


def test_normalizer_warms_up_then_maps_quantiles_of_history_including_the_new_batch():
    normalizer = QuantileNormalizer(warmup=20)
    for value in range(19):
        assert normalizer(torch.tensor([float(value)])).item() == 0.5
    # The 20th value completes the warm-up and is itself normalised: q20 = 3.8, q80 = 15.2 over 0..19.
    assert normalizer(torch.tensor([19.0])).item() == 1.0
    out = normalizer.normalize(torch.tensor([0.0, 3.8, 9.5, 15.2, 30.0]))
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    batch = QuantileNormalizer(warmup=20)(torch.arange(20, dtype=torch.float32))  # one batch fills the warm-up
    assert batch.dtype == torch.float32 and torch.allclose(batch, ((torch.arange(20) - 3.8) / 11.4).clamp(0, 1))


def test_normalizer_degenerate_quantiles_give_one_half_and_non_finite_is_rejected():
    normalizer = QuantileNormalizer(warmup=3)
    assert torch.equal(normalizer(torch.full((5,), 2.0)), torch.full((5,), 0.5))
    # Mostly one value: q20 == q80 although the history has spread.
    assert torch.equal(normalizer(torch.tensor([-9.0, 9.0])), torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="must be finite"):
        normalizer(torch.tensor([1.0, float("nan")]))
    assert normalizer.history.numel() == 7


def test_normalizer_max_history_and_state_round_trip():
    capped = QuantileNormalizer(warmup=2, max_history=5)
    capped(torch.arange(8.0))
    assert torch.equal(capped.history, torch.arange(3.0, 8.0, dtype=torch.float64))
    full = QuantileNormalizer(warmup=2)
    full(torch.arange(8.0))
    copy = QuantileNormalizer(warmup=2)
    copy.load_state_dict(full.state_dict())
    assert torch.equal(copy(torch.tensor([2.5])), full(torch.tensor([2.5])))
    capped.load_state_dict(full.state_dict())  # a smaller cap than the saving run keeps the newest values
    assert torch.equal(capped.history, torch.tensor([4.0, 5.0, 6.0, 7.0, 2.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least warmup"):
        QuantileNormalizer(warmup=20, max_history=10)


# LinUCB


def test_linucb_tries_untried_arms_first_in_index_order():
    bandit, x = LinUCB(num_arms=3, dim=2, alpha=0.1), torch.tensor([0.6, 0.8])
    for arm in range(3):
        assert bandit.select(x) == arm
        bandit.update(arm, x, 0.0)
    # A tried arm's bonus shrinks to alpha sqrt(x^T (I + x x^T)^-1 x) = alpha sqrt(1/2) for a unit x.
    assert torch.allclose(bandit.ucb(x), torch.full((3,), 0.1 * math.sqrt(0.5), dtype=torch.float64))


def test_linucb_ucb_closed_form_and_converges_to_the_best_arm():
    bandit = LinUCB(num_arms=2, dim=2, alpha=0.5)
    bandit.update(0, torch.tensor([1.0, 0.0]), 1.0)  # A_0 = diag(2, 1), b_0 = (1, 0), theta_0 = (0.5, 0)
    ucb = bandit.ucb(torch.tensor([1.0, 0.0]))
    assert torch.allclose(ucb, torch.tensor([0.5 + 0.5 * math.sqrt(0.5), 0.5], dtype=torch.float64))
    # alpha = 1 exceeds every reward's mean term, so each arm is tried; with a small alpha an arm whose first reward
    # beats alpha |x| is kept forever (untried arms' UCB is only alpha |x| under the zero prior).
    g, bandit, picks = seeded(11), LinUCB(num_arms=3, dim=3, alpha=1.0), []
    for _ in range(150):
        x = torch.nn.functional.normalize(torch.ones(3) + 0.2 * torch.randn(3, generator=g), dim=0)
        picks.append(bandit.select(x))
        bandit.update(picks[-1], x, [0.2, 0.5, 0.8][picks[-1]])
    assert picks[-30:] == [2] * 30


def test_linucb_state_round_trip_and_bad_arm():
    bandit = LinUCB(num_arms=2, dim=2, alpha=0.1)
    bandit.update(1, torch.tensor([0.3, 0.4]), 0.9)
    other = LinUCB(num_arms=2, dim=2, alpha=0.1)
    other.load_state_dict(bandit.state_dict())
    assert torch.equal(other.ucb(torch.tensor([1.0, 1.0])), bandit.ucb(torch.tensor([1.0, 1.0])))
    with pytest.raises(ValueError, match=r"arm must be an int in \[0, 2\)"):
        bandit.update(2, torch.ones(2), 1.0)


# UWO and majority vote


def test_uwo_on_a_hand_computed_batch_with_abstentions():
    nan = float("nan")
    scores = torch.tensor([[1.0, 10.0], [2.0, nan], [3.0, 30.0], [nan, nan]])
    out = uwo_scores(scores, coeff=0.5)
    # RM 0 z-scores: (-a, 0, a) with a = sqrt(3/2) (population std); RM 1: (-1, 1) on the rows it scored.
    a = math.sqrt(1.5)
    mean, var = (a + 1) / 2, ((a - 1) / 2) ** 2
    expected = torch.tensor([-mean - 0.5 * var, 0.0, mean - 0.5 * var], dtype=torch.float64)
    assert torch.allclose(out[:3], expected) and out[3].isnan()
    # The common scale makes it invariant to each RM's offset and positive scale.
    rescaled = scores * torch.tensor([3.0, 0.01]) + torch.tensor([-5.0, 100.0])
    assert torch.allclose(uwo_scores(rescaled, coeff=0.5)[:3], expected)
    # An RM with no spread over the batch contributes zeros, not NaN.
    flat = uwo_scores(torch.tensor([[1.0, 4.0], [3.0, 4.0]]), coeff=0.0)
    assert torch.allclose(flat, torch.tensor([-0.5, 0.5], dtype=torch.float64))


def test_majority_vote_counts_like_the_credit_and_breaks_ties_with_the_generator():
    nan = float("nan")
    margins = torch.tensor([[1.0, 2.0, -1.0], [-1.0, -1.0, nan], [1.0, -1.0, nan], [nan, nan, nan], [0.0, 0.0, 0.5]])
    out = majority_vote(margins, seeded(12))
    coins = torch.randint(0, 2, (5,), generator=seeded(12)) * 2 - 1  # one coin per row, used on the tied rows
    assert out.tolist() == [1, -1, coins[2].item(), 0, 1]  # a split vote is a coin; no vote at all is no label
    assert torch.equal(out, majority_vote(margins, seeded(12)))
    credit = majority_vote_credit(margins)
    assert torch.equal(out[credit != 0.5], (2 * credit[credit != 0.5] - 1).long())
    assert not majority_vote(torch.tensor([[nan, 0.0], [0.0, 0.0]]), seeded(12)).any()
    ties = majority_vote(torch.tensor([[1.0, -1.0]]).repeat(2000, 1), seeded(13))
    assert set(ties.unique().tolist()) == {-1, 1} and abs(ties.double().mean().item()) < 0.1


def test_after_an_update_only_the_changed_rms_are_refactorised_and_the_factors_match_a_fresh_one():
    generator = torch.Generator().manual_seed(0)
    posteriors = GaussianPosteriors.prior(torch.randn(4, 6, dtype=torch.float64, generator=generator), 2.0, 0.5)
    before = posteriors._factor().clone()
    h = torch.randn(3, 6, dtype=torch.float64, generator=generator)
    posteriors.update(torch.tensor([2, 2, 0]), h, torch.tensor([0.1, -0.3, 0.7]))
    after = posteriors._factor()
    assert torch.equal(after[[1, 3]], before[[1, 3]])  # untouched RMs keep their factor
    fresh = GaussianPosteriors(posteriors.precision.clone(), posteriors.vector.clone(), 0.5)._factor()
    assert torch.allclose(after, fresh) and not torch.allclose(after[[0, 2]], before[[0, 2]])


def twin_posteriors(num_rms: int, dim: int, refresh_every: int = 256):
    """The same prior in the fast form (Woodbury rank updates) and the exact one (refactorised precisions)."""
    means = torch.randn(num_rms, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    fast = GaussianPosteriors.prior(means, 1.0, 0.5)
    assert not fast.rank_updates  # small d: the exact form is the faster one, and the default
    fast.rank_updates, fast.refresh_every = True, refresh_every
    exact = GaussianPosteriors.prior(means, 1.0, 0.5)
    exact.rank_updates = False
    return fast, exact


@pytest.mark.parametrize("refresh_every", [256, 7], ids=["no-refresh-in-range", "refreshes"])
def test_rank_updates_match_the_exact_refactorised_posteriors_over_many_batches(refresh_every):
    fast, exact = twin_posteriors(4, 12, refresh_every)
    generator = torch.Generator().manual_seed(5)
    for step in range(60):
        h = F.normalize(torch.randn(16, 12, dtype=torch.float64, generator=generator), dim=1)
        rm_index = torch.randint(0, 3, (16,), generator=generator)  # RM 3 never gets a row
        reward = torch.rand(16, dtype=torch.float64, generator=generator)
        for posteriors in (fast, exact):
            posteriors.update(rm_index, h, reward)
        if step % 10 == 0:
            probe = F.normalize(torch.randn(5, 12, dtype=torch.float64, generator=generator), dim=1)
            for a, b in zip(fast.score_moments(probe), exact.score_moments(probe), strict=True):
                assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    # The same sums in another order: per RM in place for the rank form, one batched product for the exact one.
    assert torch.allclose(fast.precision, exact.precision, rtol=1e-13, atol=1e-12)
    assert torch.allclose(fast.vector, exact.vector, rtol=1e-13, atol=1e-12)
    assert torch.allclose(fast.covariance(), fast.covariance().mT, rtol=1e-12, atol=1e-15)  # kept symmetric
    assert torch.allclose(fast.covariance(), torch.linalg.inv(exact.precision), rtol=1e-9, atol=1e-12)
    assert torch.allclose(fast.means(), exact.means(), rtol=1e-9, atol=1e-12)
    draws = [p.sample_scores(probe, torch.Generator().manual_seed(9)) for p in (fast, exact)]
    assert torch.allclose(*draws, rtol=1e-9, atol=1e-12)
    if refresh_every == 7:  # the RMs updated 60 times were re-derived exactly since, the untouched one never
        assert all(count < 7 for count in fast._since_refresh.tolist()) and int(fast._since_refresh[3]) == 0


def test_rank_updates_survive_a_state_round_trip_and_refuse_a_bad_batch_whole():
    fast, _ = twin_posteriors(3, 6)
    h = F.normalize(torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), dim=1)
    fast.score_moments(h)  # builds the covariance the rank updates keep
    fast.update(torch.tensor([0, 1, 1, 2]), h, torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64))
    covariance = fast.covariance().clone()
    with pytest.raises(ValueError, match="rewards must be finite"):
        fast.update(torch.tensor([0]), h[:1], torch.tensor([float("nan")], dtype=torch.float64))
    assert torch.equal(fast.covariance(), covariance)  # left as it was
    restored, _ = twin_posteriors(3, 6)
    restored.load_state_dict(fast.state_dict())
    assert torch.allclose(restored.score_moments(h)[1], fast.score_moments(h)[1], rtol=1e-10)
