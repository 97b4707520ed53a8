"""The online task-space router: its prior file, its features, and its posterior moving as computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rmrouter.modules.task_router import TaskRouterModule
from rmrouter.routers.base import PairBatch, Routing
from rmrouter.routers.normalizer import QuantileNormalizer, batch_baseline
from rmrouter.routers.prior import RouterPrior, RouterPriorError
from rmrouter.routers.task_bayesian import TaskBayesianRouter
from rmrouter.routers.task_prior import TaskPrior

RMS = ["a", "b"]
TASKS = ["math", "chat"]
ACCURACY = torch.tensor([[0.9, 0.6], [0.3, 0.8]])  # rows: math, chat; columns: RM a, RM b
JUDGED = torch.tensor([[40.0, 0.0], [10.0, 20.0]])  # the training judgements behind each accuracy


def logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p) - torch.log1p(-p)


def hand_prior(path, dim: int = 4) -> str:
    """A prior with the accuracies above; its encoder is never built while every pair's label is a known task."""
    TaskPrior(
        rm_names=RMS, tasks=TASKS, reliability=logit(ACCURACY), judged=JUDGED, encoder="never-loaded", pooling="mean",
        max_length=16,
        mlp_config={"input_size": 2 * dim, "hidden_size": dim, "output_size": dim}, mlp_state={},
        task_head_state={"weight": torch.zeros(2, dim), "bias": torch.zeros(2)},
    ).save(path)  # fmt: skip
    return str(path)


def pairs(domains: list[str]) -> PairBatch:
    size = len(domains)
    return PairBatch([[{"role": "user", "content": f"q{i}"}] for i in range(size)], ["x"] * size, ["y"] * size,
                     [None] * size, domains)  # fmt: skip


class EveryRMPrefersFirst:
    def margins(self, rm_index: int, batch: PairBatch) -> torch.Tensor:
        return torch.ones(len(batch))


def router(path: str, **overrides) -> TaskBayesianRouter:
    settings = {"sigma2": 1.0, "lambda0": 25.0, "warmup": 1, "seed": 0, "warmup_rewards": "placeholder", **overrides}
    return TaskBayesianRouter(RMS, path, **settings)


def test_the_prior_file_round_trips_and_is_told_apart_from_the_paper_routers(tmp_path):
    path = hand_prior(tmp_path / "prior.pt")
    prior = TaskPrior.load(path)
    torch.testing.assert_close(prior.accuracies(), ACCURACY)
    assert prior.tasks == TASKS and prior.source == path
    with pytest.raises(RouterPriorError, match="expected kind 'rmrouter.RouterPrior', found kind 'rmrouter.TaskPrior'"):
        RouterPrior.load(path)
    with pytest.raises(RouterPriorError, match=r"reliability must be a float tensor \[2, 2\]"):
        TaskPrior(**{**prior.__dict__, "reliability": torch.zeros(3, 2), "source": None})
    with pytest.raises(RouterPriorError, match="task prior .* was trained for RMs"):
        prior.check_pool(["b", "a"])


def test_the_prior_means_are_the_accuracies_on_the_rewards_scale_and_route_without_updates(tmp_path):
    path = hand_prior(tmp_path / "prior.pt")
    centred = router(path)
    torch.testing.assert_close(centred.posteriors.means(), (2 * ACCURACY.T - 1).double())
    torch.testing.assert_close(router(path, centred_rewards=False).posteriors.means(), ACCURACY.T.double())
    fixed = router(path, online_updates=False)
    routing = fixed.route(pairs(["math", "chat", "math"]), EveryRMPrefersFirst())
    assert routing.rm_index.tolist() == [0, 1, 0]  # the RM of higher accuracy on each pair's task
    torch.testing.assert_close(routing.context, torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]).double())


def test_an_evidence_prior_counts_the_offline_judgements_as_rewards_seen(tmp_path):
    path = hand_prior(tmp_path / "prior.pt")
    learner = router(path, lambda0="evidence", sigma2=2.0)
    precision = torch.diagonal(learner.posteriors.precision, dim1=1, dim2=2)  # [N, T]
    torch.testing.assert_close(precision, torch.tensor([[40.0, 10.0], [1.0, 20.0]]).double() / 2)  # at least one
    torch.testing.assert_close(learner.posteriors.means(), (2 * ACCURACY.T - 1).double())
    routing = Routing(torch.ones(2), torch.tensor([0, 0]), 2, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    learner.observe(routing, torch.tensor([0.0, 1.0]))  # two math rewards through RM a: 40 judged weigh 40 seen
    rewards = 2 * QuantileNormalizer(warmup=1)(batch_baseline(torch.tensor([0.0, 1.0]).double())) - 1
    expected = (40 / 2 * 0.8 + rewards.sum() / 2) / (40 / 2 + 2 / 2)
    assert learner.posteriors.means()[0, 0].item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="no-prior ablation needs a number"):
        router(path, lambda0="evidence", use_prior=False)


def test_a_reward_moves_only_its_task_and_rm_and_as_computed_by_hand(tmp_path):
    path = hand_prior(tmp_path / "prior.pt")
    learner = router(path)  # three math pairs and a chat pair, routed to b, b, a and b
    routing = Routing(torch.ones(4), torch.tensor([1, 1, 0, 1]), 4, torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]]))
    losses = torch.tensor([0.2, 0.9, 0.5, 0.4])
    learner.observe(routing, losses)
    expected_rewards = 2 * QuantileNormalizer(warmup=1)(batch_baseline(losses.double())) - 1
    prior = (2 * ACCURACY.T - 1).double()
    expected = prior.clone()
    # (math, b) saw rows 0 and 1; (chat, b) row 3; (math, a) row 2; (chat, a) nothing: mean (25 mu0 + sum r) / (25 + k)
    for rm, task, rows in ((1, 0, [0, 1]), (1, 1, [3]), (0, 0, [2])):
        expected[rm, task] = (25 * prior[rm, task] + expected_rewards[rows].sum()) / (25 + len(rows))
    torch.testing.assert_close(learner.posteriors.means(), expected)


def test_a_pair_of_unknown_task_reads_the_task_head_and_labels_can_be_ignored(tmp_path, tiny_encoder_dir):
    module = TaskRouterModule(
        rm_names=RMS, tasks=TASKS, encoder=tiny_encoder_dir, pooling="mean", max_length=32, hidden_size=8,
        embedding_size=4, freeze_encoder=True, task_weight=1.0, learning_rate=1e-3, weight_decay=0.0,
    )  # fmt: skip
    with torch.no_grad():
        module.task_head.weight.normal_()
    module.router_prior({}).save(tmp_path / "prior.pt")
    labelled = router(str(tmp_path / "prior.pt"))
    batch = pairs(["math", "koala"])
    q = labelled.context(batch)
    assert q[0].tolist() == [1.0, 0.0]
    head = torch.softmax(labelled.prior.task_logits(labelled.embedder.pairs(batch)), dim=-1)
    torch.testing.assert_close(q[1], head[1])
    assert not math.isclose(q[1, 0].item(), 0.5)  # the head's weights say something
    unlabelled = router(str(tmp_path / "prior.pt"), use_labels=False)
    torch.testing.assert_close(unlabelled.context(batch), head)


def test_forgetting_discounts_old_rewards_toward_the_prior_as_computed_by_hand(tmp_path):
    # cell (math, a): prior precision 25 and mean mu0; each learning step first forgets with g toward mu0 held with
    # one reward's precision (1 / sigma2 = 1), then adds its rewards:
    # Lambda_k = g Lambda_{k-1} + (1 - g) 1 + m_k and b_k = g b_{k-1} + (1 - g) 1 mu0 + sum r_k
    path = hand_prior(tmp_path / "prior.pt")
    g, mu0 = 0.5, 2 * ACCURACY[0, 0].item() - 1
    learner = router(path, forgetting=g)
    precision, vector = 25.0, 25.0 * mu0
    for losses in ([0.1, 0.7, 0.6], [0.9, 0.3, 0.35], [0.4, 0.2, 0.25]):
        losses = torch.tensor(losses)
        context = torch.tensor([[1.0, 0.0]] * 3)
        learner.observe(Routing(torch.ones(3), torch.tensor([0, 0, 0]), 3, context), losses)
        rewards = 2 * learner.normalizer.normalize(batch_baseline(losses.double())) - 1  # as observed
        precision = g * precision + (1 - g) * 1 + 3
        vector = g * vector + (1 - g) * 1 * mu0 + rewards.sum().item()
    assert learner.posteriors.means()[0, 0].item() == pytest.approx(vector / precision)
    assert learner.posteriors.means()[0, 0].item() != pytest.approx(router(path).posteriors.means()[0, 0].item())
    precision = torch.diagonal(learner.posteriors.precision, dim1=1, dim2=2)
    assert precision[1, 0].item() == pytest.approx(25 * g**3 + (1 - g**3))  # no rewards: the offline evidence fades
    untouched = (2 * ACCURACY.T - 1).double()  # cells without rewards forget toward where they already are
    torch.testing.assert_close(learner.posteriors.means()[1], untouched[1])
    with pytest.raises(ValueError, match=r"forgetting must lie in \(0, 1\]"):
        router(path, forgetting=0.0)


def test_forgotten_posteriors_return_to_the_prior_and_one_forgets_nothing():
    from rmrouter.routers.posterior import GaussianPosteriors

    prior = GaussianPosteriors.prior(torch.tensor([[0.5, -0.5]]).double(), lambda0=2.0, sigma2=1.0)
    learned = GaussianPosteriors.prior(torch.tensor([[0.5, -0.5]]).double(), lambda0=2.0, sigma2=1.0)
    learned.update(torch.tensor([0, 0]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]).double(), torch.tensor([3.0, 3.0]))
    before = learned.means().clone()
    learned.forget(1.0, prior)
    torch.testing.assert_close(learned.means(), before)
    for _ in range(60):
        learned.forget(0.7, prior)
    torch.testing.assert_close(learned.means(), prior.means())
    torch.testing.assert_close(learned.precision, prior.precision)


def test_forgetting_toward_the_prior_keeps_the_offline_evidence_whole(tmp_path):
    # forget_toward: prior: Lambda_k = g Lambda_{k-1} + (1 - g) 25 + m_k, so a cell without rewards keeps its 25
    path = hand_prior(tmp_path / "prior.pt")
    g = 0.5
    learner = router(path, forgetting=g, forget_toward="prior")
    for losses in ([0.1, 0.7, 0.6], [0.9, 0.3, 0.35]):
        learner.observe(Routing(torch.ones(3), torch.tensor([0, 0, 0]), 3, torch.tensor([[1.0, 0.0]] * 3)),
                        torch.tensor(losses))  # fmt: skip
    precision = torch.diagonal(learner.posteriors.precision, dim1=1, dim2=2)
    assert precision[1, 0].item() == pytest.approx(25.0)
    assert precision[0, 0].item() == pytest.approx(g * (g * 25 + (1 - g) * 25 + 3) + (1 - g) * 25 + 3)
    with pytest.raises(ValueError, match="forget_toward must be"):
        router(path, forgetting=g, forget_toward="nothing")


def test_a_cost_weight_trades_the_prior_accuracy_for_the_pools_cost(tmp_path):
    path = hand_prior(tmp_path / "prior.pt")
    math_pairs = pairs(["math", "math"])
    costs = torch.tensor([1.0, 0.0])  # a costs one unit per call, b nothing
    expected_gap = (ACCURACY[0, 0] - ACCURACY[0, 1]).item()  # a's lead on math in probability of being right
    for lam, rm in ((0.0, 0), (0.5 * expected_gap, 0), (2.0 * expected_gap, 1)):
        fixed = router(path, online_updates=False, cost_weight=lam)
        fixed.connect_pool(RMS, costs=costs)
        assert fixed.route(math_pairs, EveryRMPrefersFirst()).rm_index.tolist() == [rm, rm], lam
    unpriced = router(path, online_updates=False, cost_weight=0.1)
    with pytest.raises(ValueError, match="needs the pool's costs"):
        unpriced.route(math_pairs, EveryRMPrefersFirst())
