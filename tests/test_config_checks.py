"""Bad configs are refused before any model loads, in one line that names the key; routers take the pool's RM names;
no model's own code runs and no pickle is unpickled unless a config asks for it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from behaviour_helpers import RM_NAMES

from rmrouter import config_checks as checks
from rmrouter.cli import main
from rmrouter.commands import RMRouterCLI
from rmrouter.config_checks import ConfigError
from rmrouter.models.pair_encoder import build_mlp
from rmrouter.routers.baseline_routers import RandomRouter, SingleRMRouter
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.prior import KIND, RouterPrior, RouterPriorError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
LIVE, SIMULATED = CONFIGS / "online" / "live.yaml", CONFIGS / "online" / "simulated.yaml"
BAYESIAN = CONFIGS / "routers" / "bayesian.yaml"
ROUTER = "model.init_args.router.init_args"
NO_CUDA = "this machine has none (torch.cuda.is_available() is False)"


def write_prior(path: Path, rm_names: list[str], encoder: str = "tiny-encoder") -> Path:
    torch.manual_seed(0)
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    RouterPrior(rm_names, F.normalize(torch.randn(len(rm_names), 4), dim=1), encoder=encoder, pooling="mean",
                max_length=32, mlp_config=config, mlp_state=build_mlp(config).state_dict(),
                metadata={"reward_scale": 0.5}).save(path)  # fmt: skip
    return path


def expect(message: str, call, *args) -> None:
    with pytest.raises(ConfigError) as error:
        call(*args)
    assert str(error.value) == message


# ---- each check on its own, over plain dicts ------------------------------------------------------------------------


def test_k_must_make_a_pair_in_live_mode_only():
    expect(
        "model.init_args.num_samples: k must be at least 2 to form a pair, got 1", checks.check_num_samples, 1, False
    )
    checks.check_num_samples(1, True)  # simulated mode reads recorded pairs
    checks.check_num_samples(2, False)


def pool(*names: str) -> dict:
    entries = [{"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": n}} for n in names]
    return {"class_path": "rmrouter.reward_models.RewardModelPool", "init_args": {"reward_models": entries}}


def test_a_pool_needs_rms_with_distinct_names():
    assert checks.pool_rm_names(pool("a", "b")) == ["a", "b"]
    key = "model.init_args.pool.init_args.reward_models"
    expect(f"{key}: the pool is empty: list at least one reward model (configs/pool/default.yaml)",
           checks.pool_rm_names, pool())  # fmt: skip
    expect(
        f"{key}: reward-model names must be unique in a pool, repeated: ['a']",
        checks.pool_rm_names,
        pool("a", "b", "a"),
    )
    expect("model.init_args.pool: live online DPO (simulated: false) needs a reward-model pool, e.g. "
           "configs/pool/default.yaml", checks.pool_rm_names, None)  # fmt: skip


def test_a_router_with_its_own_names_must_have_the_pools():
    whose = "the pool's (model.init_args.pool)"
    checks.check_router({"rm_names": None, "seed": 0}, ["a", "b"], whose)
    checks.check_router({"rm_names": ["a", "b"]}, ["a", "b"], whose)
    message = (
        f"{ROUTER}.rm_names: ['b', 'a'] differ from the pool's (model.init_args.pool) ['a', 'b']: leave rm_names out "
        "(the router takes the pool's), or list the same RMs in the same order"
    )
    expect(message, checks.check_router, {"rm_names": ["b", "a"]}, ["a", "b"], whose)
    expect(f"{ROUTER}.rm: 'c' is not one of the pool's (model.init_args.pool) RMs ['a', 'b']: pick one of those",
           checks.check_router, {"rm": "c"}, ["a", "b"], whose)  # fmt: skip


def test_a_prior_must_exist_and_be_made_for_the_pool_and_the_stated_encoder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    whose = "the pool's (model.init_args.pool)"
    prior = write_prior(tmp_path / "prior.pt", ["a", "b"])
    checks.check_router({"prior_path": str(prior)}, ["a", "b"], whose)
    checks.check_router({"prior_path": str(prior), "encoder": "tiny-encoder", "pooling": "mean"}, ["a", "b"], whose)
    message = (
        f"{ROUTER}.prior_path: the prior {prior} was made for RMs ['a', 'b'], not the pool's (model.init_args.pool) "
        "['b', 'a']: train the offline router on this pool's behaviour file, or point prior_path at that pool's prior"
    )
    expect(message, checks.check_router, {"prior_path": str(prior)}, ["b", "a"], whose)
    expect(f"{ROUTER}.encoder: 'other-encoder', but the router prior {prior} was built with encoder 'tiny-encoder': "
           "leave encoder out (the prior's is used), or train the offline router with encoder 'other-encoder'",
           checks.check_router, {"prior_path": str(prior), "encoder": "other-encoder"}, ["a", "b"], whose)  # fmt: skip
    expect(f"{ROUTER}.max_length: 64, but the router prior {prior} was built with max_length 32: leave max_length out "
           "(the prior's is used), or train the offline router with max_length 64",
           checks.check_router, {"prior_path": str(prior), "max_length": 64}, ["a", "b"], whose)  # fmt: skip
    expect(f"{ROUTER}.prior_path: no router prior at missing.pt (looked in {tmp_path}): write it with "
           "`python cli.py fit --config configs/offline_router.yaml`",
           checks.check_router, {"prior_path": "missing.pt"}, ["a", "b"], whose)  # fmt: skip


@pytest.mark.parametrize("strategy", ["fsdp", {"class_path": "lightning.pytorch.strategies.FSDPStrategy"}])
def test_fsdp_needs_cuda(strategy):
    expect(f"trainer.strategy: FSDP shards the policy over CUDA GPUs and {NO_CUDA}: leave "
           "configs/trainer/fsdp_bf16.yaml out here (configs/trainer/ddp_cpu.yaml runs several CPU processes)",
           checks.check_trainer, {"strategy": strategy, "accelerator": "cpu"}, False)  # fmt: skip
    checks.check_trainer({"strategy": strategy, "accelerator": "gpu"}, True)


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"], ids=["named_gpu", "named_cuda"])  # a `gpu` id means a GPU test
def test_a_gpu_accelerator_needs_cuda(accelerator):
    message = (
        f"trainer.accelerator: '{accelerator}' needs a CUDA GPU and {NO_CUDA}: use --trainer.accelerator cpu, or "
        "compose configs/trainer/cpu.yaml last"
    )
    expect(message, checks.check_trainer, {"accelerator": accelerator}, False)
    checks.check_trainer({"accelerator": accelerator}, True)
    for runs_here in ("cpu", "auto", None):
        checks.check_trainer({"accelerator": runs_here, "strategy": "ddp"}, False)


@pytest.mark.parametrize(
    ("init_args", "key"),
    [
        ({"optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": -1e-4}}}, "optimizer.init_args.lr"),
        ({"optimizer": {"init_args": {"lr": 1e-4, "weight_decay": float("nan")}}}, "optimizer.init_args.weight_decay"),
    ],
)
def test_learning_rates_and_weight_decays_are_checked_with_their_key(init_args, key):
    with pytest.raises(ConfigError, match=rf"^model\.init_args\.{key}: must be a finite number >= 0, got"):
        checks.check_config({"model": {"class_path": "x.Module", "init_args": init_args}}, cuda_available=False)
    good = {"optimizer": {"init_args": {"lr": 0.0, "weight_decay": 0}}}
    checks.check_config({"model": {"class_path": "x.Module", "init_args": good}}, cuda_available=False)


def test_the_routers_rms_and_the_behaviour_columns_must_be_one_list():
    config = {"model": {"init_args": {"rm_names": ["a", "b"]}}, "data": {"init_args": {"rm_names": ["b", "a"]}}}
    with pytest.raises(ConfigError, match=r"model\.init_args\.rm_names: \['a', 'b'\] differs from data\.init_args"
                       r"\.rm_names \['b', 'a'\] \(the same RMs in another order\)"):  # fmt: skip
        checks.check_config(config, cuda_available=False)
    config["data"]["init_args"]["rm_names"] = ["a", "c"]
    with pytest.raises(ConfigError, match=r"\(different RMs\)"):
        checks.check_config(config, cuda_available=False)


def test_only_online_dpo_configs_get_its_checks():
    assert checks.is_online_dpo("rmrouter.modules.online_dpo.OnlineDPOModule")
    assert not checks.is_online_dpo("rmrouter.modules.offline_router.OfflineRouterModule")
    assert not checks.is_online_dpo("no.such.Module") and not checks.is_online_dpo(None)
    offline = {"model": {"class_path": "rmrouter.modules.offline_router.OfflineRouterModule",
                         "init_args": {"num_samples": 1}}, "trainer": {"accelerator": "cpu"}}  # fmt: skip
    checks.check_config(offline, cuda_available=False)


# ---- through the CLI: refused before any class is built, one line naming the key ----------------------------------


class Instantiated(Exception):
    """Raised where the CLI would start building classes: a config that gets here passed every check."""


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """`main(args)` in a folder with the default pool's prior where the configs look for it; building any class or
    loading any model raises instead."""
    from rmrouter.models import store

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    def no_instantiation(self):
        raise Instantiated

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cli.py"])
    monkeypatch.setattr(store, "_load", no_model)
    monkeypatch.setattr(RMRouterCLI, "instantiate_classes", no_instantiation)
    write_prior(tmp_path / "checkpoints" / "offline_router" / "prior.pt", RM_NAMES)

    def run(*args: str) -> str:
        """The one line the run exits with."""
        with pytest.raises(SystemExit) as exit_:
            main(["fit", "--config", str(LIVE), "--config", str(BAYESIAN), *args])
        message = str(exit_.value.code)
        assert "\n" not in message
        return message

    return run


def write(path: Path, content: dict) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_a_good_live_config_passes_every_check(cli, tmp_path):
    with pytest.raises(Instantiated):
        main(["fit", "--config", str(LIVE), "--config", str(BAYESIAN), "--trainer.accelerator", "cpu"])


def test_the_cli_refuses_each_bad_config_in_one_line_before_any_model_loads(cli, tmp_path, capsys):
    prefix = "config error: "
    assert cli("--model.init_args.num_samples", "1") == (
        prefix + "model.init_args.num_samples: k must be at least 2 to form a pair, got 1"
    )
    # single values: refused by their types when the config is parsed (jsonargparse.typing)
    restrictions = [
        ("beta", "0", "PositiveFloat: 0 does not conform to restriction v>0"),
        ("temperature", "nan", "PositiveFloat: nan does not conform to restriction v>0"),
        ("top_p", "1.5", "NucleusMass: 1.5 does not conform to restriction v>0 and v<=1"),
        ("max_new_tokens", "0", "PositiveInt: 0 does not conform to restriction v>0"),
    ]
    for key, value, restriction in restrictions:
        assert cli(f"--model.init_args.{key}", value) == "2"  # a parse error: its two lines go to stderr
        assert f"{prefix}model.init_args.{key}: Not of type {restriction} (keys come from" in capsys.readouterr().err
    assert cli("--trainer.max_steps", "0") == (
        prefix + "trainer.max_steps: 0 trains nothing: give a number of steps, or -1 for no limit"
    )
    empty = write(tmp_path / "empty.yaml", {"model": {"init_args": {"pool": pool()}}})
    assert cli("--config", empty) == (
        prefix + "model.init_args.pool.init_args.reward_models: the pool is empty: list at least one reward model "
        "(configs/pool/default.yaml)"
    )
    twice = write(tmp_path / "twice.yaml", {"model": {"init_args": {"pool": pool("length", "length")}}})
    assert cli("--config", twice) == (
        prefix + "model.init_args.pool.init_args.reward_models: reward-model names must be unique in a pool, "
        "repeated: ['length']"
    )
    assert cli(f"--{ROUTER}.rm_names", "[length, minilm-reference]").startswith(
        prefix + f"{ROUTER}.rm_names: ['length', 'minilm-reference'] differ from the pool's (model.init_args.pool) "
        f"{RM_NAMES}: leave rm_names out"
    )
    other_pool = write_prior(tmp_path / "other_pool.pt", RM_NAMES[::-1])
    assert cli(f"--{ROUTER}.prior_path", str(other_pool)).startswith(
        prefix + f"{ROUTER}.prior_path: the prior {other_pool} was made for RMs {RM_NAMES[::-1]}, not the pool's"
    )
    other_encoder = write_prior(tmp_path / "other_encoder.pt", RM_NAMES, encoder="another-encoder")
    assert cli(f"--{ROUTER}.prior_path", str(other_encoder), f"--{ROUTER}.encoder", "tiny-encoder").startswith(
        prefix + f"{ROUTER}.encoder: 'tiny-encoder', but the router prior {other_encoder} was built with encoder "
        "'another-encoder'"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine can run a GPU trainer")
def test_the_cli_refuses_a_trainer_this_machine_cannot_run(cli):
    assert cli("--config", str(CONFIGS / "trainer" / "fsdp_bf16.yaml")).startswith(
        f"config error: trainer.strategy: FSDP shards the policy over CUDA GPUs and {NO_CUDA}"
    )
    assert cli("--trainer.accelerator", "gpu").startswith(
        f"config error: trainer.accelerator: 'gpu' needs a CUDA GPU and {NO_CUDA}"
    )


def test_the_simulated_router_is_checked_against_the_behaviour_files_rms(cli):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(SIMULATED), "--config", str(BAYESIAN), f"--{ROUTER}.rm_names", "[length]"])
    assert str(exit_.value.code).startswith(
        f"config error: {ROUTER}.rm_names: ['length'] differ from the behaviour file's (data.init_args.rm_names) "
        f"{RM_NAMES}"
    )


# ---- the RM names reach the router from the pool --------------------------------------------------------------------


def test_no_router_config_lists_the_rms():
    for path in [*(CONFIGS / "routers").rglob("*.yaml"), CONFIGS / "paper" / "bayesian.yaml"]:
        router = yaml.safe_load(path.read_text())["model"]["init_args"]["router"]["init_args"]
        assert "rm_names" not in router, path.name


def test_a_router_takes_the_pools_names_once_and_keeps_them():
    router = SingleRMRouter(None, rm="b")
    with pytest.raises(ValueError, match="SingleRMRouter has no RM names yet"):
        router.state_key  # noqa: B018
    router.connect_pool(["a", "b"])
    assert (router.rm_names, router.rm_index, router.state_key) == (["a", "b"], 1, "SingleRMRouter[a,b]")
    router.connect_pool(["a", "b"])  # the same names again: nothing changes
    with pytest.raises(ValueError, match=r"its rm_names \['a', 'b'\] differ from the pool's \['b', 'a'\]"):
        router.connect_pool(["b", "a"])
    with pytest.raises(ValueError, match="rm 'c' is not in the pool"):
        SingleRMRouter(None, rm="c").connect_pool(["a", "b"])


def test_a_bayesian_router_without_names_checks_its_prior_once_it_gets_them(tmp_path):
    prior = write_prior(tmp_path / "prior.pt", ["a", "b"])
    args = dict(prior_path=str(prior), sigma2=1.0, lambda0=1.0, warmup=5, use_prior=True, online_updates=True,
                integration="prior_injection", offline_weight=0.0, seed=0)  # fmt: skip
    BayesianRouter(None, **args).connect_pool(["a", "b"])
    with pytest.raises(RouterPriorError, match="trained for RMs"):
        BayesianRouter(None, **args).connect_pool(["b", "a"])
    with pytest.raises(ValueError, match="BayesianRouter encoder: 'x', but the router prior"):
        BayesianRouter(None, **args, encoder="x")
    BayesianRouter(["a", "b"], **args, encoder="tiny-encoder", pooling="mean", max_length=32)  # the prior's own


def test_the_online_module_hands_its_pool_to_the_router():
    from rmrouter.modules.online_dpo import OnlineDPOModule
    from rmrouter.reward_models import LengthRewardModel, RewardModelPool

    module = OnlineDPOModule(
        policy="unused", pool=RewardModelPool([LengthRewardModel("x"), LengthRewardModel("y")]), num_samples=2,
        pairing="all", pairs_per_prompt=1, min_score_gap=0.0, beta=0.1, loss_type="sigmoid", max_new_tokens=4,
        temperature=1.0, top_p=1.0, max_prompt_length=8, missing_eos_penalty=0.0, lora=None, simulated=False, seed=0,
        log_text_every_n_steps=0, router=RandomRouter(None, seed=0), optimizer=torch.optim.AdamW,
    )  # fmt: skip
    assert module.configure_callbacks()[0].rm_names == ["x", "y"]


# ---- security: no remote code, no unpickling -------------------------------------------------------------------------


def calls_in(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in sorted((ROOT / "rmrouter").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
                found.append((path, node))
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_and_checkpoint_load_is_weights_only():
    loads = [(p, c) for p, c in calls_in("load") if ast.unparse(c.func) == "torch.load"]
    loads += calls_in("load_from_checkpoint")
    assert len(loads) >= 4
    for path, call in loads:
        value = keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path.name}:{call.lineno}"


def test_every_from_pretrained_states_trust_remote_code():
    calls = calls_in("from_pretrained")
    assert calls
    for path, call in calls:
        assert keyword(call, "trust_remote_code") is not None, f"{path.name}:{call.lineno}"


class Recorder:
    seen: list = []

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        cls.seen.append(kwargs["trust_remote_code"])
        return cls()


def test_trust_remote_code_is_off_unless_a_config_turns_it_on(tmp_path, monkeypatch, tiny_classifier_dir):
    from jsonargparse import ArgumentParser

    from rmrouter.models import store
    from rmrouter.reward_models import RewardModel

    Recorder.seen = []
    store.load_model(Recorder, str(tmp_path))
    store.load_model(Recorder, str(tmp_path), trust_remote_code=True)
    assert Recorder.seen == [False, True]

    loads, load = [], store._load

    def recording(auto_class, name, trust_remote_code, **kwargs):
        loads.append(trust_remote_code)
        return load(auto_class, name, trust_remote_code, **kwargs)

    monkeypatch.setattr(store, "_load", recording)
    parser = ArgumentParser()
    parser.add_argument("--rm", type=RewardModel)
    for extra, expected in (({}, False), ({"trust_remote_code": True}, True)):
        loads.clear()
        init_args = {"name": "classifier", "model": tiny_classifier_dir, **extra}
        spec = {"rm": {"class_path": "rmrouter.reward_models.SequenceClassifierRewardModel", "init_args": init_args}}
        parser.instantiate_classes(parser.parse_object(spec))
        assert loads == [expected, expected]  # the tokenizer and the model


RAN = []


def mark_ran():
    RAN.append(True)


class Payload:
    """Unpickling this runs `mark_ran`: what a malicious checkpoint would do with any function."""

    def __reduce__(self):
        return mark_ran, ()


def test_files_that_carry_pickled_code_are_refused_without_running_it(tmp_path, monkeypatch):
    from rmrouter.models.embedding_store import EmbeddingStore
    from rmrouter.reward_models.learned import LearnedRewardModel

    RAN.clear()
    prior = tmp_path / "prior.pt"
    torch.save({"kind": KIND, "version": 2, "payload": Payload()}, prior)
    with pytest.raises(RouterPriorError, match="not a router prior file"):
        RouterPrior.load(prior)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"prior_path: .*not a router prior file"):
        checks.check_router({"prior_path": str(prior)}, ["a"], "the pool's")
    checkpoint = tmp_path / "rm.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": Payload()}}, checkpoint)
    with pytest.raises(Exception, match="Weights only load failed"):
        LearnedRewardModel("learned", str(checkpoint))
    store = EmbeddingStore(tmp_path / "store")
    store.folder.mkdir()
    torch.save({"keys": ["a"], "embeddings": Payload()}, store.folder / "shard.pt")
    with pytest.raises(Exception, match="Weights only load failed"):
        store.load()
    assert RAN == []
    torch.load(prior, weights_only=False)  # the same file read as pickle runs the payload: what the checks prevent
    assert RAN == [True]
