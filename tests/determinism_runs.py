"""Seeded runs that `test_determinism.py` repeats in separate processes (each with its own `PYTHONHASHSEED`) and
compares bit for bit.

    python determinism_runs.py online FOLDER OUT.pt --policy DIR --encoder DIR --learned CKPT [--steps N]
    python determinism_runs.py stream OUT.pt --policy DIR --encoder DIR

`online`: the shipped live config (`configs/online/live.yaml` + `configs/routers/bayesian.yaml`) through the CLI, as
a user runs it, on the tiny models: a LoRA policy in bf16-mixed, a pool of three RM kinds (length, a likelihood RM on
the tiny causal LM, a learned head on the tiny encoder), the BayesianRouter on a prior over them (warm-up 2, so its
posteriors move), with the vendored prompts of the three datasets and the torch threads the process has. `OUT.pt`
holds every step's logged values, routing decisions and per-pair losses, the router's state and the trained weights.

`stream`: the simulated stream runner (`rmrouter.simulation`) with the BayesianRouter at each fidelity (the oracle,
the log-linear DPO policy, the LoRA policy in bfloat16 with dropout), each stream's log and router state in `OUT.pt`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
RM_NAMES = ["length", "likelihood", "learned"]
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}


class RecordSteps(Callback):
    """Keeps each step's logged values, routing decisions and per-pair losses (NaN stays NaN: compared as bits)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append(
            {
                "step": trainer.global_step,
                "prompts": [record.id for record in batch],
                "values": dict(sorted(outputs["step_values"].items())),
                "routing": list(outputs["routing"]),
                "losses": outputs["losses"].clone(),
            }
        )


def write_pool(folder: Path, policy: str, learned: str) -> Path:
    pool = {
        "class_path": "rmrouter.reward_models.RewardModelPool",
        "init_args": {
            "reward_models": [
                {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "length"}},
                {
                    "class_path": "rmrouter.reward_models.LikelihoodRewardModel",
                    "init_args": {"name": "likelihood", "model": policy, "batch_size": 3, "dtype": "bfloat16"},
                },
                {
                    "class_path": "rmrouter.reward_models.LearnedRewardModel",
                    "init_args": {"name": "learned", "checkpoint": learned, "batch_size": 3},
                },
            ]
        },
    }
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump(pool))
    return path


def write_prior(path: Path, encoder: str) -> Path:
    """A prior over `RM_NAMES` on the tiny encoder, with a calibrated reward scale as the offline fit writes one."""
    import torch.nn.functional as F

    from rmrouter.models.pair_encoder import build_mlp
    from rmrouter.routers.prior import RouterPrior

    generator = torch.Generator().manual_seed(0)
    config = {"input_size": 32, "hidden_size": 8, "output_size": 4}
    torch.manual_seed(0)
    state = build_mlp(config).state_dict()
    embeddings = F.normalize(torch.randn(len(RM_NAMES), 4, generator=generator), dim=1)
    RouterPrior(
        RM_NAMES, embeddings, encoder=encoder, pooling="mean", max_length=64, mlp_config=config, mlp_state=state,
        metadata={"reward_scale": 2.0},
    ).save(path)  # fmt: skip
    return path


def online_config(folder: Path, policy: str, encoder: str, learned: str, steps: int) -> Path:
    """configs/online/live.yaml with the BayesianRouter of configs/routers/bayesian.yaml, on the tiny models."""
    online = yaml.safe_load((CONFIGS / "online" / "live.yaml").read_text())
    router = yaml.safe_load((CONFIGS / "routers" / "bayesian.yaml").read_text())["model"]["init_args"]["router"]
    router["init_args"].update(prior_path=str(write_prior(folder / "prior.pt", encoder)), warmup=2)
    model = online["model"]["init_args"]
    model.update(policy=policy, pool=str(write_pool(folder, policy, learned)), max_new_tokens=8, router=router)
    model["lora"].update(r=2, lora_alpha=4, lora_dropout=0.1)  # dropout draws from the global RNG
    model["optimizer"]["init_args"]["lr"] = 0.05  # a LoRA that visibly moves the logits
    online["trainer"].update(max_steps=steps, enable_progress_bar=False, accelerator="cpu")
    online["trainer"]["default_root_dir"] = str(folder / "run")  # the logger and every callback write there
    for source in online["data"]["init_args"]["train"]:
        source["init_args"]["limit"] = 4
    path = folder / "online.yaml"
    path.write_text(yaml.safe_dump(online))
    return path


def run_online(folder: Path, out: Path, policy: str, encoder: str, learned: str, steps: int) -> None:
    from rmrouter.commands import RMRouterCLI, prepare_process

    folder.mkdir(parents=True, exist_ok=True)
    config = online_config(folder, policy, encoder, learned, steps)
    record = RecordSteps()
    sys.argv = ["cli.py"]
    prepare_process()

    class RecordingCLI(RMRouterCLI):
        def before_fit(self) -> None:
            self.trainer.callbacks.append(record)

    cli = RecordingCLI(args=["fit", "--config", str(config)])
    trained = {key: p.detach().clone() for key, p in cli.model.named_parameters() if p.requires_grad}
    torch.save({"steps": record.steps, "router": cli.model.router.state_dict(), "trained": trained}, out)


def run_stream(out: Path, policy: str, encoder: str) -> None:
    """The stream runner with the BayesianRouter (no prior: its encoder embeds) at the three fidelities: the oracle,
    the log-linear DPO policy and the LoRA policy (dropout on, bfloat16 autocast)."""
    from test_simulation import hashed_features, lm_learner, routers, toy_stream

    from rmrouter.simulation import LogLinearDPO, OracleLearner, run_stream

    learners = {
        "oracle": OracleLearner(),
        "log_linear_dpo": LogLinearDPO(hashed_features, 8, 0.1, 1.0),
        "lm_dpo": lm_learner(policy, {**LORA, "lora_dropout": 0.1}, bfloat16=True),
    }
    results = {}
    for name, learner in learners.items():
        router = routers(encoder)["bayesian"]
        log = run_stream(router, toy_stream(12), learner, num_pairs=24, batch_size=4, seed=0)
        results[name] = {"log": log.to_dict(), "router": router.state_dict()}
    torch.save(results, out)


def differences(a, b, where: str = "") -> list[str]:
    """Where two nested states differ; tensors and floats must be equal bit for bit (NaN equals NaN)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(a)} != {sorted(b)}"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}.{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num())
        return [] if same and torch.equal(a.isnan(), b.isnan()) else [where]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    online = commands.add_parser("online")
    online.add_argument("folder", type=Path)
    online.add_argument("out", type=Path)
    online.add_argument("--policy", required=True)
    online.add_argument("--encoder", required=True)
    online.add_argument("--learned", required=True)
    online.add_argument("--steps", type=int, default=3)
    stream = commands.add_parser("stream")
    stream.add_argument("out", type=Path)
    stream.add_argument("--policy", required=True)
    stream.add_argument("--encoder", required=True)
    args = parser.parse_args()
    if args.command == "online":
        run_online(args.folder, args.out, args.policy, args.encoder, args.learned, args.steps)
    else:
        run_stream(args.out, args.policy, args.encoder)


if __name__ == "__main__":
    main()
