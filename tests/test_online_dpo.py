"""Online DPO on the tiny Llama: sampling, pairing, live and simulated fits, the router hand-off, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from behaviour_helpers import record_of
from lightning.pytorch import Trainer

from rmrouter.data.behaviour_datamodule import BehaviourDataModule
from rmrouter.data.behaviour_split import BehaviourSplit
from rmrouter.data.prompt_datamodule import PromptDataModule
from rmrouter.data.records import PreferenceRecord, PromptRecord, as_messages
from rmrouter.data.sources import PromptSource
from rmrouter.modules.online_dpo import OnlineDPOModule
from rmrouter.online.pairs import best_vs_worst_rows, index_pairs
from rmrouter.policy import generation as gen
from rmrouter.reward_models.base import RewardModel
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import Router, Routing

RM_NAMES = ["right", "wrong"]


class WeightedLength(RewardModel):
    """An RM with a parameter, so a pool leaking into the module's state_dict would show."""

    def __init__(self, name: str):
        super().__init__(name)
        self.weight = torch.nn.Parameter(torch.ones(()))

    def _score(self, prompts, responses, references):
        return torch.tensor([float(len(r)) for r in responses]) * self.weight.detach()


class FakeJudge:
    """Margin = difference of text lengths (a longer `first` wins); counts its calls."""

    def __init__(self):
        self.calls = 0

    def margins(self, rm_index, pairs):
        self.calls += 1
        return torch.tensor([float(len(a) - len(b)) for a, b in zip(pairs.first, pairs.second, strict=True)])


class FixedRouter(Router):
    """Always RM `rm`; records, in `observe`, the losses and a snapshot of the policy's weights."""

    def __init__(self, rm_names, rm: int):
        super().__init__(rm_names)
        self.rm, self.observed, self.snapshots, self.losses, self.module = rm, [], [], [], None

    def setup(self, trainer, pl_module, stage):
        self.module = pl_module

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())

    def label(self, pairs, judge):
        margins = judge.margins(self.rm, pairs)
        preference = torch.nan_to_num(torch.sign(margins), nan=0.0)
        return Routing(preference, torch.full((len(pairs),), self.rm), len(pairs))

    def observe(self, routing, losses):
        self.observed.append(losses.clone())
        self.snapshots.append(policy_weights(self.module))


class Tiny(OnlineDPOModule):
    def live_judge(self):
        return self.fake_judge

    def recorded_judge(self, scores):
        module = self

        class Recorded:
            def margins(self, rm_index, pairs):
                module.judged = scores[..., 0] - scores[..., 1]
                return module.judged[:, rm_index]

        return Recorded()


class Prompts(PromptSource):
    def read(self):
        return [PromptRecord(f"q{i}", as_messages(f"how do I bake bread {i}?"), "chat", "mem") for i in range(4)]


def policy_weights(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.policy.parameters()])


def adamw(lr: float, weight_decay: float = 0.0):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_module(path, simulated=False, router=None, **overrides) -> Tiny:
    pool = None if simulated else RewardModelPool([WeightedLength(n) for n in RM_NAMES])
    args = dict(
        policy=path, pool=pool, num_samples=3, pairing="all", pairs_per_prompt=2, min_score_gap=0.0, beta=0.1,
        loss_type="sigmoid", max_new_tokens=8, temperature=1.0, top_p=1.0,
        max_prompt_length=32, missing_eos_penalty=0.0, lora=None, simulated=simulated, seed=0,
        log_text_every_n_steps=1,
    )  # fmt: skip
    args["optimizer"] = overrides.pop("optimizer", None) or adamw(1e-2, overrides.pop("weight_decay", 0.0))
    module = Tiny(**{**args, **overrides}, router=router if router is not None else FixedRouter(RM_NAMES, 0))
    module.fake_judge = FakeJudge()
    return module


def fit(module, datamodule, router, tmp_path, steps=2) -> Trainer:
    """Fits `module` routed by `router` (which replaces the module's)."""
    torch.manual_seed(0)
    module.router = router
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return trainer


def test_sampling_gives_k_completions_per_prompt_cut_at_eos(tiny_causal_lm_dir, tiny_tokenizer):
    module = make_module(tiny_causal_lm_dir)
    module.configure_model()
    prompts = gen.prompt_ids(tiny_tokenizer, [as_messages("hi"), as_messages("a much longer question here")], 32)
    assert prompts[0][-1] == prompts[1][-1]  # both end with the generation prompt
    torch.manual_seed(0)
    samples = gen.sample_completions(module.policy, tiny_tokenizer, prompts, 3, 6, 1.0, 1.0)
    assert [len(row) for row in samples] == [3, 3]
    eos = tiny_tokenizer.eos_token_id
    for completion in (c for row in samples for c in row):
        assert 1 <= len(completion.token_ids) <= 6
        assert completion.has_eos == (completion.token_ids[-1] == eos)
        assert eos not in completion.token_ids[:-1] and tiny_tokenizer.pad_token_id not in completion.token_ids
    assert module.policy.training  # back to train mode after generating


def test_pairs_never_join_identical_or_empty_texts():
    texts = ["a", "a", "", "b", "  ", "c"]
    for pairing in ("all", "random"):
        pairs = index_pairs(texts, pairing, 10, torch.Generator().manual_seed(0))
        assert pairs and all(texts[i] != texts[j] and texts[i].strip() and texts[j].strip() for i, j in pairs)
    assert sorted(index_pairs(texts, "all", 0, torch.Generator())) == [(0, 3), (0, 5), (1, 3), (1, 5), (3, 5)]
    draw = [index_pairs(texts, "random", 2, torch.Generator().manual_seed(s)) for s in (1, 1)]
    assert draw[0] == draw[1] and len(draw[0]) == 2


def test_best_vs_worst_keeps_one_pair_per_prompt():
    # prompt 0: 0 > 1, 1 > 2, 0 > 2: completion 0 is best and 2 worst
    rows = best_vs_worst_rows([0, 0, 0, 1], [(0, 1), (1, 2), (0, 2), (0, 1)], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert rows == [2]


def test_live_fit_updates_policy_keeps_reference_and_observes_before_step(tiny_causal_lm_dir, tmp_path):
    module, router = make_module(tiny_causal_lm_dir), FixedRouter(RM_NAMES, 0)
    module.configure_model()
    before, reference = policy_weights(module), [p.detach().clone() for p in module.reference.parameters()]
    trainer = fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), router, tmp_path)
    assert module.fake_judge.calls == 2 and len(router.observed) == 2
    for losses in router.observed:
        assert losses.numel() > 0 and losses.isfinite().any()  # all pairs of 3 distinct samples, NaN only if tied
    # observe sees the weights the losses were computed with: step 0's before any update, step 1's after one
    assert torch.equal(router.snapshots[0], before)
    assert not torch.equal(router.snapshots[1], before)
    assert not torch.equal(policy_weights(module), router.snapshots[1])
    assert all(torch.equal(a, b) for a, b in zip(reference, module.reference.parameters(), strict=True))
    metrics = trainer.logged_metrics
    for name in ("train/dpo_loss", "train/reward_acc", "train/implicit_kl", "train/eos_rate", "train/pairs"):
        assert math.isfinite(float(metrics[name])), name
    assert float(metrics["router/select_rate/right"]) == 1.0
    assert module.policy.training and not module.reference.training


def test_no_usable_pair_gives_finite_zero_loss(tiny_causal_lm_dir, tmp_path):
    module, router = make_module(tiny_causal_lm_dir, min_score_gap=1e9), FixedRouter(RM_NAMES, 0)
    module.fake_judge = FakeJudge()
    # every margin is within the huge tie gap, so the router gets only ties and nothing is trained
    trainer = fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), router, tmp_path, steps=1)
    assert float(trainer.logged_metrics["train/pairs"]) == 0.0
    assert router.observed[0].isnan().all()
    assert router.losses[0].item() == 0.0
    assert "train/dpo_loss" not in trainer.logged_metrics


def test_lora_trains_the_adapter_against_the_disabled_base(tiny_causal_lm_dir, tmp_path):
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
    module, router = make_module(tiny_causal_lm_dir, lora=lora), FixedRouter(RM_NAMES, 0)
    trainer = fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), router, tmp_path, steps=1)
    assert module.reference is None and float(trainer.logged_metrics["train/pairs"]) > 0
    optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    named = {id(p): n for n, p in module.named_parameters()}
    assert optimized and all("lora_" in named[id(p)] for p in optimized)


@pytest.mark.parametrize("lora", [None, {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}])
def test_logprobs_from_trimmed_logits_equal_the_full_forward(tiny_causal_lm_dir, lora):
    module = make_module(tiny_causal_lm_dir, lora=lora)
    module.configure_model()
    assert module._keeps_logits  # the tiny Llama takes logits_to_keep, so the trimmed path is the one tested
    prompts, responses = [[5, 6, 7, 8, 9], [5, 6], [7, 8, 9]], [[10, 11], [12, 13, 14, 15], [16]]

    def logprobs(keep_logits: bool):
        return gen.policy_and_reference_logprobs(
            module.policy, module.reference, prompts, responses, 0, False, keep_logits, module.hparams.share_prompts
        )

    trimmed, full = logprobs(True), logprobs(False)
    for a, b in zip(trimmed, full, strict=True):
        torch.testing.assert_close(a, b)
    logits = module.policy(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11]])).logits.log_softmax(-1)[0]
    expected = logits[4, 10] + logits[5, 11]  # the first row's response scored by hand
    torch.testing.assert_close(trimmed[0][0], expected)


@pytest.mark.parametrize("lora", [None, {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}])
def test_shared_prompt_steps_train_as_whole_rows_do(tiny_causal_lm_dir, tmp_path, lora):
    """The prompt cache (share_prompts, the default) against the whole-row forwards it replaces: same routed losses
    and the same weights after two live steps, with the adapter's disabled base or a frozen copy as the reference."""
    runs = {}
    for share in (True, False):
        module, router = make_module(tiny_causal_lm_dir, lora=lora, share_prompts=share), FixedRouter(RM_NAMES, 0)
        fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), router, tmp_path / str(share))
        runs[share] = (policy_weights(module), torch.cat(router.observed))
    (shared_weights, shared_losses), (whole_weights, whole_losses) = runs[True], runs[False]
    assert shared_losses.isfinite().sum() > 2
    torch.testing.assert_close(shared_losses, whole_losses, rtol=1e-4, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(shared_weights, whole_weights, rtol=1e-4, atol=1e-5)


def test_prompt_batches_are_record_lists_in_seeded_order():
    def order(seed):
        data = PromptDataModule(train=[Prompts(path="unused")], batch_size=3, seed=seed)
        data.setup("fit")
        data.setup("fit")
        batches = list(data.train_dataloader())
        assert [len(b) for b in batches] == [3, 1] and all(isinstance(r, PromptRecord) for r in batches[0])
        return [r.id for b in batches for r in b]

    assert order(0) == order(0) and sorted(order(0)) == ["q0", "q1", "q2", "q3"]


def test_pool_stays_out_of_the_checkpoint(tiny_causal_lm_dir, tmp_path):
    module = make_module(tiny_causal_lm_dir)
    trainer = fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), FixedRouter(RM_NAMES, 0),
                  tmp_path, steps=1)  # fmt: skip
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert any(key.startswith("policy.") for key in state)
    assert not any("reward_models" in key or "pool" in key for key in state)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in module.pool.parameters())


def test_checkpoints_hold_the_trained_weights_only_and_restore_them(tiny_causal_lm_dir, tmp_path):
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
    module = make_module(tiny_causal_lm_dir, lora=lora)
    trainer = fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), FixedRouter(RM_NAMES, 0),
                  tmp_path, steps=1)  # fmt: skip
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    trained = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert set(state) == set(trained) and all("lora_" in key for key in state)

    restored = make_module(tiny_causal_lm_dir, lora=lora)
    restored.configure_model()
    restored.on_load_checkpoint({"state_dict": state})
    restored.load_state_dict(state, strict=restored.strict_loading)
    assert all(torch.equal(p, trained[n]) for n, p in restored.named_parameters() if p.requires_grad)
    with pytest.raises(KeyError, match="lacks 1 trained weights"):
        restored.on_load_checkpoint({"state_dict": dict(list(state.items())[1:])})


@pytest.fixture
def behaviour_file(tmp_path) -> str:
    """RM `right` agrees with every label, RM `wrong` with none."""
    rows = []
    for i in range(8):
        domain = "math" if i % 2 else "chat"
        pair = PreferenceRecord(f"p{i}", as_messages(f"question {i}"), f"good answer {i}", f"bad {i}", domain, "mem")
        rows.append(json.dumps(record_of(pair, {"right": 1.0 + i, "wrong": -2.0}).to_dict()))
    path = tmp_path / "behaviour.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.mark.parametrize(("rm", "expected"), [(0, 1.0), (1, 0.0)])
def test_simulated_fit_logs_labelling_accuracy(tiny_causal_lm_dir, behaviour_file, tmp_path, rm, expected):
    module, router = make_module(tiny_causal_lm_dir, simulated=True), FixedRouter(RM_NAMES, rm)
    data = BehaviourDataModule(behaviour_file, RM_NAMES, split=BehaviourSplit(fractions={"train": 1.0}), batch_size=4)
    module.configure_model()
    before = policy_weights(module)
    trainer = fit(module, data, router, tmp_path)
    metrics = trainer.logged_metrics
    assert float(metrics["train/labelling_acc"]) == expected
    assert float(metrics["train/labelling_acc/math"]) == expected
    assert float(metrics["train/pairs"]) == 4.0
    assert not torch.equal(policy_weights(module), before)
    # sides were shuffled: the judge saw some pairs with the rejected response first (negative `right` margins)
    assert (module.judged[:, 0] < 0).any() and (module.judged[:, 0] > 0).any()


def test_the_injected_optimizer_and_scheduler_train_the_trainable_weights(tiny_causal_lm_dir, tmp_path):
    built = []

    def sgd(params):
        built.append(torch.optim.SGD(params, lr=0.1))
        return built[-1]

    def halving(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)

    module = make_module(tiny_causal_lm_dir, optimizer=sgd, lr_scheduler=halving)
    fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), FixedRouter(RM_NAMES, 0), tmp_path, 3)
    (optimizer,) = built
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # stepped every step
    trainable = {id(p) for p in module.policy.parameters() if p.requires_grad}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == trainable


class LengthJudge(RewardModel):
    def _score(self, prompts, responses, references):
        return torch.tensor([float(len(r)) for r in responses])


def test_test_evaluates_the_trained_adapter_against_its_disabled_base(tiny_causal_lm_dir, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from rmrouter.evaluation import Evaluation
    from rmrouter.evaluation.generate import greedy_responses

    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
    module = make_module(tiny_causal_lm_dir, lora=lora, optimizer=adamw(5e-2))
    trainer = fit(module, PromptDataModule(train=[Prompts(path="unused")], batch_size=2), FixedRouter(RM_NAMES, 0),
                  tmp_path, steps=2)  # fmt: skip
    with torch.no_grad():  # two steps move the tiny model's greedy answers too little to tell the adapter is on
        for name, weight in module.policy.named_parameters():
            if "lora_B" in name:
                weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    evaluation = Evaluation(judge=LengthJudge("length-judge"), max_new_tokens=6, batch_size=2)
    fresh = make_module(tiny_causal_lm_dir, lora=lora, evaluation=evaluation)
    data = PromptDataModule(test=[Prompts(path="unused")], test_batch_size=2)
    tester = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (result,) = tester.test(fresh, datamodule=data, ckpt_path=str(tmp_path / "last.ckpt"))
    rows = [json.loads(line) for line in (tmp_path / "evaluation" / "rows.jsonl").read_text().splitlines()]
    prompts = gen.prompt_ids(tiny_tokenizer, [row["prompt"] for row in rows], 512)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    assert [row["base"] for row in rows] == greedy_responses(base, tiny_tokenizer, prompts, 6, 2)
    assert [row["policy"] for row in rows] == greedy_responses(module.policy, tiny_tokenizer, prompts, 6, 2)
    assert result["test/chat/rows"] == 4
    assert any(row["policy"] != row["base"] for row in rows)  # the adapter was on for the policy's answers
    # an adapter that never trained (LoRA's B starts at 0) is its base: every answer ties
    untrained = make_module(tiny_causal_lm_dir, lora=lora, evaluation=evaluation)
    (result,) = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path / "untrained").test(untrained, datamodule=data)  # fmt: skip
    assert result["test/chat/same_as_base"] == 1.0 and result["test/chat/win_rate"] == 0.5
