"""The downstream sweep's table: per method the mean ± sd over seeds, and a paired test against the reference method
over the same prompts of the same seeds (a gap inside the noise reads `no difference`)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from rmrouter.stats import paired_test

COLUMNS = (  # (metric key, header, shown as a percentage)
    ("gsm8k/accuracy", "GSM8K acc. %", True),
    ("chat/win_rate", "win rate % (all judged)", True),
    ("chat/lc_win_rate", "LC win rate %", True),
    ("alpaca_eval/win_rate", "AlpacaEval win %", True),
    ("mt_bench/win_rate", "MT-Bench win %", True),
    ("chat/mean_length", "mean length (chars)", False),
    ("chat/same_as_base", "same answer as start %", True),
)
LABELS = {
    "best_single": "best single RM",
    "majority": "majority vote",
    "data_label": "data-label routing",
    "uwo": "UWO",
    "laser": "LASER",
    "bayesian": "BayesianRouter",
    "ablation_no_prior": "BayesianRouter without prior",
    "ablation_no_online_updates": "BayesianRouter without online updates",
    "ablation_weighted_score": "BayesianRouter, weighted score",
    "random": "random RM",
}


def mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired_rows(summary: dict[str, Any], method: str, task: str) -> dict[tuple[int, str], float]:
    """`(seed, prompt id) -> score` of a method's evaluated rows of one task (`gsm8k`: right or not; `win_rate`: the
    judged outcome)."""
    key = "correct" if task == "gsm8k" else "outcome"
    return {
        (run["seed"], row["id"]): float(row[key])
        for run in summary["runs"]
        if run["method"] == method
        for row in run["rows"]
        if row["task"] == task
    }


def compare(summary: dict[str, Any], method: str, task: str):
    """The paired test of `method` against the reference on one task, over the rows both have; None if under 2."""
    mine, theirs = paired_rows(summary, method, task), paired_rows(summary, summary["reference"], task)
    keys = sorted(set(mine) & set(theirs))
    if len(keys) < 2:
        return None
    return paired_test([mine[k] for k in keys], [theirs[k] for k in keys])


def identical_methods(summary: dict[str, Any]) -> list[list[str]]:
    """Groups of 2+ methods whose evaluated rows (every prompt's outcome and answer length) are the same on every
    seed: they trained the same policy, so they routed every trained pair alike."""
    groups: dict[str, list[str]] = {}
    for method in summary["methods"]:
        runs = sorted((run for run in summary["runs"] if run["method"] == method), key=lambda run: run["seed"])
        if runs:
            key = repr([(run["seed"], sorted(map(sorted, (row.items() for row in run["rows"])))) for run in runs])
            groups.setdefault(key, []).append(method)
    return [methods for methods in groups.values() if len(methods) > 1]


def _cell(mean: float, sd: float, percent: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    scale, digits = (100.0, 1) if percent else (1.0, 0)
    spread = "" if math.isnan(sd) else f" ± {scale * sd:.{digits}f}"
    return f"{scale * mean:.{digits}f}{spread}"


def _test_cell(test) -> str:
    if test is None:
        return "n/a"
    return f"{100 * test.mean:+.1f} (p {test.p_value:.2g}, {test.verdict()})"


def _judge(summary: dict[str, Any]) -> str:
    judge = summary.get("judge", {})
    if "best_score" not in judge:
        return "the downstream judge"
    return f"the downstream judge (`{judge['checkpoint']}`, {judge['monitor']} {100 * judge['best_score']:.1f} %)"


def sweep_table(summary: dict[str, Any]) -> str:
    """Markdown: the budget and machine, one row per method, and the paired tests against the reference."""
    methods = list(summary["methods"])
    reference = summary["reference"]
    seeds = summary["seeds"]
    lines = [
        "## Downstream: every method trains the same policy for the same budget, then is evaluated",
        "",
        f"On {summary['machine']}; seeds {', '.join(map(str, seeds))}; online config `{summary['online_config']}` "
        f"with `{' '.join(summary['online_args'])}`; evaluation `{summary['evaluation_config']}`; the best single RM "
        f"(right on the most of the offline router's training rows) is `{summary['best_single_rm']}`. The runs took "
        f"{summary.get('run_seconds', summary['sweep_seconds']) / 60:.1f} min. Each cell is the mean ± sd over seeds; "
        f"win rates are against the starting policy, judged by {_judge(summary)} (ties 1/2), LC is "
        "length-controlled.",
        "",
        "| method | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for method in methods:
        runs = [run for run in summary["runs"] if run["method"] == method]
        cells = [_cell(*mean_sd([run["metrics"].get(key, math.nan) for run in runs]), percent)
                 for key, _, percent in COLUMNS]  # fmt: skip
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Against {LABELS.get(reference, reference)}, paired over the same prompts of the same seeds: the mean "
        "difference in points, its p-value and the verdict (p < 0.05; otherwise no difference).",
        "",
        "| method | GSM8K correct | judged win |",
        "|---|---:|---:|",
    ]
    for method in methods:
        if method == reference:
            continue
        cells = [_test_cell(compare(summary, method, task)) for task in ("gsm8k", "win_rate")]
        lines.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    for group in identical_methods(summary):
        names = " and ".join(f'"{LABELS.get(method, method)}"' for method in group)
        lines += ["", f"{names}: the same evaluated answers on every seed, so the same trained policy."]
    lines += [
        "",
        "Downstream there is no any-RM-right ceiling: the policy's own samples have no true label. The routing "
        "benchmark (docs/routing_benchmark.md) carries it.",
    ]
    return "\n".join(lines) + "\n"
