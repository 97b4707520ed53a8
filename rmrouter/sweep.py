"""The downstream sweep: every method trains the embedded default's policy for the same budget and seeds, each
trained policy is evaluated (`test` with `configs/evaluation/downstream.yaml`), and one table compares them.

    python cli.py sweep --config configs/sweep.yaml

Each run lives in `<out_dir>/<method>/seed<k>/` and is resumed or skipped from what is there: a finished
evaluation (`evaluation/metrics.json`) skips the run, a finished fit (`summary.md`) skips to the evaluation, and a
`last.ckpt` without a summary resumes the fit. A stop loses at most the run it was in, from its last checkpoint.
It needs the main job's learned RMs, behaviour file and offline prior (stages 1-3 of `bash scripts/run.sh`) and
trains the downstream judge itself when its checkpoint is missing.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rmrouter.commands import run_lightning
from rmrouter.machine import describe_machine

log = logging.getLogger(__name__)

SEED_KEYS = ("--seed_everything", "--model.init_args.seed", "--data.init_args.seed")


def run_sweep(
    methods: dict[str, list[str]],
    seeds: list[int],
    online_config: str = "configs/online/live.yaml",
    evaluation_config: str = "configs/evaluation/downstream.yaml",
    online_args: list[str] | None = None,
    offline_router_config: str = "configs/offline_router.yaml",
    judge_config: str = "configs/learned_rm/judge.yaml",
    judge_checkpoint: str = "checkpoints/learned_rm/judge/best.ckpt",
    required: list[str] | None = None,
    checkpoint_every: int = 2,
    out_dir: str = "checkpoints/downstream",
    results: str = "checkpoints/downstream/results.json",
    output: str | None = None,
    reference: str = "bayesian",
    command: str | None = None,
) -> None:
    """Trains and evaluates every method with every seed, then writes the results and the table.

    Args:
        methods: Method name -> the arguments that make it, after the online config (e.g. `[--config,
            configs/routers/bayesian.yaml]`). `{seed}` is replaced by the run's seed and `{best_single_rm}` by the RM
            with the highest accuracy on the offline router's training rows.
        seeds: Seeds of every method (global, pair drawing, data order and, through `{seed}`, the router's).
        online_config: The online run's config; every method trains with it.
        evaluation_config: The evaluation overlay `test` composes last.
        online_args: The budget and anything else every fit gets (e.g. `--trainer.max_steps 4`).
        offline_router_config: Whose behaviour file and `train` split pick the best single RM.
        judge_config: The judge's fit config, run when `judge_checkpoint` is missing.
        judge_checkpoint: The judge the evaluation config loads.
        required: Files the runs need (the main job's outputs); a missing one stops the sweep before any run.
        checkpoint_every: Steps between a run's checkpoints (what a stop can lose).
        out_dir: Where every run's folder goes.
        results: The JSON every run's metrics and evaluated rows are collected into (what the table and
            `python cli.py report` read).
        output: A markdown file for the table (e.g. `docs/downstream.md`); None: only logged.
        reference: The method every other one is tested against.
        command: How the sweep was run, named in the doc's first lines; None: this process's command line.
    """
    from rmrouter.evaluation.sweep_table import sweep_table

    missing = [path for path in required or [] if not Path(path).is_file()]
    if missing:
        raise SystemExit(
            f"sweep: missing {missing}: run the main job's first stages first (`bash scripts/run.sh`, or "
            "`python cli.py pipeline --config configs/pipeline.yaml`)"
        )
    if reference not in methods:
        raise SystemExit(f"sweep: the reference method {reference!r} is not one of methods {sorted(methods)}")
    if not Path(judge_checkpoint).is_file():
        log.info("sweep: training the downstream judge with %s", judge_config)
        run_lightning(["fit", "--config", judge_config])
    best_single = best_single_rm(offline_router_config)
    log.info("sweep: the best single RM on the offline router's training rows is %s", best_single)
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for method, method_args in methods.items():
            run_dir = Path(out_dir) / method / f"seed{seed}"
            arguments = [arg.format(seed=seed, best_single_rm=best_single) for arg in method_args]
            seconds = train_and_evaluate(
                run_dir, online_config, arguments, evaluation_config, list(online_args or []), seed, checkpoint_every
            )
            metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
            rows = [json.loads(line) for line in (run_dir / "evaluation" / "rows.jsonl").read_text().splitlines()]
            runs.append({"method": method, "seed": seed, "seconds": seconds, "metrics": metrics,
                         "rows": [_outcome_row(row) for row in rows]})  # fmt: skip
    total = time.perf_counter() - started
    summary = {
        "judge": judge_summary(judge_checkpoint),
        "machine": describe_machine(),
        "methods": {name: list(args) for name, args in methods.items()},
        "seeds": list(seeds),
        "online_config": online_config,
        "online_args": list(online_args or []),
        "evaluation_config": evaluation_config,
        "best_single_rm": best_single,
        "reference": reference,
        "command": command or " ".join(["python", *map(shlex.quote, sys.argv)]),
        "sweep_seconds": total,
        "run_seconds": math.fsum(run["seconds"] for run in runs),
        "runs": runs,
    }
    Path(results).parent.mkdir(parents=True, exist_ok=True)
    Path(results).write_text(json.dumps(summary, indent=1) + "\n")
    table = sweep_table(summary)
    log.info("sweep done in %.0f s; results in %s\n%s", total, results, table)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# Downstream sweep\n\nWritten by `{summary['command']}` ({summary['machine']}); do not edit by hand.\n\n"
        )
        Path(output).write_text(header + table)


def train_and_evaluate(
    run_dir: Path,
    online_config: str,
    method_args: list[str],
    evaluation_config: str,
    online_args: list[str],
    seed: int,
    checkpoint_every: int,
) -> float:
    """One method and seed: fit (resumed from `last.ckpt`), then `test`; the seconds they took, kept in the run's
    `seconds.json` (a run finished earlier reports its own; one resumed after a stop, those since the stop)."""
    timing = run_dir / "seconds.json"
    if (run_dir / "evaluation" / "metrics.json").is_file():
        log.info("sweep: %s is evaluated, skipping it", run_dir)
        return json.loads(timing.read_text())["seconds"] if timing.is_file() else math.nan
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    overlay = run_dir / "run.yaml"
    overlay.write_text(yaml.safe_dump(run_overlay(run_dir, checkpoint_every), sort_keys=False))
    seeding = [value for key in SEED_KEYS for value in (key, str(seed))]
    common = ["--config", online_config, *method_args, *online_args, *seeding, "--config", str(overlay)]
    if not (run_dir / "summary.md").is_file():
        resume = ["--ckpt_path", str(run_dir / "last.ckpt")] if (run_dir / "last.ckpt").is_file() else []
        log.info("sweep: training %s%s", run_dir, " (resuming)" if resume else "")
        run_lightning(["fit", *common, *resume])
    log.info("sweep: evaluating %s", run_dir)
    run_lightning(["test", *common, "--config", evaluation_config, "--ckpt_path", str(run_dir / "last.ckpt")])
    seconds = time.perf_counter() - started
    timing.write_text(json.dumps({"seconds": seconds}) + "\n")
    return seconds


def run_overlay(run_dir: Path, checkpoint_every: int) -> dict[str, Any]:
    """The trainer settings that put a run's checkpoints, logs and summary in its own folder (the run's folder:
    `rmrouter.callbacks.run_folder`)."""
    checkpoint = {"save_top_k": 0, "every_n_train_steps": checkpoint_every}
    return {
        "trainer": {
            "default_root_dir": str(run_dir),
            "callbacks": [
                {"class_path": "rmrouter.callbacks.ResumableCheckpoint", "init_args": checkpoint},
                "rmrouter.callbacks.OnlineSummary",
            ],
        }
    }


def judge_summary(checkpoint: str) -> dict[str, Any]:
    """The judge's checkpoint and its validation score, as its fit's checkpoint callback recorded them."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for callback in state.get("callbacks", {}).values():
        if callback.get("best_model_score") is not None:
            return {"checkpoint": checkpoint, "monitor": callback["monitor"],
                    "best_score": float(callback["best_model_score"])}  # fmt: skip
    return {"checkpoint": checkpoint}


def best_single_rm(offline_router_config: str) -> str:
    """The RM right on the most of the offline router's `train` rows, a row it cannot judge counting as no label:
    what a user who runs one RM on every pair would pick from the same data (the routing benchmark's choice too; its
    accuracy on the rows it can judge alone would pick an RM that abstains on most)."""
    from rmrouter.data.behaviour_datamodule import BehaviourDataModule
    from rmrouter.data.behaviour_split import split_named_by

    init_args = yaml.safe_load(Path(offline_router_config).read_text())["data"]["init_args"]
    data = BehaviourDataModule(**{**init_args, "split": split_named_by(offline_router_config)})
    data.setup("fit")
    return data.rm_names[int(data.splits["train"].agree.mean(dim=0).argmax())]


def _outcome_row(row: dict[str, Any]) -> dict[str, Any]:
    """What the paired tests need of an evaluated row (the answers stay in the run's rows.jsonl)."""
    kept = {"id": row["id"], "task": row["task"], "dataset": row["dataset"], "policy_length": row["policy_length"],
            "base_length": row["base_length"]}  # fmt: skip
    if row["task"] == "gsm8k":
        kept["correct"] = row["correct"]
    else:
        kept["outcome"] = row["outcome"]
    return kept
