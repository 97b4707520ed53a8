"""Runs that `test_kill_safe.py` and `benchmarks/reliability.py` kill for real, in a process of their own.

    python kill_runs.py online POLICY PRIOR FOLDER NAME [--steps N] [--every N] [--kill-at STEP]
                               [--die-writing-at STEP] [--resume]
    python kill_runs.py collect OUTPUT [--kill-in-batch N] [--tear-in-batch N]

`online`: live online DPO on the tiny LoRA policy with a BayesianRouter on a prior (the tests' fixtures), checkpointing
`FOLDER/checkpoints/last.ckpt` every `--every` steps. Each step's routing (the RM chosen per pair, the per-pair losses)
is appended to `FOLDER/NAME.jsonl` as it goes, and at the end the router's state and the trained weights are saved to
`FOLDER/NAME.pt`. `--kill-at` SIGKILLs the process at the end of that step (before any checkpoint of it);
`--die-writing-at` SIGKILLs it in the middle of writing that step's checkpoint, half of it on disk;
`--resume` fits from `ckpt_path="last"`. `run_online` is the same run in the calling process.

`collect`: behaviour collection of `test_behaviour.py`'s pairs and pool in batches of 2 into `OUTPUT`;
`--kill-in-batch` SIGKILLs the process when an RM is called for that batch (1-based), `--tear-in-batch` while that
batch's lines are written, half of them on disk.

`KillAt` is a callback for any fit, also through the CLI: `--trainer.callbacks+=kill_runs.KillAt
--trainer.callbacks.step=7` (with this folder on `PYTHONPATH`).
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from router_helpers import RMS
from test_online_dpo import WeightedLength, make_module

from rmrouter.callbacks import ResumableCheckpoint
from rmrouter.callbacks import atomic_checkpoint as atomic
from rmrouter.data.prompt_datamodule import PromptDataModule
from rmrouter.data.records import PromptRecord, as_messages
from rmrouter.data.sources import PromptSource
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.bayesian import BayesianRouter

LORA = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.1}  # dropout: global RNG


HERE = Path(__file__).resolve().parent


def in_own_process(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python ARGS` in a process of its own (one thread), with the tests folder and this checkout importable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def sigkill() -> None:
    """Ends this process at once: no handler, no `finally`, no buffer flush runs."""
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(Callback):
    """SIGKILLs the process at the end of training step `step` (before the checkpoint callback sees it).

    Args:
        step: The global step after which the process dies.
    """

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            sigkill()


class SixPrompts(PromptSource):
    """Three batches of two per epoch, so a resume lands in the middle of an epoch."""

    def read(self):
        return [PromptRecord(f"q{i}", as_messages(f"how do I bake bread {i}?"), "chat", "mem") for i in range(6)]


class RecordRouting(Callback):
    """Appends each step's routing to a JSON-lines file, closed at once: a killed run keeps every finished step."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        losses = [x if math.isfinite(x) else None for x in outputs["losses"].tolist()]
        row = {"step": trainer.global_step, "rm": [rm for _, rm in outputs["routing"]], "losses": losses}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


def die_while_writing(trainer: Trainer, step: int) -> None:
    """Makes the checkpoint write of step `step` SIGKILL the process once half its bytes are in the temporary file."""
    write = atomic._write_and_sync

    def torn(obj, handle) -> None:
        if trainer.global_step != step:
            return write(obj, handle)
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        handle.write(buffer.getvalue()[: buffer.tell() // 2])
        handle.flush()
        sigkill()

    atomic._write_and_sync = torn


def run_online(
    policy: str,
    prior: str,
    folder: Path,
    name: str,
    steps: int = 4,
    every: int = 2,
    kill_at: int | None = None,
    die_writing_at: int | None = None,
    resume: bool = False,
) -> None:
    """The `online` run (see the module docstring), on one thread as in its own process, so results are comparable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seed_everything(0, verbose=False)
        pool = RewardModelPool([WeightedLength(name) for name in RMS])
        module = make_module(policy, pool=pool, lora=LORA, max_new_tokens=6, pairing="random")
        module.router = BayesianRouter(
            RMS, prior_path=str(prior), sigma2=1.0, lambda0=1.0, warmup=2, use_prior=True, online_updates=True,
            integration="prior_injection", offline_weight=0.5, seed=0, warmup_rewards="held", centred_rewards=True,
        )  # fmt: skip
        checkpoint = ResumableCheckpoint(
            dirpath=folder / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=every,
            enable_version_counter=False,
        )  # fmt: skip
        callbacks = [checkpoint, RecordRouting(folder / f"{name}.jsonl")]
        if kill_at is not None:
            callbacks.append(KillAt(kill_at))
        trainer = Trainer(
            max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=callbacks, default_root_dir=folder,
        )  # fmt: skip
        if die_writing_at is not None:
            die_while_writing(trainer, die_writing_at)
        data = PromptDataModule(train=[SixPrompts(path="unused")], batch_size=2)
        trainer.fit(module, datamodule=data, ckpt_path="last" if resume else None)
        trained = {key: p.detach().clone() for key, p in module.named_parameters() if p.requires_grad}
        torch.save({"router": module.router.state_dict(), "trained": trained}, folder / f"{name}.pt")
    finally:
        torch.set_num_threads(threads)


def routing(path: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, path.read_text().splitlines())}


def run_collect(output: Path, kill_in_batch: int | None = None, tear_in_batch: int | None = None) -> None:
    from test_behaviour import PAIRS, ListSource, make_pool

    import rmrouter.behaviour.collect as collect

    pool = make_pool()
    if kill_in_batch is not None:
        rm, calls = pool.reward_models[0], []
        score = rm.score

        def dying_score(*args, **kwargs):
            calls.append(1)
            if len(calls) == kill_in_batch:  # one call per batch, both sides together
                sigkill()
            return score(*args, **kwargs)

        rm.score = dying_score
    if tear_in_batch is not None:
        writes = []

        def tearing_open(*args, **kwargs):
            handle = builtins.open(*args, **kwargs)
            write = handle.write

            def torn_write(text: str) -> int:
                writes.append(text)
                if len(writes) == tear_in_batch:
                    write(text[: len(text) // 2])
                    handle.flush()
                    sigkill()
                return write(text)

            handle.write = torn_write
            return handle

        collect.open = tearing_open  # the module's `open`, ahead of the builtin
    collect.collect_behaviour(pool, [ListSource(PAIRS)], Path(output), table=None, batch_size=2)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    online = commands.add_parser("online")
    for name in ("policy", "prior", "folder", "name"):
        online.add_argument(name)
    online.add_argument("--steps", type=int, default=4)
    online.add_argument("--every", type=int, default=2)
    online.add_argument("--kill-at", type=int)
    online.add_argument("--die-writing-at", type=int)
    online.add_argument("--resume", action="store_true")
    collect = commands.add_parser("collect")
    collect.add_argument("output")
    collect.add_argument("--kill-in-batch", type=int)
    collect.add_argument("--tear-in-batch", type=int)
    args = parser.parse_args()
    if args.command == "online":
        run_online(args.policy, args.prior, Path(args.folder), args.name, args.steps, args.every, args.kill_at,
                   args.die_writing_at, args.resume)  # fmt: skip
    else:
        run_collect(Path(args.output), args.kill_in_batch, args.tear_in_batch)


if __name__ == "__main__":
    main()
