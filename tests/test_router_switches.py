"""BayesianRouter's switches beyond the paper (held warm-up rewards, centred rewards, the prior's scale, eligibility),
the prior-scale calibration, routing by data label online, and judges that give per-response scores."""

from __future__ import annotations

import random

import pytest
import torch
from router_helpers import RMS, make_pairs
from test_routers import FakeJudge, OnlyChatRMJudgesOddPairs, dpo_losses

from rmrouter.routers.baseline_routers import DataLabelRouter
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.calibration import fit_prior_scale
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.routers.judges import RecordedJudge, ask_all_scores
from rmrouter.routers.normalizer import QuantileNormalizer, batch_baseline
from rmrouter.routers.posterior import GaussianPosteriors


def router(path, warmup=20, online_updates=True, **switches) -> BayesianRouter:
    return BayesianRouter(
        RMS, prior_path=str(path), sigma2=1.0, lambda0=50.0, warmup=warmup, use_prior=True,
        online_updates=online_updates, integration="prior_injection", offline_weight=0.0, seed=0, **switches,
    )  # fmt: skip


def noisy_losses(preference: torch.Tensor, seed: int) -> torch.Tensor:
    return dpo_losses(preference) + 0.1 * torch.rand(len(preference), generator=torch.Generator().manual_seed(seed))


def test_held_warmup_rewards_are_learned_once_the_normaliser_is_warm_with_their_real_rewards(prior_path):
    held, rng = router(prior_path, warmup_rewards="held"), random.Random(0)
    start = GaussianPosteriors(held.posteriors.precision.clone(), held.posteriors.vector.clone(), 1.0)
    rows = []  # (rm, h, raw) of every pair observed
    for step in range(3):  # 8 raw rewards per batch: warm (20) at the third
        routing = held.route(make_pairs(rng, 8), FakeJudge())
        losses = noisy_losses(routing.preference, step)
        held.observe(routing, losses)
        rows.append((routing.rm_index, routing.context, batch_baseline(losses)))
        if step < 2:
            assert len(held.held) == 8 * (step + 1)
            assert torch.equal(held.posteriors.vector, start.vector)  # nothing learned from placeholders
    assert len(held.held) == 0
    rm, h, raw = (torch.cat(parts) for parts in zip(*rows, strict=True))
    normaliser = QuantileNormalizer(warmup=20)
    normaliser(raw)
    start.update(rm, h, normaliser.normalize(raw))
    assert torch.allclose(held.posteriors.vector, start.vector)
    assert torch.allclose(held.posteriors.precision, start.precision)


def test_the_papers_placeholder_warmup_learns_the_neutral_reward(prior_path):
    paper = router(prior_path)
    start = paper.posteriors.vector.clone()
    routing = paper.route(make_pairs(random.Random(0), 8), FakeJudge())
    paper.observe(routing, noisy_losses(routing.preference, 0))
    learned = paper.posteriors.vector - start
    expected = torch.zeros_like(start).index_add_(0, routing.rm_index, 0.5 * routing.context)
    assert torch.allclose(learned, expected)


def test_centred_rewards_are_twice_the_normalised_reward_minus_one(prior_path):
    plain, centred = router(prior_path, warmup=1), router(prior_path, warmup=1, centred_rewards=True)
    deltas = []
    for r in (plain, centred):
        start = r.posteriors.vector.clone()
        routing = r.route(make_pairs(random.Random(1), 8), FakeJudge())
        r.observe(routing, noisy_losses(routing.preference, 1))
        deltas.append(r.posteriors.vector - start)
    h_sums = torch.zeros_like(deltas[0]).index_add_(0, routing.rm_index, routing.context)
    assert torch.allclose(deltas[1], 2 * deltas[0] - h_sums)


def test_prior_scale_scales_the_prior_means_and_not_the_offline_ranking(prior_path):
    unit, scaled = router(prior_path), router(prior_path, prior_scale=3.0)
    assert torch.allclose(scaled.posteriors.means(), 3.0 * unit.posteriors.means())
    h = unit.embedder.pairs(make_pairs(random.Random(2), 16))
    assert torch.equal(unit.offline_scores, scaled.offline_scores)  # the no-online ablation's ranking
    assert torch.equal(router(prior_path, prior_scale=0.0).posteriors.means(), torch.zeros_like(h[:2]))
    with pytest.raises(ValueError, match="prior_scale"):
        router(prior_path, prior_scale=-1.0)
    with pytest.raises(ValueError, match="warmup_rewards"):
        router(prior_path, warmup_rewards="ignore")


def test_without_eligible_only_the_router_may_pick_an_rm_that_cannot_judge(prior_path):
    pairs = make_pairs(random.Random(3), 32)
    masked = router(prior_path).route(pairs, OnlyChatRMJudgesOddPairs())
    unmasked = router(prior_path, eligible_only=False).route(pairs, OnlyChatRMJudgesOddPairs())
    assert (masked.rm_index[1::2] == 1).all()
    assert (unmasked.rm_index[1::2] == 0).any()  # the prior points RM 0 at these pairs


def test_fit_prior_scale_is_the_least_squares_factor_on_eligible_cells():
    scores = torch.tensor([[0.5, -0.5], [0.2, 0.4]])
    right = torch.tensor([[True, False], [False, True]])
    eligible = torch.tensor([[True, True], [False, True]])
    # y = (1, -1, 1) on s = (0.5, -0.5, 0.4): c = (0.5 + 0.5 + 0.4) / (0.25 + 0.25 + 0.16)
    assert fit_prior_scale(scores, right, eligible) == pytest.approx(1.4 / 0.66)
    assert fit_prior_scale(scores, ~right, eligible) == 0.0  # scores that predict nothing: no prior
    with pytest.raises(ValueError, match="no eligible cell"):
        fit_prior_scale(scores, right, torch.zeros(2, 2, dtype=torch.bool))


def test_data_label_router_routes_by_domain_then_dataset_among_eligible_rms():
    # Training rows: RM 0 is right on math, RM 1 on the alpaca_eval chat domains.
    domains, sources = ["math", "math", "oasst", "vicuna"], ["gsm8k/a", "gsm8k/a", "alpaca_eval/x", "alpaca_eval/y"]
    right = torch.tensor([[True, False], [True, False], [False, True], [False, True]])
    routing = DataLabelRouting.fit(domains, sources, right, torch.ones(4, 2, dtype=torch.bool))
    data_label = DataLabelRouter(RMS, routing)
    pairs = make_pairs(random.Random(4), 4)
    pairs = type(pairs)(pairs.prompts, pairs.first, pairs.second, pairs.references,
                        ["math", "koala", "math", "koala"], sources=["gsm8k/b", "alpaca_eval/z"] * 2)  # fmt: skip
    both, nan = [[1.0, 0.0], [0.0, 1.0]], [float("nan")] * 2
    scores = torch.tensor([both, both, [nan, [0.0, 1.0]], [[1.0, 0.0], nan]])  # RM 0 says first, RM 1 second
    routed = data_label.route(pairs, RecordedJudge(scores))
    # math by its domain to RM 0; koala, unseen in training, by its dataset (alpaca_eval) to RM 1; a pair the label's
    # RM cannot judge goes to the next RM of the ranking that can.
    assert routed.rm_index.tolist() == [0, 1, 1, 0]
    assert routed.preference.tolist() == [1.0, -1.0, -1.0, 1.0]
    assert routed.rm_calls == 4 and data_label.selections.tolist() == [2, 2]


def test_recorded_scores_answer_margins_scores_and_eligibility_for_any_subset():
    scores = torch.tensor([[[3.0, 1.0], [float("nan")] * 2], [[0.0, 2.0], [5.0, 4.0]]])
    judge, pairs = RecordedJudge(scores), make_pairs(random.Random(1), 2)
    assert judge.margins(0, pairs).tolist() == [2.0, -2.0]
    assert torch.equal(judge.scores(1, pairs.subset([1])), torch.tensor([[5.0, 4.0]]))
    assert judge.eligible(pairs).tolist() == [[True, False], [True, True]]
    assert torch.equal(ask_all_scores(judge, pairs, 2)[1], scores[1])
    with pytest.raises(ValueError, match="margins only"):
        ask_all_scores(FakeJudge.__new__(type("MarginsOnly", (), {"margins": FakeJudge.margins})), pairs, 2)
    with pytest.raises(ValueError, match=r"scores \[P, N, 2\]"):
        RecordedJudge(torch.zeros(2, 2, 3))


def test_pool_judge_scores_both_sides_with_each_rm():
    from rmrouter.reward_models import LengthRewardModel, RewardModelPool
    from rmrouter.routers.judges import PoolJudge

    judge, pairs = PoolJudge(RewardModelPool([LengthRewardModel("length")])), make_pairs(random.Random(1), 3)
    scores = judge.scores(0, pairs)
    assert scores.shape == (3, 2)
    assert torch.equal(judge.margins(0, pairs), scores[:, 0] - scores[:, 1])


def test_the_prior_writer_fits_the_reward_scale_on_the_validation_split(prior_path):
    from behaviour_helpers import record_of

    from rmrouter.callbacks.prior_writer import reward_scale
    from rmrouter.data.behaviour_datamodule import BehaviourPairs
    from rmrouter.data.records import PreferenceRecord

    pairs = [PreferenceRecord(f"v{i}", [{"role": "user", "content": f"q{i}"}], "a", "b", "math", "s") for i in range(2)]
    val = BehaviourPairs([record_of(pairs[0], {"x": 1.0, "y": -1.0}), record_of(pairs[1], {"x": -1.0, "y": 1.0})],
                         ["x", "y"])  # fmt: skip

    class Module(torch.nn.Module):
        def router_scores(self, prompts, first, second):
            return torch.tensor([[0.5, -0.5], [-0.25, 0.25]])

    class Data:
        splits = {"val": val}

    # y = (1, -1, -1, 1) on s = (0.5, -0.5, -0.25, 0.25): c = 1.5 / 0.625
    assert reward_scale(Module(), Data()) == pytest.approx(1.5 / 0.625)
    assert reward_scale(Module(), type("NoVal", (), {"splits": {}})()) is None
    # and BayesianRouter's `prior_scale: calibrated` reads it from the prior
    from rmrouter.routers.prior import RouterPrior

    prior = RouterPrior.load(prior_path)
    fields = {name: getattr(prior, name) for name in ("rm_names", "bt_embeddings", "encoder", "pooling", "max_length",
                                                      "mlp_config", "mlp_state")}  # fmt: skip
    RouterPrior(**fields, metadata={"reward_scale": 2.5}).save(prior_path)
    assert router(prior_path, prior_scale="calibrated").prior_scale == 2.5
    RouterPrior(**fields).save(prior_path)
    with pytest.raises(ValueError, match="no reward_scale"):
        router(prior_path, prior_scale="calibrated")


def test_a_cost_weight_trades_the_calibrated_prior_for_the_pools_cost(prior_path):
    from rmrouter.routers.prior import RouterPrior

    prior = RouterPrior.load(prior_path)
    fields = {name: getattr(prior, name) for name in ("rm_names", "bt_embeddings", "encoder", "pooling", "max_length",
                                                      "mlp_config", "mlp_state")}  # fmt: skip
    RouterPrior(**fields, metadata={"reward_scale": 2.0}).save(prior_path)
    pairs = make_pairs(random.Random(5), 16)
    costs = torch.tensor([1.0, 0.0])  # RM 0, which the prior prefers on these pairs, costs one unit; RM 1 nothing

    def routed(lam: float, **switches) -> list[int]:
        fixed = router(prior_path, online_updates=False, prior_scale="calibrated", centred_rewards=True,
                       cost_weight=lam, **switches)  # fmt: skip
        fixed.connect_pool(RMS, costs=costs)
        return fixed.route(pairs, FakeJudge()).rm_index.tolist()

    # by hand: RM n's predicted centred reward is 2.0 * h . E_bt[n]; the cost takes 2 * lambda * cost[n] off it
    h = router(prior_path).embedder.pairs(pairs)
    predicted = 2.0 * h @ prior.bt_embeddings.double().T
    gap = predicted[:, 0] - predicted[:, 1]
    assert (gap > 0).all()
    ordered = gap.sort().values
    between = [float(ordered[k] + ordered[k + 1]) / 4 for k in (0, len(pairs) // 2)]  # lambdas off any pair's tie
    for lam in (0.0, *between, float(gap.max())):
        expected = torch.where(gap > 2 * lam, 0, 1).tolist()
        assert routed(lam) == expected, lam
    assert routed(float(gap.max())) == [1] * len(pairs)
    with pytest.raises(ValueError, match="prior_scale: calibrated"):
        router(prior_path, cost_weight=0.1)
    with pytest.raises(ValueError, match="cost_weight must be"):
        router(prior_path, prior_scale="calibrated", cost_weight=-1.0)
    unpriced = router(prior_path, online_updates=False, prior_scale="calibrated", cost_weight=0.1)
    with pytest.raises(ValueError, match="needs the pool's costs"):
        unpriced.route(pairs, FakeJudge())
