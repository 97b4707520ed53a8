"""Bad inputs to live online DPO (issue 4): an RM that raises, empty generations, all-tied responses, NaN losses.

Each has one defined outcome: the affected pairs get no label or no loss, the step's loss is a finite number (0 when
nothing is left to train), the counts reach the logs, and the router's state is exactly what it would be had those
pairs never been seen.
"""

from __future__ import annotations

import logging
import random

import pytest
import torch
from router_helpers import RMS, make_pairs
from test_online_dpo import RM_NAMES, Prompts, WeightedLength, adamw, fit, make_module, policy_weights
from test_routers import bayes, roundtrip

from rmrouter import dpo
from rmrouter.data.prompt_datamodule import PromptDataModule
from rmrouter.modules.online_dpo import OnlineDPOModule
from rmrouter.policy.generation import policy_and_reference_logprobs
from rmrouter.reward_models.base import RewardModel
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import Routing
from rmrouter.routers.baseline_routers import LASERRouter, MajorityVoteRouter, RandomRouter, SingleRMRouter, UWORouter
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.judges import PoolJudge

JUDGES_LOG = "rmrouter.routers.judges"


class Raising(RewardModel):
    """An RM whose every call raises `error(message)`; `messages` cycles through several texts when given."""

    def __init__(self, name: str, error: type[BaseException] = RuntimeError, messages: tuple[str, ...] = ("boom",)):
        super().__init__(name)
        self.error, self.messages, self.calls = error, messages, 0

    def _score(self, prompts, responses, references):
        self.calls += 1
        raise self.error(self.messages[(self.calls - 1) % len(self.messages)])


def record(router):
    """Keeps every routing, at each `observe` the router's state just before it and the losses it was given, and
    each step's loss as the module returned it."""
    router.routings, router.observed, router.states, router.step_losses = [], [], [], []
    route, observe = router.route, router.observe

    def recording_route(pairs, judge):
        router.routings.append(route(pairs, judge))
        return router.routings[-1]

    def recording_observe(routing, losses):
        router.states.append(roundtrip(router.state_dict()))
        router.observed.append(losses.clone())
        observe(routing, losses)

    def on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx):
        router.step_losses.append(outputs["loss"].detach().clone())

    router.route, router.observe, router.on_train_batch_end = recording_route, recording_observe, on_train_batch_end
    return router


def no_prior_bayes(encoder: str, names: list[str]) -> BayesianRouter:
    return BayesianRouter(
        names, prior_path=None, sigma2=1.0, lambda0=1.0, warmup=2, use_prior=False, online_updates=True,
        integration="prior_injection", offline_weight=0.0, seed=0, encoder=encoder, pooling="mean", max_length=64,
    )  # fmt: skip


def assert_state_equal(after: dict, before: dict) -> None:
    """Posteriors, normaliser history and generator byte for byte (counters are compared by the callers)."""
    assert torch.equal(after["posteriors"]["precision"], before["posteriors"]["precision"])
    assert torch.equal(after["posteriors"]["vector"], before["posteriors"]["vector"])
    assert torch.equal(after["normalizer"]["history"], before["normalizer"]["history"])
    assert torch.equal(after["generator"], before["generator"])


def prompts(batch_size: int = 2) -> PromptDataModule:
    return PromptDataModule(train=[Prompts(path="unused")], batch_size=batch_size)


def only_token(module, token: int | None) -> None:
    """Makes the policy sample `token` (None: its EOS) at every position: generation suppresses every other id."""
    module.configure_model()
    token = module.tokenizer.eos_token_id if token is None else token
    vocabulary = module.policy.get_input_embeddings().num_embeddings
    module.policy.generation_config.suppress_tokens = [i for i in range(vocabulary) if i != token]


# An RM that raises


def test_pool_judge_turns_a_raising_rm_into_counted_abstentions_logged_once(caplog):
    messages = ("bad row 1", "bad row 2", "bad row 3", "bad row 4", "bad row 5")
    judge = PoolJudge(RewardModelPool([WeightedLength("fine"), Raising("flaky", ValueError, messages)]))
    pairs = make_pairs(random.Random(0), 4)
    with caplog.at_level(logging.WARNING, logger=JUDGES_LOG):
        assert judge.margins(1, pairs).isnan().all()
        assert judge.margins(0, pairs).isfinite().all()
        first = [r.getMessage() for r in caplog.records]
        for _ in range(len(messages) * 2):  # every message again, and some twice
            assert judge.margins(1, pairs).isnan().all()
    assert judge.errors == {"fine": 0, "flaky": 1 + 2 * len(messages)}
    assert len(first) == 1 and "'flaky' raised ValueError: bad row 1" in first[0] and "4 pairs" in first[0]
    assert caplog.records[0].exc_info is not None  # the traceback, once
    warnings = [r.getMessage() for r in caplog.records]
    # three distinct errors in full, then one note that the rest are only counted, then nothing
    assert len(warnings) == 4 and "bad row 3" in warnings[2] and "only counted" in warnings[3]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, MemoryError, KeyboardInterrupt])
def test_pool_judge_raises_out_of_memory_and_interrupts(error):
    judge = PoolJudge(RewardModelPool([Raising("big", error)]))
    with pytest.raises(error):
        judge.margins(0, make_pairs(random.Random(0), 2))
    assert judge.errors == {"big": 0}


@pytest.mark.parametrize("kind", ["bayes", "single", "random", "majority", "uwo", "laser"])
def test_routers_give_no_label_and_learn_nothing_when_every_rm_raises(kind, tiny_encoder_dir):
    router = {
        "majority": lambda: MajorityVoteRouter(RMS, seed=0),
        "bayes": lambda: no_prior_bayes(tiny_encoder_dir, RMS),
        "single": lambda: SingleRMRouter(RMS, rm=RMS[1]),
        "random": lambda: RandomRouter(RMS, seed=0),
        "uwo": lambda: UWORouter(RMS, coeff=0.5),
        "laser": lambda: LASERRouter(RMS, 0.1, tiny_encoder_dir, "mean", 64, warmup=2, seed=0),
    }[kind]()
    judge = PoolJudge(RewardModelPool([Raising(name) for name in RMS]))
    routing = router.route(make_pairs(random.Random(1), 6), judge)
    assert routing.preference.tolist() == [0.0] * 6 and sum(judge.errors.values()) >= 1
    before = roundtrip(router.state_dict())
    router.observe(routing, torch.full((6,), float("nan")))  # what the module hands back for unlabelled pairs
    after = router.state_dict()
    for key, value in before.items():
        if isinstance(value, dict):
            assert all(torch.equal(value[k], after[key][k]) for k in value if isinstance(value[k], torch.Tensor)), key
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key
    assert router.metrics().get("router/nonfinite_losses", 0.0) == 0.0


def test_live_fit_with_a_raising_rm_trains_on_the_others_and_logs_its_errors(
    tiny_causal_lm_dir, tiny_encoder_dir, tmp_path, caplog
):
    pool = RewardModelPool([WeightedLength(RMS[0]), Raising(RMS[1])])
    router = record(no_prior_bayes(tiny_encoder_dir, RMS))
    module = OnlineDPOModule(pool=pool, **make_module(tiny_causal_lm_dir).hparams, router=router, optimizer=adamw(1e-2))
    with caplog.at_level(logging.WARNING, logger=JUDGES_LOG):
        trainer = fit(module, prompts(), router, tmp_path, steps=2)
    # the judge outlives the step: its counts are the whole run's, one per step that routed pairs to the broken RM
    steps_asking = sum(bool((r.rm_index == 1).any()) for r in router.routings)
    assert steps_asking == 2 and module.live_judge().errors == {RMS[0]: 0, RMS[1]: 2}
    metrics = trainer.logged_metrics
    assert float(metrics[f"train/rm_errors/{RMS[1]}"]) == 2.0 and float(metrics[f"train/rm_errors/{RMS[0]}"]) == 0.0
    warnings = [r.getMessage() for r in caplog.records if r.name == JUDGES_LOG]
    assert len(warnings) == 1 and f"'{RMS[1]}' raised RuntimeError: boom" in warnings[0]
    for routing, losses in zip(router.routings, router.observed, strict=True):
        broken = routing.rm_index == 1
        assert (routing.preference[broken] == 0).all() and losses[broken].isnan().all()
    assert float(metrics["train/pairs"]) > 0  # the working RM's pairs still train
    # the broken RM's posterior never moved from its prior; the working RM's did
    initial = router.states[0]["posteriors"]
    assert torch.equal(router.posteriors.precision[1], initial["precision"][1])
    assert torch.equal(router.posteriors.vector[1], initial["vector"][1])
    assert not torch.equal(router.posteriors.precision[0], initial["precision"][0])
    assert router.nonfinite_losses == 0


# Empty generations and all-tied responses


def test_empty_generations_form_no_pair_and_change_nothing(tiny_causal_lm_dir, tiny_encoder_dir, tmp_path):
    module, router = make_module(tiny_causal_lm_dir), record(no_prior_bayes(tiny_encoder_dir, RM_NAMES))
    only_token(module, None)
    before = policy_weights(module)
    trainer = fit(module, prompts(), router, tmp_path, steps=1)
    metrics = trainer.logged_metrics
    assert float(metrics["train/eos_rate"]) == 1.0  # every sample is EOS alone: an empty text
    assert float(metrics["train/candidate_pairs"]) == 0.0 and float(metrics["train/pairs"]) == 0.0
    assert module.fake_judge.calls == 0 and router.pairs_routed == 0
    assert router.step_losses[0].item() == 0.0 and torch.equal(policy_weights(module), before)
    assert_state_equal(roundtrip(router.state_dict()), router.states[0])
    assert router.normalizer.history.numel() == 0


class ZeroJudge:
    """Every RM calls every pair a tie."""

    def margins(self, rm_index, pairs):
        return torch.zeros(len(pairs))


@pytest.mark.parametrize("tie", ["zero_margins", "identical_texts"])
def test_all_tied_responses_give_no_label_and_change_nothing(tie, tiny_causal_lm_dir, tiny_encoder_dir, tmp_path):
    module, router = make_module(tiny_causal_lm_dir), record(no_prior_bayes(tiny_encoder_dir, RM_NAMES))
    module.configure_model()
    if tie == "zero_margins":
        module.fake_judge = ZeroJudge()
    else:  # every sample is the same printable token repeated: k identical texts per prompt
        only_token(module, module.tokenizer("bread", add_special_tokens=False)["input_ids"][0])
    before = policy_weights(module)
    trainer = fit(module, prompts(), router, tmp_path, steps=1)
    metrics = trainer.logged_metrics
    expected_pairs = 6 if tie == "zero_margins" else 0  # 2 prompts x 3 pairs of 3 samples; identical texts never pair
    assert float(metrics["train/candidate_pairs"]) == expected_pairs == router.pairs_routed
    assert float(metrics["train/pairs"]) == 0.0 and "train/dpo_loss" not in metrics
    assert router.routings[0].preference.tolist() == [0.0] * expected_pairs
    assert router.observed[0].isnan().all()
    assert router.step_losses[0].item() == 0.0 and torch.equal(policy_weights(module), before)
    assert_state_equal(roundtrip(router.state_dict()), router.states[0])
    assert router.nonfinite_losses == 0  # a tie is no label, not a failed loss


# NaN losses


def nan_losses(monkeypatch, rows: slice) -> None:
    """Makes the module's DPO loss NaN for the trained pairs at `rows`, as a NaN reference log-prob would.

    `torch.where` leaves the other rows' gradients exact, so the test sees the module's handling of the NaN alone.
    """
    real = dpo.dpo_loss

    def dpo_loss(*args):
        out = real(*args)
        bad = torch.zeros_like(out.losses, dtype=torch.bool)
        bad[rows] = True
        return out._replace(losses=torch.where(bad, float("nan"), out.losses))

    monkeypatch.setattr(dpo, "dpo_loss", dpo_loss)


def prior_module_and_router(path, prior) -> tuple[OnlineDPOModule, BayesianRouter]:
    module = make_module(path, pool=RewardModelPool([WeightedLength(name) for name in RMS]))
    module.configure_model()
    return module, record(bayes(prior, True, True, "prior_injection"))


def test_nan_loss_of_one_pair_is_left_out_and_the_posterior_is_as_if_unseen(
    tiny_causal_lm_dir,
    prior_path,  # noqa: F811 (the imported fixture)
    tmp_path,
    monkeypatch,
):
    nan_losses(monkeypatch, slice(0, 1))
    module, router = prior_module_and_router(tiny_causal_lm_dir, prior_path)
    before = policy_weights(module)
    trainer = fit(module, prompts(), router, tmp_path, steps=1)
    routing, losses = router.routings[0], router.observed[0]
    labelled = (routing.preference != 0).nonzero().flatten()
    bad, good = labelled[0], labelled[1:]
    assert len(good) >= 2 and losses[bad].isnan() and losses[good].isfinite().all()
    assert float(trainer.logged_metrics["train/pairs"]) == len(good)
    torch.testing.assert_close(router.step_losses[0], losses[good].mean())  # the mean over the other pairs only
    after = policy_weights(module)
    assert after.isfinite().all() and not torch.equal(after, before)  # the other pairs trained
    # a twin router from the same state, shown the step without that pair, ends byte-identical
    twin = bayes(prior_path, True, True, "prior_injection")
    twin.load_state_dict(router.states[0])
    keep = torch.arange(len(losses)) != bad
    twin.observe(Routing(routing.preference[keep], routing.rm_index[keep], routing.rm_calls, routing.context[keep]),
                 losses[keep])  # fmt: skip
    assert_state_equal(router.state_dict(), twin.state_dict())
    assert not torch.equal(router.posteriors.precision, router.states[0]["posteriors"]["precision"])  # it learned
    assert router.nonfinite_losses == 1 and twin.nonfinite_losses == 0
    assert float(trainer.logged_metrics["router/nonfinite_losses"]) == 1.0


def test_step_without_a_finite_loss_trains_nothing_and_learns_nothing(
    tiny_causal_lm_dir,
    prior_path,  # noqa: F811 (the imported fixture)
    tmp_path,
    monkeypatch,
):
    nan_losses(monkeypatch, slice(None))
    module, router = prior_module_and_router(tiny_causal_lm_dir, prior_path)
    before = policy_weights(module)
    trainer = fit(module, prompts(), router, tmp_path, steps=1)
    labelled = int((router.routings[0].preference != 0).sum())
    assert labelled > 0 and router.observed[0].isnan().all()
    assert float(trainer.logged_metrics["train/pairs"]) == 0.0 and "train/dpo_loss" not in trainer.logged_metrics
    # a first step with weight_decay 0: the zero loss's zero gradients leave AdamW's weights as they were
    assert router.step_losses[0].item() == 0.0 and torch.equal(policy_weights(module), before)
    assert_state_equal(roundtrip(router.state_dict()), router.states[0])
    assert router.nonfinite_losses == labelled


def test_nan_policy_logprob_of_one_pair_leaves_the_weights_finite(tiny_causal_lm_dir, tmp_path, monkeypatch):
    module = make_module(tiny_causal_lm_dir)
    module.configure_model()

    def one_nan(*args):
        policy, reference = policy_and_reference_logprobs(*args)
        bad = torch.zeros_like(policy)
        bad[0] = float("nan")
        return policy + bad, reference

    monkeypatch.setattr("rmrouter.policy.core.policy_and_reference_logprobs", one_nan)
    router = record(SingleRMRouter(RM_NAMES, rm=RM_NAMES[0]))
    before = policy_weights(module)
    trainer = fit(module, prompts(), router, tmp_path, steps=1)
    assert router.observed[0].isnan().sum() >= 1 and router.observed[0].isfinite().any()
    after = policy_weights(module)
    assert after.isfinite().all() and not torch.equal(after, before)  # the other pairs still trained
    assert float(trainer.logged_metrics["train/skipped_step"]) == 0.0


def test_nan_inside_the_network_skips_the_step_and_keeps_the_weights(tiny_causal_lm_dir, tmp_path, monkeypatch):
    module = make_module(tiny_causal_lm_dir)
    module.configure_model()

    def poisoned(*args):
        # A NaN that reaches every weight's gradient, as a NaN activation inside the network would.
        policy, reference = policy_and_reference_logprobs(*args)
        weight = next(module.policy.parameters())
        return policy + weight.sum() * torch.tensor(float("nan")) * 0, reference

    monkeypatch.setattr("rmrouter.policy.core.policy_and_reference_logprobs", poisoned)
    before = policy_weights(module)
    trainer = fit(module, prompts(), record(SingleRMRouter(RM_NAMES, rm=RM_NAMES[0])), tmp_path, steps=1)
    assert float(trainer.logged_metrics["train/skipped_step"]) == 1.0
    assert torch.equal(policy_weights(module), before)


def test_a_step_without_pairs_after_a_real_one_leaves_the_weights_where_they_were(tiny_causal_lm_dir, tmp_path):
    module = make_module(tiny_causal_lm_dir, weight_decay=0.1)
    module.configure_model()
    router = record(SingleRMRouter(RM_NAMES, rm=RM_NAMES[0]))
    judge, ties = module.fake_judge, ZeroJudge()
    weights = []

    class SecondStepTied:
        def margins(self, rm_index, pairs):
            weights.append(policy_weights(module))
            return (judge if len(weights) == 1 else ties).margins(rm_index, pairs)

    module.fake_judge = SecondStepTied()
    trainer = fit(module, prompts(), router, tmp_path, steps=2)
    assert not torch.equal(weights[1], weights[0])  # step 1 trained
    # step 2 had no pair: neither AdamW's momentum nor its weight decay moved anything
    assert torch.equal(policy_weights(module), weights[1])
    assert float(trainer.logged_metrics["train/skipped_step"]) == 1.0
