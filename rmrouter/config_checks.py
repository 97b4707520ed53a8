"""Checks of a parsed config that refuse a bad one before any class, and so any model, is built.

A single value out of range is refused when the config is parsed, by its type in the class's signature
(`jsonargparse.typing`: `PositiveFloat` for DPO's beta, `NonNegativeFloat` for a learning rate, ...). What is checked
here is what no type can say: values that must agree with each other or with a file (the router's RMs with the
pool's or the behaviour file's, a prior written for other RMs), settings that depend on the mode (k >= 2 when
sampling), the optimizer's arguments (torch's signature) and a trainer this machine cannot run.

Each check reads plain dicts (a LightningCLI subcommand's config, `Namespace.as_dict()`) and raises `ConfigError`,
whose message is one line that starts with the config key at fault, e.g.
`model.init_args.num_samples: k must be at least 2 to form a pair, got 1`. `RMRouterCLI.before_instantiate_classes`
runs `check_config` and turns the error into a clean exit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MODEL = "model.init_args"
ROUTER = f"{MODEL}.router.init_args"
POOL = f"{MODEL}.pool"
BEHAVIOUR_RMS = "data.init_args.rm_names"
OFFLINE_FIT = "python cli.py fit --config configs/offline_router.yaml"
TASK_OFFLINE_FIT = "python cli.py fit --config configs/offline_router_task.yaml"


class ConfigError(ValueError):
    """A config value that cannot run: `key: what is wrong and what to do`, in one line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def check_config(config: Mapping[str, Any], cuda_available: bool) -> None:
    """Every check that applies to `config` (one subcommand's parsed config, as a dict).

    Args:
        config: The parsed config: `model`, `data` and `trainer` as LightningCLI holds them.
        cuda_available: Whether this machine has a CUDA GPU (`torch.cuda.is_available()`).
    """
    model = config.get("model")
    if isinstance(model, Mapping):
        check_optimizer(model.get("init_args") or {})
        check_rm_names_agree(model.get("init_args") or {}, config.get("data") or {})
    if isinstance(model, Mapping) and is_online_dpo(model.get("class_path")):
        check_online_dpo(model.get("init_args") or {}, config.get("data") or {})
    check_trainer(config.get("trainer") or {}, cuda_available)


def check_optimizer(init_args: Mapping[str, Any]) -> None:
    """The optimizer's learning rate and weight decay >= 0 (0 trains nothing, a control some runs want): torch would
    refuse a negative one later, in a long traceback. (A module's own `learning_rate` and `weight_decay` are typed
    `NonNegativeFloat`, checked when the config is parsed.)"""
    optimizer = init_args.get("optimizer")
    optimizer_args = (optimizer.get("init_args") or {}) if isinstance(optimizer, Mapping) else {}
    for key, value in (
        (f"{MODEL}.optimizer.init_args.lr", optimizer_args.get("lr")),
        (f"{MODEL}.optimizer.init_args.weight_decay", optimizer_args.get("weight_decay")),
    ):
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not (math.isfinite(value) and value >= 0)
        ):
            raise ConfigError(key, f"must be a finite number >= 0, got {value}")


def check_rm_names_agree(init_args: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """The offline router's RMs (`model.init_args.rm_names`) are the behaviour columns it reads
    (`data.init_args.rm_names`): one list, in one order."""
    model_names, data_names = init_args.get("rm_names"), (data.get("init_args") or {}).get("rm_names")
    if isinstance(model_names, Sequence) and isinstance(data_names, Sequence) and list(model_names) != list(data_names):
        how = "the same RMs in another order" if sorted(model_names) == sorted(data_names) else "different RMs"
        raise ConfigError(
            f"{MODEL}.rm_names",
            f"{list(model_names)} differs from {BEHAVIOUR_RMS} {list(data_names)} ({how}): give both the same list",
        )


def is_online_dpo(class_path: Any) -> bool:
    """Whether `class_path` names `OnlineDPOModule` or a subclass of it."""
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    import importlib

    from rmrouter.modules.online_dpo import OnlineDPOModule

    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(found, type) and issubclass(found, OnlineDPOModule)


def check_online_dpo(init_args: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    """`OnlineDPOModule`'s settings: `k`, `beta`, the pool, and the router against the pool (or, in simulated mode,
    against the behaviour file's RMs)."""
    simulated = bool(init_args.get("simulated"))
    check_num_samples(init_args.get("num_samples"), simulated)
    if simulated:
        names = (data.get("init_args") or {}).get("rm_names")
        names, whose = (list(names) if names is not None else None), f"the behaviour file's ({BEHAVIOUR_RMS})"
    else:
        names, whose = pool_rm_names(init_args.get("pool")), f"the pool's ({POOL})"
    router = init_args.get("router")
    if names is not None and isinstance(router, Mapping):
        check_router(router.get("init_args") or {}, names, whose, str(router.get("class_path") or ""))


def check_num_samples(num_samples: Any, simulated: bool) -> None:
    """Live mode pairs `k` samples of one prompt: it needs two at least (simulated mode reads recorded pairs)."""
    if not simulated and isinstance(num_samples, int) and num_samples < 2:
        raise ConfigError(f"{MODEL}.num_samples", f"k must be at least 2 to form a pair, got {num_samples}")


def pool_rm_names(pool: Any) -> list[str] | None:
    """The RM names of a `RewardModelPool` config, in pool order, after checking it has RMs with distinct names.

    Args:
        pool: `model.init_args.pool` as parsed: a `class_path`/`init_args` dict, or None.

    Returns:
        The names; None when the pool's form is not the list of `reward_models` (another pool class).
    """
    if pool is None:
        raise ConfigError(
            POOL, "live online DPO (simulated: false) needs a reward-model pool, e.g. configs/pool/default.yaml"
        )
    reward_models = (pool.get("init_args") or {}).get("reward_models") if isinstance(pool, Mapping) else None
    if not isinstance(reward_models, Sequence) or isinstance(reward_models, str):
        return None
    key = f"{POOL}.init_args.reward_models"
    if not reward_models:
        raise ConfigError(key, "the pool is empty: list at least one reward model (configs/pool/default.yaml)")
    names = [
        (entry.get("init_args") or {}).get("name") if isinstance(entry, Mapping) else None for entry in reward_models
    ]
    if any(not isinstance(name, str) for name in names):
        return None
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(key, f"reward-model names must be unique in a pool, repeated: {repeated}")
    return names


def check_router(router: Mapping[str, Any], names: list[str], whose: str, class_path: str = "") -> None:
    """A router's own `rm_names` (if given), `rm` (a single-RM router) and prior against the RMs it routes over.

    Args:
        router: `model.init_args.router.init_args`.
        names: The RMs it routes over, in order.
        whose: Whose names they are, for the message, e.g. `the pool's (model.init_args.pool)`.
        class_path: The router's class, which says what kind of prior it reads.
    """
    given = router.get("rm_names")
    if given is not None and list(given) != names:
        raise ConfigError(
            f"{ROUTER}.rm_names",
            f"{list(given)} differ from {whose} {names}: leave rm_names out (the router takes the pool's), or list "
            "the same RMs in the same order",
        )
    rm = router.get("rm")
    if isinstance(rm, str) and rm not in names:
        raise ConfigError(f"{ROUTER}.rm", f"{rm!r} is not one of {whose} RMs {names}: pick one of those")
    if router.get("prior_path") is not None:
        check_prior(router, names, whose, task_prior=class_path.endswith("TaskBayesianRouter"))


def check_prior(router: Mapping[str, Any], names: list[str], whose: str, task_prior: bool = False) -> None:
    """The router's prior file exists, is a prior of the kind it reads (a `TaskPrior` for `task_prior`), and was made
    for these RMs (in this order) and, where the config states an encoder, pooling or token limit, for that one."""
    from rmrouter.routers.bayesian import prior_encoder_mismatch
    from rmrouter.routers.prior import RouterPrior, RouterPriorError
    from rmrouter.routers.task_prior import TaskPrior

    key, path = f"{ROUTER}.prior_path", Path(router["prior_path"])
    fit = TASK_OFFLINE_FIT if task_prior else OFFLINE_FIT
    if not path.is_file():
        raise ConfigError(key, f"no router prior at {path} (looked in {Path.cwd()}): write it with `{fit}`")
    try:
        # tensors and primitives only (weights_only): no model is built
        prior = TaskPrior.load(path) if task_prior else RouterPrior.load(path)
    except RouterPriorError as error:
        raise ConfigError(key, str(error)) from None
    if prior.rm_names != names:
        raise ConfigError(
            key,
            f"the prior {path} was made for RMs {prior.rm_names}, not {whose} {names}: train the offline router on "
            "this pool's behaviour file, or point prior_path at that pool's prior",
        )
    mismatch = prior_encoder_mismatch(prior, router.get("encoder"), router.get("pooling"), router.get("max_length"))
    if mismatch is not None:
        raise ConfigError(f"{ROUTER}.{mismatch[0]}", mismatch[1])


def check_trainer(trainer: Mapping[str, Any], cuda_available: bool) -> None:
    """A trainer that trains (`max_steps` 0 would stop before the first step) and that this machine can run: no FSDP
    and no GPU accelerator where there is no CUDA GPU."""
    if trainer.get("max_steps") == 0:
        raise ConfigError("trainer.max_steps", "0 trains nothing: give a number of steps, or -1 for no limit")
    if cuda_available:
        return
    strategy = trainer.get("strategy")
    if is_fsdp(strategy):
        raise ConfigError(
            "trainer.strategy",
            "FSDP shards the policy over CUDA GPUs and this machine has none (torch.cuda.is_available() is False): "
            "leave configs/trainer/fsdp_bf16.yaml out here (configs/trainer/ddp_cpu.yaml runs several CPU processes)",
        )
    accelerator = trainer.get("accelerator")
    if isinstance(accelerator, Mapping):
        accelerator = accelerator.get("class_path")
    if isinstance(accelerator, str) and accelerator.lower().rpartition(".")[2] in ("gpu", "cuda", "cudaaccelerator"):
        raise ConfigError(
            "trainer.accelerator",
            f"{accelerator!r} needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False): use "
            "--trainer.accelerator cpu, or compose configs/trainer/cpu.yaml last",
        )


def is_fsdp(strategy: Any) -> bool:
    """Whether a trainer's `strategy` (a name such as `fsdp`, a `class_path` dict, or an instance) is FSDP."""
    if isinstance(strategy, Mapping):
        strategy = strategy.get("class_path")
    elif strategy is not None and not isinstance(strategy, str):
        strategy = type(strategy).__name__
    return isinstance(strategy, str) and strategy.lower().rpartition(".")[2].startswith("fsdp")
