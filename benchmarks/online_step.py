"""One online DPO step, rmrouter's `OnlineDPOModule` against TRL's `OnlineDPOTrainer`, on one workload.

Both sides train SmolLM2-135M-Instruct with a LoRA adapter (r 16, alpha 32 on q/v; the reference is the base with
the adapter off) on the same GSM8K prompts (4 per step), sample k completions of at most `--max-new-tokens` tokens
(temperature 0.8, top-p 0.95), label them with a length reward (characters; one RM, so rmrouter routes with a
`SingleRMRouter`) and take one AdamW step of sigmoid DPO (beta 0.1). Each block of `--steps` steps runs in a fresh
process, the two sides alternating, so neither inherits the other's caches or threads; a block's first step (warm-up)
is not counted. Reported: the median seconds per step of each side and their ratio, rmrouter's step split into its
parts, seconds per trained pair, and each side's peak resident memory.

    .venv/bin/python benchmarks/online_step.py --precisions 32-true bf16-mixed --output docs/online_step.md

TRL is the optional `bench` extra (`pip install -e .[bench]`), never a run-time dependency. TRL samples exactly two
completions per prompt, so `--num-samples 4` times rmrouter alone (its default pairing: 2 random pairs per prompt).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from common import write_report

POLICY = "smollm2-135m-instruct"
LORA = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 0.0}
PROMPTS_PER_STEP = 4
TEMPERATURE, TOP_P, BETA, LEARNING_RATE = 0.8, 0.95, 0.1, 1.0e-4
MAX_PROMPT_LENGTH = 192
# rmrouter's parts of a step, in the order a step runs them; "other" is the step's time that none of them covers.
# rmrouter as it runs, rmrouter with every DPO row run whole (share_prompts off: the form the prompt cache replaced),
# and TRL.
SIDES = ("rmrouter", "rmrouter-whole-rows", "trl")
PARTS = ("generation", "rm_scoring", "routing", "policy_forward", "reference_forward", "backward", "optimizer")


def gsm8k_prompts(count: int) -> list:
    """The first `count` GSM8K questions of the split no learned RM trained on, as rmrouter's prompt records."""
    from rmrouter.data import GSM8KPrompts

    return GSM8KPrompts(split="behaviour", split_fractions="gsm8k", limit=count).load()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


class Timings:
    """Seconds spent in named parts of each step: `wrap` times a function, `mark`/`since` time between hooks."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current[name] += time.perf_counter() - start

    def wrap(self, owner, attribute: str, name) -> None:
        """Replaces `owner.attribute` by a timed call; `name` may be a function of nothing picking the part."""
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.part(name() if callable(name) else name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)

    def end_step(self, total: float, **extra: float) -> None:
        self.steps.append({**self.current, "total": total, **extra})
        self.current = defaultdict(float)


def run_rmrouter(
    prompts: list,
    precision: str,
    steps: int,
    num_samples: int,
    max_new_tokens: int,
    share_prompts: bool,
    accelerator: str = "cpu",
) -> dict:
    """`steps` steps of rmrouter's online DPO under Lightning; per step, its parts' seconds."""
    from lightning.pytorch import Callback, Trainer

    from rmrouter.commands import prepare_process
    from rmrouter.data.prompt_datamodule import PromptDataModule
    from rmrouter.data.sources import PromptSource
    from rmrouter.modules.online_dpo import OnlineDPOModule
    from rmrouter.policy import generation
    from rmrouter.reward_models import LengthRewardModel
    from rmrouter.reward_models.pool import RewardModelPool
    from rmrouter.routers.baseline_routers import SingleRMRouter

    prepare_process()
    timings = Timings()

    class Given(PromptSource):
        def read(self):
            return prompts

    pool = RewardModelPool([LengthRewardModel(name="length", unit="characters")])
    module = OnlineDPOModule(
        policy=POLICY,
        pool=pool,
        num_samples=num_samples,
        pairing="random",
        pairs_per_prompt=1 if num_samples == 2 else 2,
        min_score_gap=0.0,
        beta=BETA,
        loss_type="sigmoid",
        max_new_tokens=max_new_tokens,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        max_prompt_length=MAX_PROMPT_LENGTH,
        missing_eos_penalty=0.0,
        lora=LORA,
        simulated=False,
        seed=0,
        log_text_every_n_steps=0,
        router=SingleRMRouter(rm_names=["length"], rm="length"),
        optimizer=lambda params: torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0),
        share_prompts=share_prompts,
    )
    timings.wrap(generation, "sample_completions", "generation")
    timings.wrap(pool.reward_models[0], "score", "rm_scoring")

    class StepClock(Callback):
        def on_fit_start(self, trainer, pl_module):
            # The trained forwards run with gradients, the reference's without: that tells the two apart.
            timings.wrap(
                pl_module.policy,
                "forward",
                lambda: "policy_forward" if torch.is_grad_enabled() else "reference_forward",
            )
            route = pl_module.router.route

            def timed_route(pairs, judge):
                scored_before = timings.current["rm_scoring"]
                start = time.perf_counter()
                routing = route(pairs, judge)
                scoring = timings.current["rm_scoring"] - scored_before
                timings.current["routing"] += time.perf_counter() - start - scoring
                return routing

            pl_module.router.route = timed_route

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            timings.marks["step"] = time.perf_counter()

        def on_before_backward(self, trainer, pl_module, loss):
            timings.marks["backward"] = time.perf_counter()

        def on_after_backward(self, trainer, pl_module):
            timings.current["backward"] += time.perf_counter() - timings.marks["backward"]

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            timings.marks["optimizer"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if accelerator == "gpu":
                torch.cuda.synchronize()  # the step's kernels have run, not only been queued
            now = time.perf_counter()
            timings.current["optimizer"] += now - timings.marks["optimizer"]
            pairs = outputs["step_values"].get("train/pairs", 0.0)
            timings.end_step(now - timings.marks["step"], pairs=pairs)

    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepClock()],
    )
    data = PromptDataModule([Given()], batch_size=PROMPTS_PER_STEP, seed=0)
    trainer.fit(module, datamodule=data)
    return {"steps": timings.steps, "peak_rss_mib": peak_rss_mib()}


def run_trl(
    prompts: list, precision: str, steps: int, max_new_tokens: int, folder: str, accelerator: str = "cpu"
) -> dict:
    """`steps` steps of TRL's OnlineDPOTrainer on the same model, adapter, prompts and reward."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rmrouter.commands import prepare_process
    from rmrouter.models.store import load_model, load_tokenizer

    prepare_process()
    tokenizer = load_tokenizer(POLICY)
    model = load_model(AutoModelForCausalLM, POLICY, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": record.prompt} for record in prompts])

    def length_reward(completions, **kwargs):
        return [float(len(completion[0]["content"])) for completion in completions]

    config = OnlineDPOConfig(
        output_dir=folder,
        per_device_train_batch_size=PROMPTS_PER_STEP,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        beta=BETA,
        loss_type="sigmoid",
        max_new_tokens=max_new_tokens,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        top_k=0,
        missing_eos_penalty=None,
        use_cpu=accelerator == "cpu",
        bf16=precision.startswith("bf16"),
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        gradient_checkpointing=False,  # TRL turns it on by default; rmrouter does not checkpoint: the same work
        dataloader_num_workers=0,
        seed=0,
    )
    step_times: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if accelerator == "gpu":
                torch.cuda.synchronize()
            step_times.append({"total": time.perf_counter() - self.start, "pairs": float(PROMPTS_PER_STEP)})

    trainer = OnlineDPOTrainer(
        model=model,
        reward_funcs=length_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        callbacks=[StepClock()],
    )
    trainer.train()
    return {"steps": step_times, "peak_rss_mib": peak_rss_mib()}


def worker(args: argparse.Namespace) -> None:
    prompts = gsm8k_prompts(PROMPTS_PER_STEP * args.steps)
    if args.worker in SIDES[:2]:
        share_prompts = args.worker == "rmrouter"
        result = run_rmrouter(prompts, args.precision, args.steps, args.num_samples, args.max_new_tokens, share_prompts,
                              args.accelerator)  # fmt: skip
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="rmrouter-trl-") as folder:
            result = run_trl(prompts, args.precision, args.steps, args.max_new_tokens, folder, args.accelerator)
    Path(args.result).write_text(json.dumps(result))


def run_block(side: str, precision: str, num_samples: int, args: argparse.Namespace, result: Path) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--precision", precision, "--steps", str(args.steps),
               "--accelerator", args.accelerator]  # fmt: skip
    command += [
        "--num-samples",
        str(num_samples),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--result",
        str(result),
    ]
    print(f"{side} {precision} k={num_samples}: {args.steps} steps ...", flush=True)
    subprocess.run(command, check=True)
    return json.loads(result.read_text())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(blocks: list[dict]) -> dict:
    """Median over every counted step (each block's first is warm-up) of each part, and the largest peak RSS."""
    steps = [step for block in blocks for step in block["steps"][1:]]
    parts = {name: median([step.get(name, 0.0) for step in steps]) for name in (*PARTS, "total")}
    per_pair = median([step["total"] / step["pairs"] for step in steps if step.get("pairs")])
    return {
        "parts": parts,
        "per_pair": per_pair,
        "counted": len(steps),
        "rss": max(block["peak_rss_mib"] for block in blocks),
    }


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        "| precision | k | side | s/step | ratio to TRL | s/trained pair | steps counted | peak RSS (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (precision, k), sides in results.items():
        trl = sides.get("trl")
        for side, found in sides.items():
            step = found["parts"]["total"]
            ratio = f"{step / trl['parts']['total']:.2f}" if trl else "-"
            lines.append(
                f"| {precision} | {k} | {side} | {step:.2f} | {ratio} | {found['per_pair']:.2f} | {found['counted']} | "
                f"{found['rss']:.0f} |"
            )
    lines += ["", "rmrouter's step, median seconds of each part (medians do not add up to the step's exactly):", ""]
    lines.append("| precision | k | side | " + " | ".join(name.replace("_", " ") for name in PARTS) + " | other |")
    lines.append("|---|---:|---|" + "---:|" * (len(PARTS) + 1))
    for (precision, k), sides in results.items():
        for side in SIDES[:2]:
            parts = sides[side]["parts"]
            other = parts["total"] - sum(parts[name] for name in PARTS)
            cells = " | ".join(f"{parts[name]:.2f}" for name in PARTS)
            lines.append(f"| {precision} | {k} | {side} | {cells} | {other:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--num-samples", nargs="+", type=int, default=[2, 4], help="k; TRL runs only k = 2")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per block; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="blocks per side, alternating")
    parser.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="gpu: the first CUDA device")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.num_samples = args.num_samples[0]
        worker(args)
        return
    import tempfile

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="rmrouter-online-step-") as folder:
        for precision in args.precisions:
            for k in args.num_samples:
                sides = list(SIDES) if k == 2 else list(SIDES[:2])
                blocks: dict[str, list] = {side: [] for side in sides}
                for round_index in range(args.rounds):
                    for side in sides if round_index % 2 == 0 else sides[::-1]:
                        result = Path(folder) / f"{side}-{precision}-{k}-{round_index}.json"
                        blocks[side].append(run_block(side, precision, k, args, result))
                results[(precision, k)] = {side: summarise(found) for side, found in blocks.items()}
    table = report(results, args)
    print(table)
    if args.output is not None:
        notes = (
            f"\nSmolLM2-135M-Instruct + LoRA r16/alpha32 on q/v, {PROMPTS_PER_STEP} GSM8K prompts per step, "
            f"k completions of at most {args.max_new_tokens} new tokens, length reward, sigmoid DPO beta {BETA}, "
            f"AdamW lr {LEARNING_RATE}; {args.rounds} blocks of {args.steps} steps per side, alternating, each in a "
            f"fresh process, the first step of each block not counted; {torch.get_num_threads()} torch threads. "
            "TRL samples two completions per prompt, so k = 4 is rmrouter alone (2 random pairs per prompt). "
            "`rmrouter-whole-rows` is rmrouter with `share_prompts: false`: every DPO row's prompt + response runs "
            "whole, as before the prompt cache. "
            "Generation lengths are sampled, so they differ between the sides and between runs."
        )
        write_report(args.output, "Online DPO step: rmrouter against TRL", notes, table)


if __name__ == "__main__":
    main()
