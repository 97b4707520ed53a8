"""Downstream evaluation of a trained policy: GSM8K accuracy, and a judged win rate against the starting policy.

`Evaluation` is what `test` runs on a policy (`OnlineDPOModule`, or `PolicyEvaluationModule` for any causal LM or
exported policy): per batch of prompts it collects both policies' greedy answers (`add_batch`), and at the end it
judges and writes them (`finish`). Prompts from GSM8K are checked by their final number against the reference; every
other prompt (AlpacaEval, MT-Bench) is judged by the `judge` RM, which must be one no router could pick during
training (the shipped one, `configs/learned_rm/judge.yaml`, trains on AlpacaEval judgements that no pool RM saw and
sits in no pool).

The starting policy's answers are the same in every run of a sweep, so they can be kept in a cache file
(`base_cache`) keyed by the baseline, the generation settings and the prompt's tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rmrouter.data.behaviour import drop_torn_tail
from rmrouter.data.records import PromptRecord
from rmrouter.evaluation.metrics import gsm8k_correct, length_controlled_win_rate, mean_and_se, win_outcome
from rmrouter.reward_models.base import RewardModel
from rmrouter.routers.data_label import dataset_of

log = logging.getLogger(__name__)

Generate = Callable[[list[list[int]], int], list[str]]  # (prompt ids, max_new_tokens) -> answers
ACCURACY_DATASETS = ("gsm8k",)  # sources whose prompts are scored by the reference's final number


def task_of(record: PromptRecord) -> str:
    """`gsm8k` for a GSM8K prompt with a reference (accuracy), else `win_rate` (judged against the baseline)."""
    if dataset_of(record.source) in ACCURACY_DATASETS and record.reference:
        return "gsm8k"
    return "win_rate"


class Evaluation:
    """Judges a policy against its starting point on held-out prompts; `test` runs it.

    Args:
        judge: The RM that judges answers to non-GSM8K prompts; never one of a router's pool.
        max_new_tokens: Longest answer to a judged prompt, in tokens.
        math_max_new_tokens: Longest answer to a GSM8K prompt (worked solutions need more room).
        max_prompt_length: Prompt tokens kept, from the end.
        batch_size: Prompts per `generate` call.
        base_cache: A JSON-lines file of the baseline's answers, reused across runs; None: always generate.
        output_dir: Where `rows.jsonl`, `metrics.json` and `report.md` go; None: `evaluation/` in the trainer's
            `default_root_dir`.
    """

    def __init__(
        self,
        judge: RewardModel,
        max_new_tokens: int = 128,
        math_max_new_tokens: int = 256,
        max_prompt_length: int = 512,
        batch_size: int = 16,
        base_cache: str | None = None,
        output_dir: str | None = None,
    ):
        for name, value in (("max_new_tokens", max_new_tokens), ("math_max_new_tokens", math_max_new_tokens),
                            ("max_prompt_length", max_prompt_length), ("batch_size", batch_size)):  # fmt: skip
            if value < 1:
                raise ValueError(f"Evaluation: {name} must be >= 1, got {value}")
        self.judge = judge
        self.max_new_tokens = max_new_tokens
        self.math_max_new_tokens = math_max_new_tokens
        self.max_prompt_length = max_prompt_length
        self.batch_size = batch_size
        self.base_cache = Path(base_cache) if base_cache else None
        self._cached: dict[str, str] | None = None  # the cache file's answers, read on first use
        self.output_dir = output_dir
        self.rows: list[dict[str, Any]] = []

    def start(self) -> None:
        self.rows = []

    def add_batch(
        self, records: Sequence[PromptRecord], tokenizer, policy: Generate, baseline: Generate, baseline_name: str
    ) -> None:
        """Both policies' answers to `records` (the baseline's from the cache where it has them)."""
        from rmrouter.policy.generation import prompt_ids

        ids = prompt_ids(tokenizer, [record.prompt for record in records], self.max_prompt_length)
        for task, limit in (("gsm8k", self.math_max_new_tokens), ("win_rate", self.max_new_tokens)):
            rows = [i for i, record in enumerate(records) if task_of(record) == task]
            if not rows:
                continue
            prompts = [ids[i] for i in rows]
            answers = policy(prompts, limit)
            base = self._baseline_answers(prompts, limit, baseline, baseline_name)
            for i, answer, base_answer in zip(rows, answers, base, strict=True):
                record = records[i]
                self.rows.append({
                    "id": record.id, "task": task, "dataset": dataset_of(record.source), "domain": record.domain,
                    "prompt": record.prompt, "reference": record.reference, "policy": answer, "base": base_answer,
                })  # fmt: skip

    def _baseline_answers(self, prompts: list[list[int]], limit: int, baseline: Generate, name: str) -> list[str]:
        keys = [_cache_key(name, limit, prompt) for prompt in prompts]
        if self._cached is None:
            self._cached = _read_cache(self.base_cache)
        cached = self._cached
        missing = [i for i, key in enumerate(keys) if key not in cached]
        if missing:
            fresh = baseline([prompts[i] for i in missing], limit)
            new = {keys[i]: answer for i, answer in zip(missing, fresh, strict=True)}
            cached.update(new)
            _append_cache(self.base_cache, new)
        return [cached[key] for key in keys]

    def finish(self, rows: list[dict[str, Any]], output_dir: Path | None, title: str) -> dict[str, float]:
        """Scores every row, returns the metrics and (with `output_dir`) writes rows, metrics and a report."""
        judged = [row for row in rows if row["task"] == "win_rate"]
        if judged:
            prompts = [row["prompt"] for row in judged] * 2
            answers = [row["policy"] for row in judged] + [row["base"] for row in judged]
            scores = self.judge.score(prompts, answers).tolist()
            for row, policy_score, base_score in zip(judged, scores[: len(judged)], scores[len(judged) :], strict=True):
                row["policy_score"], row["base_score"] = policy_score, base_score
                row["outcome"] = win_outcome(policy_score, base_score, row["policy"] == row["base"])
        for row in rows:
            row["policy_length"], row["base_length"] = len(row["policy"]), len(row["base"])
            if row["task"] == "gsm8k":
                row["correct"] = gsm8k_correct(row["policy"], row["reference"])
                row["base_correct"] = gsm8k_correct(row["base"], row["reference"])
        metrics = summarise(rows)
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            with open(output_dir / "rows.jsonl", "w") as file:
                file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            (output_dir / "report.md").write_text(report(metrics, title, self.judge.name))
            log.info("evaluation written to %s", output_dir)
        return metrics


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of scored rows: GSM8K accuracy, and per judged dataset and over all of them the raw and the
    length-controlled win rate, mean answer lengths (characters) and the share of answers equal to the baseline's."""
    metrics: dict[str, float] = {}
    math_rows = [row for row in rows if row["task"] == "gsm8k"]
    if math_rows:
        accuracy, se = mean_and_se([float(row["correct"]) for row in math_rows])
        metrics.update({"gsm8k/accuracy": accuracy, "gsm8k/accuracy_se": se, "gsm8k/rows": float(len(math_rows))})
        metrics["gsm8k/base_accuracy"] = mean_and_se([float(row["base_correct"]) for row in math_rows])[0]
        metrics["gsm8k/mean_length"] = mean_and_se([row["policy_length"] for row in math_rows])[0]
    judged = [row for row in rows if row["task"] == "win_rate"]
    groups = {
        "chat": judged,
        **{d: [r for r in judged if r["dataset"] == d] for d in sorted({r["dataset"] for r in judged})},
    }
    for name, group in groups.items():
        if not group:
            continue
        outcomes = [row["outcome"] for row in group]
        win_rate, se = mean_and_se(outcomes)
        differences = [row["policy_length"] - row["base_length"] for row in group]
        metrics.update({
            f"{name}/win_rate": win_rate,
            f"{name}/win_rate_se": se,
            f"{name}/lc_win_rate": length_controlled_win_rate(outcomes, differences),
            f"{name}/mean_length": mean_and_se([row["policy_length"] for row in group])[0],
            f"{name}/base_mean_length": mean_and_se([row["base_length"] for row in group])[0],
            f"{name}/same_as_base": mean_and_se([float(row["policy"] == row["base"]) for row in group])[0],
            f"{name}/rows": float(len(group)),
        })  # fmt: skip
    return metrics


def report(metrics: dict[str, float], title: str, judge: str) -> str:
    """A markdown summary of `summarise`'s metrics."""
    lines = [f"## {title}", ""]
    if "gsm8k/accuracy" in metrics:
        lines += [
            f"- GSM8K (greedy, final number): {100 * metrics['gsm8k/accuracy']:.1f} % "
            f"± {100 * metrics['gsm8k/accuracy_se']:.1f} of {int(metrics['gsm8k/rows'])} questions "
            f"(starting policy {100 * metrics['gsm8k/base_accuracy']:.1f} %)",
        ]
    names = [key.split("/")[0] for key in metrics if key.endswith("/win_rate")]
    if names:
        lines += [
            "",
            f"Against the starting policy, judged by `{judge}` (ties count 1/2; lengths in characters):",
            "",
            "| prompts | rows | win rate | length-controlled | mean length | starting policy's | same answer |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name in names:
            lines.append(
                f"| {name} | {int(metrics[f'{name}/rows'])} | {100 * metrics[f'{name}/win_rate']:.1f} "
                f"± {100 * metrics[f'{name}/win_rate_se']:.1f} | {100 * metrics[f'{name}/lc_win_rate']:.1f} | "
                f"{metrics[f'{name}/mean_length']:.0f} | {metrics[f'{name}/base_mean_length']:.0f} | "
                f"{100 * metrics[f'{name}/same_as_base']:.0f} % |"
            )
    return "\n".join(lines) + "\n"


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows, in rank order (the rows themselves under one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    gathered: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    return [row for part in gathered for row in part or []]


def _cache_key(name: str, max_new_tokens: int, prompt: list[int]) -> str:
    digest = hashlib.sha256(json.dumps(prompt).encode()).hexdigest()[:24]
    return f"{name}|{max_new_tokens}|{digest}"


def _read_cache(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    cached = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a crash: that answer is generated again
            continue
        cached[row["key"]] = row["answer"]
    return cached


def _append_cache(path: Path | None, new: dict[str, str]) -> None:
    if path is None or not new:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)  # else the first new answer would join a crash's unfinished line and be lost with it
    with open(path, "a") as file:
        file.writelines(
            json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n" for key, answer in new.items()
        )


def no_grad_generate(model, tokenizer, batch_size: int) -> Generate:
    """A `Generate` of `model`'s greedy answers."""
    from rmrouter.evaluation.generate import greedy_responses

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        with torch.no_grad():
            return greedy_responses(model, tokenizer, prompts, max_new_tokens, batch_size)

    return generate
