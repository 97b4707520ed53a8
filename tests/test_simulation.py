"""The simulated online stream, its learners (oracle, log-linear DPO), the loop every router runs, and its figures."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from behaviour_helpers import record_of
from router_helpers import RMS

from rmrouter.data.records import PreferenceRecord
from rmrouter.routers.baseline_routers import (
    DataLabelRouter,
    LASERRouter,
    MajorityVoteRouter,
    RandomRouter,
    SingleRMRouter,
    UWORouter,
)
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.simulation import (
    LogLinearDPO,
    OracleLearner,
    PairStream,
    StreamLog,
    cumulative_accuracy,
    reward_auroc,
    run_stream,
    stream_summary,
)
from rmrouter.simulation.learners import log_linear_dpo_gradient, log_linear_dpo_losses


def toy_stream(size: int = 12) -> PairStream:
    """RM 0 is right on math pairs, RM 1 on chat pairs; RM 1 cannot judge every third math pair."""
    records = []
    for i in range(size):
        domain = "math" if i % 2 == 0 else "chat"
        pair = PreferenceRecord(f"p{i}", [{"role": "user", "content": f"{domain} {i}"}], f"good {i}", f"bad {i}",
                                domain, f"{domain}/src")  # fmt: skip
        right = 0 if domain == "math" else 1
        margins = {name: 1.0 if n == right else -1.0 for n, name in enumerate(RMS)}
        if domain == "math" and i % 3 == 0:
            margins["chat_rm"] = math.nan
        records.append(record_of(pair, margins))
    return PairStream(records, RMS)


def hashed_features(texts: list[str], dim: int = 8) -> torch.Tensor:
    """A fixed unit vector per text, so the log-linear policy has something to learn on."""
    seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
    return torch.stack(
        [F.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(s)), dim=0) for s in seeds]
    )


def test_stream_order_is_reshuffled_whole_passes_and_the_same_for_one_seed():
    stream = toy_stream(12)
    order = stream.order(30, seed=3)
    assert sorted(order[:12].tolist()) == sorted(order[12:24].tolist()) == list(range(12))
    assert len(set(order[24:].tolist())) == 6 and not torch.equal(order[:12], order[12:24])
    assert torch.equal(order, stream.order(30, seed=3)) and not torch.equal(order, stream.order(30, seed=4))


def test_stream_batches_orient_the_recorded_scores_with_the_coin_flips():
    stream = toy_stream(12)
    batches = list(stream.batches(20, 8, seed=0))
    assert [len(b.rows) for b in batches] == [8, 8, 4] and [b.step for b in batches] == [0, 1, 2]
    truths = torch.cat([b.truth for b in batches])
    assert 0 < int((truths > 0).sum()) < 20  # both orders occur
    for batch in batches:
        right = torch.tensor([0 if stream.domains[int(r)] == "math" else 1 for r in batch.rows])
        for n in (0, 1):
            margins = batch.judge.margins(n, batch.pairs)
            agrees = torch.where(right == n, 1.0, -1.0)
            judged = ~margins.isnan()
            assert torch.equal(torch.sign(margins[judged]), (agrees * batch.truth)[judged])
        chosen_first = [stream.records[int(r)].pair.chosen for r in batch.rows]
        shown_first = [
            f if t > 0 else s for f, s, t in zip(batch.pairs.first, batch.pairs.second, batch.truth, strict=True)
        ]
        assert shown_first == chosen_first


def test_oracle_learner_loss_is_whether_the_label_is_wrong():
    batch = next(toy_stream(4).batches(4, 4, seed=0))
    preference = torch.tensor([1.0, -1.0, 0.0, 1.0]) * torch.tensor([1.0, 1.0, 1.0, -1.0])
    losses = OracleLearner().step(batch, preference * batch.truth)
    assert losses[:2].tolist() == [0.0, 1.0] and losses[2].isnan() and losses[3] == 1.0


def test_log_linear_dpo_loss_and_gradient_by_hand_and_by_autograd():
    theta, winner, loser = torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert log_linear_dpo_losses(theta, winner, loser, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert log_linear_dpo_gradient(theta, winner, loser, 1.0).tolist() == pytest.approx([-1 / (1 + math.e), 0.0])
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    winner, loser = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    log_linear_dpo_losses(theta, winner, loser, 0.3).mean().backward()
    assert torch.allclose(theta.grad, log_linear_dpo_gradient(theta.detach(), winner, loser, 0.3))


def test_log_linear_dpo_step_returns_the_losses_before_its_sgd_update():
    stream = toy_stream(8)
    batch = next(stream.batches(8, 8, seed=1))
    learner = LogLinearDPO(hashed_features, dim=8, beta=0.5, learning_rate=2.0)
    learner.theta = torch.linspace(-1, 1, 8, dtype=torch.float64)
    before = learner.theta.clone()
    preference = batch.truth.clone()
    preference[0] = 0.0
    losses = learner.step(batch, preference)
    first, second = learner.sides(batch)
    labelled = preference != 0
    winner = torch.where((preference > 0).unsqueeze(1), first, second)[labelled]
    loser = torch.where((preference > 0).unsqueeze(1), second, first)[labelled]
    assert losses[0].isnan()
    assert torch.allclose(losses[labelled], log_linear_dpo_losses(before, winner, loser, 0.5))
    assert torch.allclose(learner.theta, before - 2.0 * log_linear_dpo_gradient(before, winner, loser, 0.5))


def test_the_log_linear_policy_learns_the_true_preferences_from_right_labels():
    stream = toy_stream(12)
    learner = LogLinearDPO(lambda texts: hashed_features(texts, 32), dim=32, beta=0.5, learning_rate=5.0)
    batch = next(stream.batches(12, 12, seed=0))  # 12 pairs in 32 dimensions: separable
    early = learner.step(batch, batch.truth)
    for _ in range(100):
        late = learner.step(batch, batch.truth)
    assert late.mean() < early.mean() and learner.agreement(batch).all()


def routers(encoder: str) -> dict:
    stream = toy_stream(12)
    data_label = DataLabelRouting.fit(stream.domains, stream.sources, stream.right, stream.eligible)
    return {
        "single": SingleRMRouter(RMS, "math_rm"),
        "random": RandomRouter(RMS, seed=0),
        "majority": MajorityVoteRouter(RMS, seed=0),
        "uwo": UWORouter(RMS, coeff=0.5),
        "data_label": DataLabelRouter(RMS, data_label),
        "laser": LASERRouter(RMS, 0.1, encoder, "mean", 32, warmup=2, seed=0),
        "bayesian": BayesianRouter(
            RMS, None, 1.0, 1.0, 4, False, True, "prior_injection", 0.0, 0, encoder, "mean", 32,
            warmup_rewards="held", centred_rewards=True,
        ),
    }  # fmt: skip


@pytest.mark.parametrize("fidelity", ["oracle", "log_linear_dpo"])
def test_every_router_runs_a_tiny_stream_at_each_fidelity(fidelity, tiny_encoder_dir):
    stream = toy_stream(12)
    for name, router in routers(tiny_encoder_dir).items():
        learner = OracleLearner() if fidelity == "oracle" else LogLinearDPO(hashed_features, 8, 0.1, 1.0)
        log = run_stream(router, stream, learner, num_pairs=30, batch_size=4, seed=0)
        assert len(log.right) == 30 and log.step.max() == 7, name
        summary = stream_summary(log, stream)
        calls = {"majority": 2.0, "uwo": 2.0}.get(name, 1.0)
        assert summary["rm_calls_per_pair"] == calls, name
        trained = torch.isfinite(log.loss)
        assert torch.equal(trained, log.preference != 0), name
        if name == "data_label":
            assert summary["accuracy"] == 1.0  # the domains decide which RM is right here
        if name == "single":  # right on math pairs, wrong on chat ones
            math_rows = torch.tensor([stream.domains[int(r)] == "math" for r in log.row])
            assert torch.equal(log.right, math_rows)
        assert StreamLog.from_dict(log.to_dict()).to_dict() == log.to_dict()


def test_stream_summary_and_reward_auroc_on_a_hand_built_log():
    stream = toy_stream(4)
    log = StreamLog(
        step=torch.tensor([0, 0, 1, 1, 2]),
        row=torch.tensor([0, 1, 2, 3, 0]),
        rm_index=torch.tensor([0, 1, 0, -1, 1]),
        preference=torch.tensor([1.0, -1.0, 0.0, 1.0, 1.0]),
        truth=torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0]),
        loss=torch.tensor([0.2, 0.9, float("nan"), 0.1, 0.3]),
        rm_calls=6,
    )
    summary = stream_summary(log, stream, first_fraction=0.4)
    assert summary["accuracy"] == pytest.approx(2 / 5) and summary["first_accuracy"] == 0.5
    assert summary["coverage"] == pytest.approx(4 / 5) and summary["accuracy_labelled"] == 0.5
    assert summary["rm_calls_per_pair"] == pytest.approx(6 / 5)
    assert summary["per_domain"] == {"chat": 0.5, "math": pytest.approx(1 / 3)}
    assert summary["ceiling"] == 1.0 and summary["selection"] == [2, 2]
    windows = reward_auroc(log, window_steps=2)
    # steps 0-1: right pairs have losses 0.2 and 0.1, the wrong one 0.9: -loss ranks them perfectly
    assert windows[0] == {"first_step": 0, "pairs": 3, "auroc": 1.0}
    assert windows[1] == {"first_step": 2, "pairs": 1, "auroc": None}  # one class only
    assert cumulative_accuracy(log).tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.5, 0.4])


def test_reward_signal_logs_the_auroc_of_each_window_of_steps():
    from types import SimpleNamespace

    from rmrouter.callbacks import RewardSignal

    logged = []
    module = SimpleNamespace(log=lambda name, value, **kwargs: logged.append((name, value)))
    signal = RewardSignal(window_steps=2)
    steps = [
        (torch.tensor([0.1, 0.9, float("nan")]), [True, False, True]),  # the NaN pair was not trained on
        (torch.tensor([0.8, 0.2]), [False, True]),
        (torch.tensor([0.1, 0.9]), [False, True]),  # a window where low losses mark wrong labels
        (torch.tensor([0.3]), [False]),
    ]
    for losses, right in steps:
        outputs = {"loss": torch.tensor(0.0), "losses": losses, "labelling": (["d"] * len(right), torch.tensor(right))}
        signal.on_train_batch_end(None, module, outputs, None, 0)
    assert logged == [("train/reward_auroc", 1.0), ("train/reward_auroc", 0.0)]
    signal.on_train_batch_end(None, module, {"loss": torch.tensor(0.0), "labelling": None}, None, 0)  # live: nothing
    assert len(logged) == 2


LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


def lm_learner(tiny_causal_lm_dir, lora=LORA, bfloat16=False):
    from rmrouter.simulation.lm_learner import LMPolicyDPO

    return LMPolicyDPO(tiny_causal_lm_dir, lora, beta=0.1, loss_type="sigmoid", learning_rate=0.05,
                       max_prompt_length=32, max_new_tokens=8, bfloat16=bfloat16, seed=0)  # fmt: skip


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_the_lm_learner_starts_at_log_2_skips_unlabelled_pairs_and_learns_its_labels(tiny_causal_lm_dir, lora):
    learner = lm_learner(tiny_causal_lm_dir, lora)
    batch = next(toy_stream(4).batches(4, 4, seed=0))
    labels = torch.tensor([1.0, -1.0, 0.0, 1.0])
    before = learner.step(batch, labels)
    # policy == reference before any update: every trained pair's DPO loss is log 2; an unlabelled pair is not trained
    assert before[[0, 1, 3]].tolist() == pytest.approx([math.log(2)] * 3, abs=1e-5) and math.isnan(before[2])
    for _ in range(3):
        after = learner.step(batch, labels)
    assert after[[0, 1, 3]].mean() < math.log(2) - 1e-3  # an AdamW step per batch moved it towards its labels
    assert learner.step(batch, torch.zeros(4)).isnan().all()


def test_the_lm_learner_truncates_responses_as_the_simulated_module_does(tiny_causal_lm_dir):
    from rmrouter.policy import generation as gen

    learner = lm_learner(tiny_causal_lm_dir)
    batch = next(toy_stream(2).batches(2, 2, seed=0))
    pairs = learner.with_token_ids(batch)
    expected = gen.text_ids(learner.tokenizer, batch.pairs.first[0], learner.eos, 8)
    assert pairs.first_ids[0] == expected and all(len(ids) <= 8 for ids in pairs.first_ids + pairs.second_ids)
    assert pairs.prompt_ids[0] == gen.prompt_ids(learner.tokenizer, [batch.pairs.prompts[0]], 32)[0]


def test_a_bayesian_router_runs_a_tiny_stream_with_the_lm_learner(tiny_causal_lm_dir, tiny_encoder_dir):
    router = routers(tiny_encoder_dir)["bayesian"]
    stream_log = run_stream(router, toy_stream(8), lm_learner(tiny_causal_lm_dir), 8, 4, seed=0)
    assert len(stream_log.right) == 8 and stream_log.rm_calls == 8
    trained = ~stream_log.loss.isnan()
    assert trained.any() and torch.allclose(stream_log.loss[:4][trained[:4]].float(), torch.tensor(math.log(2)))
