"""The online routers (Lightning callbacks) and judges on crafted pairs: selection, learning, ablations, checkpoints."""

from __future__ import annotations

import io
import random

import pytest
import torch
import torch.nn.functional as F
from router_helpers import RMS, make_pairs

from rmrouter.models.pair_encoder import build_mlp
from rmrouter.routers.base import PairBatch
from rmrouter.routers.baseline_routers import (
    LASERRouter,
    MajorityVoteRouter,
    RandomRouter,
    SingleRMRouter,
    UWORouter,
    uwo_margins,
)
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.judges import RecordedJudge, ask_by_rm
from rmrouter.routers.prior import RouterPrior


def right_rm(pairs: PairBatch) -> torch.Tensor:
    return torch.tensor([0 if "math" in p[0]["content"] else 1 for p in pairs.prompts])


class FakeJudge:
    """`first` is truly better; the right RM for a pair says so (+1), the other RM says the opposite (-1)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def margins(self, rm_index: int, pairs: PairBatch) -> torch.Tensor:
        self.calls.append((rm_index, len(pairs)))
        return torch.where(right_rm(pairs) == rm_index, 1.0, -1.0)


def dpo_losses(preference: torch.Tensor) -> torch.Tensor:
    """Low loss for a right label, high for a wrong one, NaN for no label."""
    return torch.where(preference > 0, 0.2, torch.where(preference < 0, 1.0, float("nan")))


def no_prior_router(encoder: str, seed: int = 0) -> BayesianRouter:
    return BayesianRouter(
        RMS, prior_path=None, sigma2=0.05, lambda0=1.0, warmup=20, use_prior=False, online_updates=True,
        integration="prior_injection", offline_weight=0.0, seed=seed, encoder=encoder, pooling="mean", max_length=64,
    )  # fmt: skip


@pytest.fixture
def prior_path(tmp_path, tiny_encoder_dir):
    """A prior whose BT embeddings point RM 0 along the toy pairs' mean `h` and RM 1 away from it."""
    torch.manual_seed(0)
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    state = build_mlp(config).state_dict()
    fields = dict(encoder=tiny_encoder_dir, pooling="mean", max_length=64, mlp_config=config, mlp_state=state)
    path = tmp_path / "prior.pt"
    RouterPrior(RMS, F.normalize(torch.ones(2, 4), dim=1), **fields).save(path)
    router = bayes(path, use_prior=True, online_updates=True, integration="prior_injection")
    direction = F.normalize(router.embedder.pairs(make_pairs(random.Random(0), 64)).mean(dim=0).float(), dim=0)
    RouterPrior(RMS, torch.stack([direction, -direction]), **fields).save(path)
    return path


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


def test_uwo_margins_shrink_toward_zero_and_never_flip():
    margins = torch.tensor([[2.0, 2.0], [2.0, -2.0], [4.0, 0.5], [float("nan"), -1.0], [float("nan")] * 2])
    aggregated = uwo_margins(margins, coeff=0.5)
    assert aggregated[0] > 0 and aggregated[1] == 0 and aggregated[2] > 0 and aggregated[3] < 0
    assert aggregated[4].isnan()
    assert torch.equal(uwo_margins(-margins, 0.5)[:4], -aggregated[:4])  # symmetric in the two sides


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
    # alpha 1.0, not LASER's 0.1: rewards are >= 0 and the arms start at 0, so a small alpha can stay on its first arm
    router, rng, arms = LASERRouter(RMS, 1.0, tiny_encoder_dir, "mean", 64, warmup=2, seed=0), random.Random(7), []
    for _ in range(20):
        pairs = make_pairs(rng, 8)
        judge = FakeJudge()
        routing = router.route(pairs, judge)
        assert len(set(routing.rm_index.tolist())) == 1 and len(judge.calls) == 1
        arms.append(int(routing.rm_index[0]))
        router.observe(routing, torch.full((8,), 0.1 if arms[-1] == 1 else 1.0))  # RM 1 always does better
    assert 1 in arms[:5] and arms[-5:] == [1] * 5


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
