"""The paper's GPU setup by name: every YAML of configs/paper/ and configs/trainer/fsdp_bf16.yaml parses with the real
CLI parser, holds the paper's values (docs/concepts/method.md, "The paper's run"), and builds and runs on tiny
stand-ins of the five HF models.

The real run needs GPUs and the hub. Here the chain collect -> offline router -> online DPO runs a few steps on CPU
with every HF id swapped for a tiny fixture model. Lightning refuses FSDP on a CPU trainer, so the overlay is parsed
with the paper's configs, its strategy is built on its own, and its FSDP arguments wrap the module's LoRA policy in a
one-process gloo group; the `gpu` test runs the overlay for real.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from rmrouter.cli import RMRouterCLI, main
from rmrouter.data.behaviour import read_behaviour
from rmrouter.modules.online_dpo import OnlineDPOModule
from rmrouter.pipeline import run_output
from rmrouter.reward_models import RewardModelPool

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAPER = CONFIGS / "paper"
FSDP_OVERLAY = CONFIGS / "trainer" / "fsdp_bf16.yaml"
CPU_OVERLAY = CONFIGS / "trainer" / "cpu.yaml"
# The paper's headline run: the authors' four RMs, in pool order, under the names the configs give them.
PAPER_RMS = {
    "mistral-rm-raft-7b": "hendrydong/Mistral-RM-for-RAFT-GSHF-v0",
    "grm-llama3.2-3b": "Ray2333/GRM-Llama3.2-3B-rewardmodel-ft",
    "grm-gemma2-2b": "Ray2333/GRM-gemma2-2B-rewardmodel-ft",
    "skywork-v2-qwen3-0.6b": "Skywork/Skywork-Reward-V2-Qwen3-0.6B",
}
PRIOR = "checkpoints/paper/offline_router/prior.pt"
PAPER_GPUS = 8  # the GPU count the configs' per-device prompt batch is written for (32 prompts in all)
STEPS, PROMPTS_PER_STEP = 2, 2


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def build(value, annotation):
    """`value` (a `class_path` dict) instantiated by jsonargparse as an argument of type `annotation`."""
    parser = ArgumentParser()
    parser.add_argument("--value", type=annotation)
    return parser.instantiate_classes(parser.parse_object({"value": value})).value


class ParseOnlyCLI(RMRouterCLI):
    """The project's CLI up to the parsed config: a GPU trainer and the real HF models cannot be built here, so the
    checks that refuse them on this machine (and the prior the configs read) are left out too."""

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def parse_paper_online(*overlays: Path):
    configs = [PAPER / "online_dpo.yaml", PAPER / "bayesian.yaml", *overlays]
    return ParseOnlyCLI(args=[arg for path in configs for arg in ("--config", str(path))], run=False).config


def test_every_paper_yaml_is_covered_here():
    """A new file in configs/paper/ must get its checks in this module."""
    assert sorted(path.name for path in PAPER.glob("*.yaml")) == [
        "bayesian.yaml", "behaviour.yaml", "offline_router.yaml", "online_dpo.yaml", "pool.yaml",
    ]  # fmt: skip


def test_pool_is_the_papers_four_rms_in_bf16_and_builds_on_tiny_classifiers(tiny_classifier_dir):
    spec = load(PAPER / "pool.yaml")
    entries = [entry["init_args"] for entry in spec["init_args"]["reward_models"]]
    assert {entry["name"]: entry["model"] for entry in entries} == PAPER_RMS
    assert list(PAPER_RMS) == [entry["name"] for entry in entries]  # the order the router and prior use
    assert all(entry["dtype"] == "bfloat16" for entry in entries)
    classes = {entry["class_path"] for entry in spec["init_args"]["reward_models"]}
    assert classes == {"rmrouter.reward_models.SequenceClassifierRewardModel"}
    pool = build(tiny_pool(spec, tiny_classifier_dir), RewardModelPool)
    assert pool.names == list(PAPER_RMS)
    assert all(rm.model.dtype == torch.bfloat16 for rm in pool.reward_models)
    margins = pool.margins([[{"role": "user", "content": "2 + 2?"}]] * 2, ["4", "5"], ["5", "4"], [None, None])
    assert margins.shape == (2, 4) and margins.isfinite().all()  # pointwise classifiers never abstain


def test_online_configs_parse_with_the_papers_values_and_the_fsdp_overlay():
    config = parse_paper_online(FSDP_OVERLAY)
    model = config.model.init_args
    assert config.model.class_path == "rmrouter.modules.online_dpo.OnlineDPOModule"
    assert model.policy == "RLHFlow/LLaMA3-SFT-v2" and not model.simulated
    assert [rm.init_args.name for rm in model.pool.init_args.reward_models] == list(PAPER_RMS)
    assert (model.num_samples, model.pairing, model.pairs_per_prompt) == (6, "random", 4)
    assert (model.temperature, model.max_new_tokens, model.beta, model.loss_type) == (0.8, 256, 1.0, "sigmoid")
    assert model.optimizer.init_args.lr == 5e-6
    assert model.lora["r"] == 16 and model.lora["lora_alpha"] == 32
    assert sorted(model.lora["target_modules"]) == ["q_proj", "v_proj"]
    assert config.data.init_args.batch_size * PAPER_GPUS == 32

    router = model.router
    assert router.class_path == "rmrouter.routers.bayesian.BayesianRouter"
    assert router.init_args.rm_names is None  # the router takes the pool's names, in pool order
    assert (router.init_args.sigma2, router.init_args.lambda0) == (1.0, 1.0)
    assert router.init_args.use_prior and router.init_args.online_updates
    assert router.init_args.integration == "prior_injection"
    assert router.init_args.prior_path == PRIOR == str(run_output(PAPER / "offline_router.yaml", "RouterPriorWriter"))

    trainer = config.trainer
    assert (trainer.accelerator, trainer.devices, trainer.precision) == ("gpu", "auto", "bf16-mixed")
    strategy = build(trainer.strategy.as_dict(), Strategy)
    assert type(strategy) is FSDPStrategy
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "full"
    precision = FSDPPrecision(trainer.precision)
    assert precision.mixed_precision_config.param_dtype == torch.bfloat16  # computes in bf16 ...
    assert precision._desired_input_dtype == torch.float32  # ... on fp32 weights: LoRA steps of 5e-6 survive


def test_the_fsdp_overlay_only_changes_the_trainer():
    assert parse_paper_online(FSDP_OVERLAY).model == parse_paper_online().model
    assert set(load(FSDP_OVERLAY)) == {"trainer"}


def any_router():
    """A router for a module built outside a run (these tests never route)."""
    from rmrouter.routers.baseline_routers import RandomRouter

    return RandomRouter(["a", "b"], seed=0)


@pytest.mark.parametrize(
    "stored_dtype",
    [
        torch.float32,
        torch.bfloat16,
    ],
    ids=["fp32_checkpoint", "bf16_checkpoint"],
)
def test_fsdp_arguments_wrap_each_decoder_layer_of_the_lora_policy(tmp_path, tiny_causal_lm_dir, stored_dtype):
    """The overlay's FSDP arguments on the module's own policy, as Lightning wraps it (the whole LightningModule)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    strategy = build(load(FSDP_OVERLAY)["trainer"]["strategy"], Strategy)
    online = load(PAPER / "online_dpo.yaml")["model"]["init_args"]
    policy = tiny_policy(tiny_causal_lm_dir, tmp_path / "policy", stored_dtype)
    module = OnlineDPOModule(
        **{
            **online,
            "policy": policy,
            "pool": None,
            "simulated": True,
            "router": any_router(),
            "optimizer": torch.optim.AdamW,
        }
    )
    module.configure_model()
    plain = {name for name, p in module.named_parameters() if p.requires_grad}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        mixed = FSDPPrecision("bf16-mixed").mixed_precision_config
        cpu = torch.device("cpu")
        wrapped = FullyShardedDataParallel(module, device_id=cpu, mixed_precision=mixed, **strategy.kwargs)
        units = [m for m in wrapped.modules() if isinstance(m, FullyShardedDataParallel)]
        layers = [m for m in wrapped.modules() if isinstance(m, LlamaDecoderLayer)]
        assert len(layers) == 2 and len(units) == 1 + len(layers)  # the root, then one unit per decoder layer
        assert all(isinstance(unit.module, LlamaDecoderLayer) for unit in units[1:])
        trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in name for name in trainable)
        assert {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable} == {"q_proj", "v_proj"}
        # the checkpoint filter sees the names a full state dict uses, without FSDP's wrapper segments
        assert any("_fsdp_wrapped_module" in name for name, _ in module.named_parameters())
        assert module._trainable_names() == plain
    finally:
        dist.destroy_process_group()


def test_prompt_batches_pass_the_fsdp_precision_plugin():
    from rmrouter.data.prompt_datamodule import PromptDataModule

    data = copy.deepcopy(load(PAPER / "online_dpo.yaml")["data"])
    for source in data["init_args"]["train"]:
        source.setdefault("init_args", {})["limit"] = 1
    datamodule = build(data, PromptDataModule)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    precision = FSDPPrecision(load(FSDP_OVERLAY)["trainer"]["precision"])
    assert precision.convert_input(batch) == batch  # Lightning calls this on every training batch


def test_dpo_backward_through_the_overlays_activation_checkpointing(tiny_causal_lm_dir):
    from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing

    strategy = build(load(FSDP_OVERLAY)["trainer"]["strategy"], Strategy)
    online = load(PAPER / "online_dpo.yaml")["model"]["init_args"]
    module = OnlineDPOModule(
        **{
            **online,
            "policy": tiny_causal_lm_dir,
            "pool": None,
            "simulated": True,
            "router": any_router(),
            "optimizer": torch.optim.AdamW,
        }
    )
    module.configure_model()
    _setup_activation_checkpointing(module, strategy._activation_checkpointing_kwargs)  # as FSDPStrategy does
    from rmrouter.policy.generation import policy_and_reference_logprobs

    prompts, responses = [[5, 6, 7, 8], [5, 6]], [[9, 10], [11, 12, 13]]  # ragged: the batch is padded
    policy, _ = policy_and_reference_logprobs(
        module.policy,
        module.reference,
        prompts,
        responses,
        0,
        False,
        module._keeps_logits,
        module.hparams.share_prompts,
    )
    policy.sum().backward()
    assert all(p.grad is not None for p in module.policy.parameters() if p.requires_grad)


@pytest.fixture
def paper_workdir(tmp_path, monkeypatch, tiny_causal_lm_dir, tiny_classifier_dir) -> Path:
    """The paper's configs with tiny models, after `collect` and the offline router's `fit`: the prior exists."""
    monkeypatch.chdir(tmp_path)  # the configs write under ./checkpoints/paper
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    (tmp_path / "pool.yaml").write_text(yaml.safe_dump(tiny_pool(load(PAPER / "pool.yaml"), tiny_classifier_dir)))

    behaviour = load(PAPER / "behaviour.yaml")
    assert behaviour["pool"] == "pool.yaml"  # relative to the config's folder: the tiny pool written beside it
    for source in behaviour["data"]:
        source.setdefault("init_args", {})["limit"] = 6
    behaviour["device"] = "cpu"
    (tmp_path / "behaviour.yaml").write_text(yaml.safe_dump(behaviour))
    main(["collect", "--config", str(tmp_path / "behaviour.yaml")])
    records = read_behaviour(tmp_path / behaviour["output"], list(PAPER_RMS))
    assert len(records) == 30 and all(set(record.margin) == set(PAPER_RMS) for record in records)

    offline = load(PAPER / "offline_router.yaml")
    model = offline["model"]["init_args"]
    assert model["rm_names"] == list(PAPER_RMS) and offline["data"]["init_args"]["path"] == behaviour["output"]
    assert (model["encoder"], model["pooling"]) == ("smollm2-135m-instruct", "last_token")
    assert not model["freeze_encoder"]  # the paper fine-tunes the encoder
    model["encoder"] = tiny_causal_lm_dir  # a 2-layer Llama, as SmolLM2 is a Llama
    offline["data"]["init_args"].update(split={"fractions": {"train": 0.7, "val": 0.15, "test": 0.15}}, batch_size=8)
    # too few rows to hold any out
    offline["trainer"].update(max_epochs=1, enable_progress_bar=False)
    (tmp_path / "offline_router.yaml").write_text(yaml.safe_dump(offline))
    main(["fit", "--config", str(tmp_path / "offline_router.yaml"), "--config", str(CPU_OVERLAY)])
    assert (tmp_path / PRIOR).is_file()
    return tmp_path


def write_tiny_online(workdir: Path, policy: str) -> Path:
    online = load(PAPER / "online_dpo.yaml")
    assert online["model"]["init_args"]["pool"] == "pool.yaml"
    online["model"]["init_args"].update(policy=policy, max_new_tokens=8)
    for source in online["data"]["init_args"]["train"]:
        source.setdefault("init_args", {})["limit"] = PROMPTS_PER_STEP
    online["data"]["init_args"]["batch_size"] = PROMPTS_PER_STEP
    # max_steps alone ends the run: with many GPUs the few prompts make epochs shorter than STEPS
    online["trainer"].update(max_steps=STEPS, max_epochs=None, enable_progress_bar=False)
    online["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 1
    path = workdir / "online_dpo.yaml"
    path.write_text(yaml.safe_dump(online))
    return path


def assert_routed_one_rm_per_pair(workdir: Path, ranks: int = 1) -> None:
    checkpoint = torch.load(workdir / "checkpoints" / "paper" / "online" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == STEPS
    (state,) = [state for key, state in checkpoint["callbacks"].items() if key.startswith("BayesianRouter[")]
    most = STEPS * PROMPTS_PER_STEP * 4 * ranks  # 4 random pairs per prompt, fewer only if samples coincide
    assert 0 < state["pairs_routed"] <= most
    assert state["rm_calls"] == state["pairs_routed"]  # the point of routing: one RM call per pair, not four
    assert "posteriors" in state and state["normalizer"]["history"].numel() > 0  # it learned from -L_DPO
    assert any("lora_" in key for key in checkpoint["state_dict"])


def test_paper_chain_runs_on_tiny_models(paper_workdir, tiny_causal_lm_dir):
    """collect -> offline router -> online DPO with the paper's BayesianRouter config, unchanged, on CPU."""
    online = write_tiny_online(paper_workdir, tiny_causal_lm_dir)
    main(["fit", "--config", str(online), "--config", str(PAPER / "bayesian.yaml"), "--config", str(CPU_OVERLAY)])
    assert_routed_one_rm_per_pair(paper_workdir)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("stored_dtype", [torch.float32, torch.bfloat16], ids=["fp32_checkpoint", "bf16_checkpoint"])
def test_fsdp_overlay_runs_live_online_dpo_on_every_gpu(paper_workdir, tiny_causal_lm_dir, stored_dtype):
    """`python cli.py fit` with the FSDP overlay on all GPUs (`devices: auto`), as a user would run it."""
    policy = tiny_policy(tiny_causal_lm_dir, paper_workdir / "policy", stored_dtype)
    command = [
        sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(write_tiny_online(paper_workdir, policy)),
        "--config", str(PAPER / "bayesian.yaml"), "--config", str(FSDP_OVERLAY),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, cwd=paper_workdir, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert_routed_one_rm_per_pair(paper_workdir, ranks=torch.cuda.device_count())


def tiny_pool(spec: dict, classifier: str) -> dict:
    """The pool spec with every RM's HF id replaced by the tiny classifier (names, order and dtype kept)."""
    spec = copy.deepcopy(spec)
    for entry in spec["init_args"]["reward_models"]:
        entry["init_args"]["model"] = classifier
    return spec


def tiny_policy(tiny_causal_lm_dir: str, folder: Path, dtype: torch.dtype) -> str:
    """The tiny Llama saved in `dtype`: real chat models such as LLaMA3-SFT-v2 ship their weights in bf16."""
    if dtype == torch.float32:
        return tiny_causal_lm_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, dtype=dtype).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_causal_lm_dir).save_pretrained(folder)
    return str(folder)
