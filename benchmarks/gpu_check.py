"""The GPU paths, run for real on one CUDA device: `docs/gpu_check.md`.

    bash scripts/gpu_check.sh          # = .venv/bin/python benchmarks/gpu_check.py --output docs/gpu_check.md

Four checks, each timed and each reported even when another fails (the script then exits 1):

1. **RMs in bfloat16 on the GPU**: the SmolLM2 likelihood RM, the MiniLM reference-similarity RM and a sequence
   classifier (SmolLM2 with a seeded one-output head, the shape of RewardBench RMs) score real behaviour pairs in
   bfloat16 on CUDA and in float32 on the CPU: pairs per second on each, the largest score difference, and the share
   of margins whose sign agrees.
2. **The online step against TRL** on the GPU in bf16-mixed (`benchmarks/online_step.py --accelerator gpu`).
3. **A 1-GPU FSDP fit**: the live online config with `configs/trainer/fsdp_bf16.yaml`, two steps, a random router
   over the pool's RMs that need no training (length, SmolLM2 likelihood, MiniLM reference).
4. **The offline router with the paper's encoder**: `configs/paper/offline_router.yaml` (SmolLM2, last-token
   pooling, fine-tuned) on the shipped large behaviour set, routing the default pool, one epoch in bf16-mixed.

On a machine without CUDA it says so in one line and exits 0, leaving the doc as it is. Outputs of the runs go to a
temporary folder; only the doc is written. Meant to finish in under 10 minutes on one H100.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from common import real_pairs, redirected_trainer, write_report

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "rmrouter" / "shipped" / "behaviour_large"
NO_TRAINING_POOL = {
    "class_path": "rmrouter.reward_models.RewardModelPool",
    "init_args": {
        "reward_models": [
            {"class_path": "rmrouter.reward_models.LengthRewardModel", "init_args": {"name": "length"}},
            {
                "class_path": "rmrouter.reward_models.LikelihoodRewardModel",
                "init_args": {"name": "smollm2-likelihood", "model": "smollm2-135m-instruct", "dtype": "bfloat16"},
            },
            {
                "class_path": "rmrouter.reward_models.ReferenceSimilarityRewardModel",
                "init_args": {"name": "minilm-reference", "model": "all-minilm-l6-v2", "dtype": "bfloat16"},
            },
        ]
    },
}


def scoring_rms(dtype: str, policy: str = "smollm2-135m-instruct", encoder: str = "all-minilm-l6-v2") -> list:
    """The three RM kinds of check 1, built alike for each device (the classifier's head seeded)."""
    from rmrouter.reward_models import (
        LikelihoodRewardModel,
        ReferenceSimilarityRewardModel,
        SequenceClassifierRewardModel,
    )

    torch.manual_seed(0)
    return [
        LikelihoodRewardModel("likelihood", policy, batch_size=16, max_length=256, dtype=dtype),
        ReferenceSimilarityRewardModel("reference-similarity", encoder, batch_size=32, max_length=256, dtype=dtype),
        SequenceClassifierRewardModel("sequence-classifier", policy, batch_size=16, max_length=256, dtype=dtype),
    ]


def compare_rms(pairs: list, device: str, dtype: str, rms_here: list, rms_cpu: list) -> str:
    """Check 1's table: each RM on `device` in `dtype` against the same RM on the CPU in float32."""
    from rmrouter.reward_models.pool import RewardModelPool

    rows = ["| RM | pairs/s on the device | pairs/s on the CPU (float32) | largest score difference | margin signs "
            "agreeing |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    columns = ([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs],
               [p.reference for p in pairs])  # fmt: skip
    for here, cpu in zip(rms_here, rms_cpu, strict=True):
        results = []
        for rm, where in ((here, device), (cpu, "cpu")):
            pool = RewardModelPool([rm]).to(where)
            pool.score_pairs(rm, *(column[:2] for column in columns))  # warm-up: kernels, caches
            _synchronize(where)
            start = time.perf_counter()
            chosen, rejected = pool.score_pairs(rm, *columns)
            _synchronize(where)
            results.append((len(pairs) / (time.perf_counter() - start), chosen, rejected))
        (speed, chosen, rejected), (cpu_speed, cpu_chosen, cpu_rejected) = results
        judged = ~(cpu_chosen.isnan() | cpu_rejected.isnan())
        difference = torch.cat([(chosen - cpu_chosen)[judged], (rejected - cpu_rejected)[judged]]).abs().max()
        agree = ((chosen - rejected)[judged] > 0) == ((cpu_chosen - cpu_rejected)[judged] > 0)
        rows.append(f"| {here.name} ({dtype}) | {speed:.1f} | {cpu_speed:.1f} | {difference:.4f} | "
                    f"{agree.float().mean():.1%} of {int(judged.sum())} |")  # fmt: skip
    return "\n".join(rows)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_rms(folder: Path) -> str:
    pairs = real_pairs(96)
    return compare_rms(pairs, "cuda", "bfloat16", scoring_rms("bfloat16"), scoring_rms("float32"))


def check_online_step(folder: Path) -> str:
    output = folder / "online_step.md"
    run([sys.executable, "benchmarks/online_step.py", "--accelerator", "gpu", "--precisions", "bf16-mixed",
         "--num-samples", "2", "4", "--steps", "4", "--rounds", "1", "--output", str(output)])  # fmt: skip
    return output.read_text().split("\n", 4)[4]  # the tables, without the report's own title and command


def check_fsdp(folder: Path) -> str:
    config = yaml.safe_load((ROOT / "configs" / "online" / "live.yaml").read_text())
    (folder / "pool.yaml").write_text(yaml.safe_dump(NO_TRAINING_POOL))
    overlay = redirected_trainer(config, folder / "fsdp")
    overlay["trainer"].update(devices=1, max_steps=2, enable_progress_bar=False)
    (folder / "fsdp_overlay.yaml").write_text(yaml.safe_dump(overlay))
    start = time.perf_counter()
    run([sys.executable, "cli.py", "fit", "--config", "configs/online/live.yaml", "--config",
         "configs/routers/random.yaml", "--config", "configs/trainer/fsdp_bf16.yaml", "--config",
         str(folder / "fsdp_overlay.yaml"), f"--model.init_args.pool={folder / 'pool.yaml'}"])  # fmt: skip
    seconds = time.perf_counter() - start
    summary = folder / "fsdp" / "summary.md"
    return f"Two steps in {seconds:.0f} s (process start and model loading included).\n\n" + summary.read_text()


def check_offline_router(folder: Path) -> str:
    from rmrouter.data.behaviour import rm_names_of

    names = [name for name in rm_names_of(SHIPPED) if name != "gsm8k-verifier"]  # the default pool
    config = yaml.safe_load((ROOT / "configs" / "paper" / "offline_router.yaml").read_text())
    overlay = redirected_trainer(config, folder / "offline")
    overlay["trainer"].update(accelerator="gpu", devices=1, precision="bf16-mixed", max_epochs=1)
    (folder / "offline_overlay.yaml").write_text(yaml.safe_dump(overlay))
    start = time.perf_counter()
    listed = "[" + ", ".join(names) + "]"
    run([sys.executable, "cli.py", "fit", "--config", "configs/paper/offline_router.yaml", "--config",
         str(folder / "offline_overlay.yaml"), f"--data.init_args.path={SHIPPED}",
         f"--model.init_args.rm_names={listed}", f"--data.init_args.rm_names={listed}"])  # fmt: skip
    seconds = time.perf_counter() - start
    priors = sorted((folder / "offline").rglob("prior.pt"))
    return (f"One epoch on the shipped large set ({len(names)} RMs) in {seconds:.0f} s (process start and model "
            f"loading included); prior written: {'yes' if priors else 'no'}.")  # fmt: skip


def run(command: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


CHECKS: dict[str, Callable[[Path], str]] = {
    "RMs in bfloat16 on the GPU against float32 on the CPU": check_rms,
    "The online step against TRL (bf16-mixed)": check_online_step,
    "A 1-GPU FSDP fit (bf16-mixed)": check_fsdp,
    "The offline router with SmolLM2 as its encoder (the paper's)": check_offline_router,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "gpu_check.md")
    parser.add_argument("--only", nargs="+", choices=range(1, len(CHECKS) + 1), type=int, help="run these checks")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA device here: the GPU check did not run ({args.output} left as it is)")
        return 0
    sections, failed = [], 0
    folder = Path(tempfile.mkdtemp(prefix="rmrouter-gpu-check-"))
    try:
        for number, (title, check) in enumerate(CHECKS.items(), start=1):
            if args.only and number not in args.only:
                continue
            start = time.perf_counter()
            try:
                body, status = check(folder), "ran"
            except Exception as error:  # each check is reported, whatever happens to another
                traceback.print_exc()
                body, status, failed = f"Failed: `{type(error).__name__}: {error}`", "FAILED", failed + 1
            sections.append(f"## {number}. {title}: {status} ({time.perf_counter() - start:.0f} s)\n\n{body}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    notes = f"\nOn {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible), CUDA {torch.version.cuda}."
    write_report(args.output, "GPU check", notes, "\n\n".join(sections))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
