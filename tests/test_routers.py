"""The online routers (Lightning callbacks) and judges on crafted pairs: selection, learning, ablations, checkpoints."""

from __future__ import annotations

import io
import random

import pytest
import torch
from router_helpers import RMS, make_pairs

from rmrouter.routers.base import PairBatch
from rmrouter.routers.baseline_routers import (
    LASERRouter,
    MajorityVoteRouter,
    RandomRouter,
    SingleRMRouter,
    UWORouter,
)
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.decisions import uwo_pair_margins
from rmrouter.routers.judges import RecordedJudge, ask_by_rm


def right_rm(pairs: PairBatch) -> torch.Tensor:
    return torch.tensor([0 if "math" in p[0]["content"] else 1 for p in pairs.prompts])


class FakeJudge:
    """`first` is truly better; the right RM for a pair says so (+1), the other RM says the opposite (-1)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def margins(self, rm_index: int, pairs: PairBatch) -> torch.Tensor:
        self.calls.append((rm_index, len(pairs)))
        return torch.where(right_rm(pairs) == rm_index, 1.0, -1.0)

    def scores(self, rm_index: int, pairs: PairBatch) -> torch.Tensor:
        margins = self.margins(rm_index, pairs)
        return torch.stack([margins / 2, -margins / 2], dim=1)


def dpo_losses(preference: torch.Tensor) -> torch.Tensor:
    """Low loss for a right label, high for a wrong one, NaN for no label."""
    return torch.where(preference > 0, 0.2, torch.where(preference < 0, 1.0, float("nan")))


def no_prior_router(encoder: str, seed: int = 0) -> BayesianRouter:
    return BayesianRouter(
        RMS, prior_path=None, sigma2=0.05, lambda0=1.0, warmup=20, use_prior=False, online_updates=True,
        integration="prior_injection", offline_weight=0.0, seed=seed, encoder=encoder, pooling="mean", max_length=64,
    )  # fmt: skip


def bayes(path, use_prior, online_updates, integration, offline_weight=0.0, lambda0=1e4) -> BayesianRouter:
    return BayesianRouter(
        RMS, prior_path=str(path), sigma2=1.0, lambda0=lambda0, warmup=5, use_prior=use_prior,
        online_updates=online_updates, integration=integration, offline_weight=offline_weight, seed=0,
    )  # fmt: skip


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_recorded_judge_answers_subsets_by_row():
    pairs = make_pairs(random.Random(1), 5)
    margins = torch.arange(10.0).reshape(5, 2)
    judge = RecordedJudge(margins)
    assert torch.equal(judge.margins(1, pairs), margins[:, 1])
    assert torch.equal(judge.margins(0, pairs.subset([3, 1]).subset([1])), margins[[1], 0])
    assert torch.equal(ask_by_rm(judge, pairs, torch.tensor([0, 1, 1, 0, 1])), torch.tensor([0.0, 3, 5, 6, 9]))
    with pytest.raises(ValueError, match="batch of 5 pairs"):
        judge.margins(0, make_pairs(random.Random(1), 3))


def test_bayesian_without_prior_learns_the_right_rm_per_region(tiny_encoder_dir):
    router, judge, rng = no_prior_router(tiny_encoder_dir), FakeJudge(), random.Random(0)
    hits = []
    for _ in range(50):
        pairs = make_pairs(rng, 8)
        routing = router.route(pairs, judge)
        assert sorted(n for n, _ in judge.calls) == sorted(set(routing.rm_index.tolist()))  # one call per RM used
        judge.calls.clear()
        hits += (routing.rm_index == right_rm(pairs)).tolist()
        router.observe(routing, dpo_losses(routing.preference))
    assert sum(hits[-100:]) / 100 > 0.8
    assert router.rm_calls == router.pairs_routed == 400
    assert sum(v for k, v in router.metrics().items() if "select_rate" in k) == pytest.approx(1.0)


def test_bayesian_first_selections_follow_the_prior(prior_path):
    pairs = make_pairs(random.Random(0), 64)
    for router in (
        bayes(prior_path, True, True, "prior_injection"),
        bayes(prior_path, True, False, "prior_injection"),
        bayes(prior_path, True, True, "weighted_score", offline_weight=1.0),
    ):
        h = router.embedder.pairs(pairs)
        offline = (h @ router.offline_scores.T).argmax(dim=1)
        routing = router.route(pairs, FakeJudge())
        assert (routing.rm_index == offline).float().mean() > 0.9, router.integration
        assert (offline == 0).float().mean() > 0.8  # the prior points RM 0 at these pairs


def test_bayesian_without_online_updates_never_changes_state(prior_path):
    router, rng = bayes(prior_path, True, False, "prior_injection"), random.Random(2)
    before = roundtrip(router.state_dict())
    for _ in range(3):
        routing = router.route(make_pairs(rng, 8), FakeJudge())
        router.observe(routing, dpo_losses(routing.preference))
    after = router.state_dict()
    assert torch.equal(after["posteriors"]["precision"], before["posteriors"]["precision"])
    assert torch.equal(after["normalizer"]["history"], before["normalizer"]["history"])
    assert torch.equal(after["generator"], before["generator"])


def test_bayesian_nan_losses_leave_posterior_unchanged(prior_path):
    router = bayes(prior_path, False, True, "prior_injection")
    routing = router.route(make_pairs(random.Random(3), 8), FakeJudge())
    before = router.state_dict()
    router.observe(routing, torch.full((8,), float("nan")))
    losses = dpo_losses(routing.preference)
    losses[0] = float("inf")
    router.observe(routing, losses)
    after = router.state_dict()
    changed = ~torch.isclose(after["posteriors"]["vector"], before["posteriors"]["vector"]).all(dim=1)
    assert changed.tolist() == [bool((routing.rm_index[1:] == n).any()) for n in range(2)]
    assert router.metrics()["router/nonfinite_losses"] == 9
    assert len(after["normalizer"]["history"]) == 7


@pytest.mark.parametrize("kind", ["bayes_prior", "bayes_no_prior", "random", "majority", "laser"])
def test_state_dict_roundtrip_gives_identical_future(kind, prior_path, tiny_encoder_dir):
    def build(seed):
        if kind == "bayes_prior":
            return bayes(prior_path, True, True, "prior_injection", lambda0=1.0)
        if kind == "bayes_no_prior":
            return no_prior_router(tiny_encoder_dir, seed)
        if kind == "laser":
            return LASERRouter(RMS, 0.1, tiny_encoder_dir, "mean", 64, warmup=2, seed=seed)
        return {"random": RandomRouter, "majority": MajorityVoteRouter}[kind](RMS, seed=seed)

    def run(router, seed):
        rng, out = random.Random(seed), []
        for _ in range(4):
            routing = router.route(make_pairs(rng, 6), FakeJudge())
            router.observe(routing, dpo_losses(routing.preference))
            out.append((routing.rm_index.tolist(), routing.preference.tolist()))
        return out

    original = build(0)
    run(original, 1)
    restored = build(7)
    restored.load_state_dict(roundtrip(original.state_dict()))
    assert run(restored, 2) == run(original, 2)
    assert restored.metrics() == original.metrics()


def test_all_rm_routers_call_every_rm_and_select_none():
    pairs = make_pairs(random.Random(4), 10)
    for router in (MajorityVoteRouter(RMS, seed=0), UWORouter(RMS, coeff=0.5)):
        judge = FakeJudge()
        routing = router.route(pairs, judge)
        assert routing.rm_calls == 20 and router.rm_calls == 20 and sorted(judge.calls) == [(0, 10), (1, 10)]
        assert (routing.rm_index == -1).all() and router.selections.sum() == 0
        assert router.metrics()["router/rm_calls_per_pair"] == 2.0


def test_uwo_orders_pairs_by_each_responses_penalised_mean_of_standardised_scores():
    # Two RMs on raw scales 1 and 100 score two pairs (a vs b, c vs d): RM 0 gives a 4, b 3, c 2, d 1; RM 1 gives
    # a 400, b 200, c 300, d 100. Standardised over the four responses, each RM's column is z = (x - mean) / std.
    scores = torch.tensor([[[4.0, 3.0], [400.0, 200.0]], [[2.0, 1.0], [300.0, 100.0]]])  # [P, N, (first, second)]
    responses = torch.tensor([[4.0, 400.0], [2.0, 300.0], [3.0, 200.0], [1.0, 100.0]])  # a, c, b, d
    z = (responses - responses.mean(0)) / responses.std(0, unbiased=False)
    uwo = z.mean(1) - 0.5 * z.var(1, unbiased=False)
    expected = torch.stack([uwo[0] - uwo[2], uwo[1] - uwo[3]]).double()  # a - b, c - d
    assert torch.allclose(uwo_pair_margins(scores, coeff=0.5), expected)
    assert (uwo_pair_margins(scores, coeff=0.5) > 0).all()  # both RMs prefer a to b and c to d
    # The variance penalty decides disputed pairs: RM 0 and RM 1 disagree on both pairs here, and the response the
    # RMs disagree on most loses once the penalty weighs in.
    disputed = torch.tensor([[[3.0, 1.0], [0.0, 1.2]], [[2.0, 0.0], [1.0, 3.0]]])
    assert torch.sign(uwo_pair_margins(disputed, 0.0)).tolist() == [1.0, -1.0]
    assert torch.sign(uwo_pair_margins(disputed, 0.5)).tolist() == [-1.0, 1.0]
    assert torch.allclose(uwo_pair_margins(disputed, 0.5), -uwo_pair_margins(disputed.flip(-1), 0.5))  # side order
    assert uwo_pair_margins(torch.full((1, 2, 2), float("nan")), 0.5).isnan().all()


def test_uwo_router_labels_every_pair_from_per_response_scores_and_refuses_margins_only():
    router, pairs = UWORouter(RMS, coeff=0.5), make_pairs(random.Random(8), 6)
    scores = torch.tensor([[[2.0, 1.0], [5.0, 9.0]]] * 3 + [[[1.0, 3.0], [9.0, 4.0]]] * 3)
    expected = torch.sign(uwo_pair_margins(scores.double(), 0.5)).float()
    routing = router.route(pairs, RecordedJudge(scores))
    assert torch.equal(routing.preference, expected) and (routing.preference != 0).all()
    with pytest.raises(ValueError, match="margins only"):
        router.route(pairs, RecordedJudge(scores[..., 0] - scores[..., 1]))


def test_single_rm_router():
    router = SingleRMRouter(RMS, rm="chat_rm")
    routing = router.route(make_pairs(random.Random(5), 6), FakeJudge())
    assert (routing.rm_index == 1).all() and routing.rm_calls == 6
    assert router.metrics()["router/select_rate/chat_rm"] == 1.0
    with pytest.raises(ValueError, match="'nope' is not in the pool"):
        SingleRMRouter(RMS, rm="nope")


def test_random_router_uses_both_rms():
    router = RandomRouter(RMS, seed=0)
    routing = router.route(make_pairs(random.Random(6), 40), FakeJudge())
    assert set(routing.rm_index.tolist()) == {0, 1}
    assert sum(v for k, v in router.metrics().items() if "select_rate" in k) == pytest.approx(1.0)


def test_laser_picks_one_arm_per_batch_and_learns(tiny_encoder_dir):
    router, rng, arms = LASERRouter(RMS, 0.1, tiny_encoder_dir, "mean", 64, warmup=2, seed=0), random.Random(7), []
    for _ in range(20):
        pairs = make_pairs(rng, 8)
        judge = FakeJudge()
        routing = router.route(pairs, judge)
        assert len(set(routing.rm_index.tolist())) == 1 and len(judge.calls) == 1
        arms.append(int(routing.rm_index[0]))
        noise = 0.05 * torch.rand(8, generator=torch.Generator().manual_seed(len(arms)))
        router.observe(routing, (0.1 if arms[-1] == 1 else 1.0) + noise)  # RM 1 always does better
    assert arms[:2] == [0, 1]  # the round-robin start tries every arm once
    assert arms[-5:] == [1] * 5


def test_laser_leaves_its_warmup_and_learns_the_warmup_batches_with_their_real_rewards(tiny_encoder_dir):
    def run(warmup, round_robin, centred):
        router = LASERRouter(RMS, 0.1, tiny_encoder_dir, "mean", 64, warmup, 0, round_robin, centred)
        rng, arms, router.contexts = random.Random(7), [], []
        for step in range(12):
            routing = router.route(make_pairs(rng, 8), FakeJudge())
            arms.append(int(routing.rm_index[0]))
            router.contexts.append(routing.context[1])
            router.observe(routing, torch.full((8,), 0.1 if arms[-1] == 1 else 1.0) + 0.01 * (step % 3))
            assert len(router.held) == (0 if step >= warmup - 1 else step + 1)  # held until `warmup` batch rewards
        return router, arms

    router, arms = run(3, True, True)
    assert arms[:2] == [0, 1] and arms[-4:] == [1] * 4
    # Every batch, the warm-up's three included, reached its arm's A = I + sum x x^T.
    precision, eye = router.linucb.arms.precision, torch.eye(router.linucb.arms.dim, dtype=torch.float64)
    traces = (precision - eye).diagonal(dim1=1, dim2=2).sum(dim=1)
    squared_norms = torch.stack([x.square().sum() for x in router.contexts])
    assert torch.allclose(traces, torch.stack([squared_norms[torch.tensor(arms) == n].sum() for n in (0, 1)]))
    assert ((traces > 0) == torch.tensor([0 in arms, 1 in arms])).all()
    # LASeR's own [0, 1] rewards and no round robin: the first arm pulled scores above the untried one and stays;
    # centred rewards make its average reward the arms' zero start, so the other arm gets tried.
    assert len(set(run(1, False, False)[1])) == 1
    assert set(run(1, False, True)[1]) == {0, 1}


def test_laser_warmup_state_survives_a_checkpoint(tiny_encoder_dir):
    def build():
        return LASERRouter(RMS, 0.1, tiny_encoder_dir, "mean", 64, 4, 0)

    original, rng = build(), random.Random(3)
    for _ in range(2):
        routing = original.route(make_pairs(rng, 4), FakeJudge())
        original.observe(routing, dpo_losses(routing.preference))
    restored = build()
    restored.load_state_dict(roundtrip(original.state_dict()))
    assert len(restored.held) == 2 and restored.batches_routed == 2
    for router in (original, restored):
        rng = random.Random(5)
        for _ in range(4):
            routing = router.route(make_pairs(rng, 4), FakeJudge())
            router.observe(routing, dpo_losses(routing.preference))
    assert torch.equal(original.linucb.arms.vector, restored.linucb.arms.vector)


def test_bayesian_config_errors(tmp_path, tiny_encoder_dir, prior_path):
    with pytest.raises(ValueError, match="need the offline prior"):
        BayesianRouter(RMS, None, 1.0, 1.0, 5, True, True, "prior_injection", 0.0, 0, tiny_encoder_dir, "mean", 8)
    with pytest.raises(ValueError, match="needs encoder"):
        BayesianRouter(RMS, None, 1.0, 1.0, 5, False, True, "prior_injection", 0.0, 0)
    with pytest.raises(ValueError, match="trained for RMs"):
        BayesianRouter(RMS[::-1], str(prior_path), 1.0, 1.0, 5, True, True, "prior_injection", 0.0, 0)


# ---- eligibility: a router never sends a pair to an RM that cannot judge it -----------------------------------


class OnlyChatRMJudgesOddPairs(FakeJudge):
    """As `FakeJudge`, but the math RM cannot judge the odd pairs of a batch (as an RM without a reference)."""

    def eligible(self, pairs: PairBatch) -> torch.Tensor:
        rows = torch.arange(len(pairs)) if pairs.rows is None else torch.tensor(pairs.rows)
        return torch.stack([rows % 2 == 0, torch.ones(len(pairs), dtype=torch.bool)], dim=1)


def test_recorded_judge_eligibility_is_what_was_recorded():
    pairs = make_pairs(random.Random(1), 3)
    judge = RecordedJudge(torch.tensor([[1.0, float("nan")], [float("nan"), -1.0], [0.0, 2.0]]))
    assert judge.eligible(pairs).tolist() == [[True, False], [False, True], [True, True]]
    assert judge.eligible(pairs.subset([2, 0])).tolist() == [[True, True], [True, False]]


def test_pool_judge_eligibility_comes_from_each_rms_needs():
    from rmrouter.reward_models import GSM8KVerifierRewardModel, LengthRewardModel, RewardModelPool
    from rmrouter.routers.judges import PoolJudge

    pool = RewardModelPool([GSM8KVerifierRewardModel("verifier"), LengthRewardModel("length")])
    pairs = make_pairs(random.Random(1), 2)
    pairs = PairBatch(pairs.prompts, pairs.first, pairs.second, ["#### 4", None], pairs.domains)
    assert PoolJudge(pool).eligible(pairs).tolist() == [[True, True], [False, True]]


@pytest.mark.parametrize("kind", ["bayes_prior", "bayes_no_online", "bayes_no_prior", "random"])
def test_routers_choose_only_among_eligible_rms(kind, prior_path, tiny_encoder_dir):
    router = {
        "bayes_prior": lambda: bayes(prior_path, True, True, "prior_injection"),
        "bayes_no_online": lambda: bayes(prior_path, True, False, "prior_injection"),
        "bayes_no_prior": lambda: no_prior_router(tiny_encoder_dir),
        "random": lambda: RandomRouter(RMS, seed=0),
    }[kind]()
    judge, rng = OnlyChatRMJudgesOddPairs(), random.Random(3)
    chosen_on_even = []
    for _ in range(5):
        routing = router.route(make_pairs(rng, 16), judge)
        assert (routing.rm_index[1::2] == 1).all()  # the math RM cannot judge odd pairs
        chosen_on_even += routing.rm_index[0::2].tolist()
        router.observe(routing, dpo_losses(routing.preference))
    assert 0 in chosen_on_even  # the math RM is still chosen where it can judge


def test_a_judge_without_eligibility_lets_every_rm_judge():
    from rmrouter.routers.judges import ask_eligible

    assert ask_eligible(FakeJudge(), make_pairs(random.Random(0), 3), 2).tolist() == [[True, True]] * 3


def test_the_paper_routers_forgetting_returns_toward_its_prior_means(prior_path):
    # prior_mean: the prior's means held with one reward's precision (I / sigma2); prior: the prior itself
    for toward, precision in (("prior_mean", 1.0), ("prior", 1e4)):
        router = BayesianRouter(
            RMS, prior_path=str(prior_path), sigma2=1.0, lambda0=1e4, warmup=5, use_prior=True, online_updates=True,
            integration="prior_injection", offline_weight=0.0, seed=0, forgetting=0.9, forget_toward=toward,
        )  # fmt: skip
        torch.testing.assert_close(router.anchor.means(), router.posteriors.means())
        eye = torch.eye(router.anchor.dim, dtype=torch.float64).expand_as(router.anchor.precision)
        torch.testing.assert_close(router.anchor.precision, precision * eye)
