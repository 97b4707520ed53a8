"""Reward-model throughput: seconds to score N real preference pairs with each kind of RM.

Pairs come round-robin from the vendored GSM8K solution pairs, HH-RLHF harmless pairs and AlpacaEval pairs. Each RM
scores both sides of every pair in one `score` call, as `RewardModelPool.score_pairs` does. Rows without a reference
get the chosen answer as their reference so that reference-based RMs do the full work (timing only). Model loading
and one warm-up call are not timed. On CPU, denormal floats are flushed to zero unless `--keep-denormals` is given:
SmolLM2's activations produce denormals and run about 2.5x slower without the flush.

    .venv/bin/python benchmarks/rm_throughput.py --pairs 64 --batch-size 8 --device cpu --output rm_throughput.md

`--dtypes float32 bfloat16` times each model RM once per weights' dtype (the rule-based RMs have none).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from common import PAIRS_ORIGIN, real_pairs, write_report

from rmrouter.data.records import Message
from rmrouter.reward_models import (
    GSM8KVerifierRewardModel,
    LengthRewardModel,
    LikelihoodRewardModel,
    ReferenceSimilarityRewardModel,
    RewardModel,
    SequenceClassifierRewardModel,
)

Pair = tuple[list[Message], str, str, str]  # prompt, chosen, rejected, reference


def load_pairs(count: int) -> tuple[list[Pair], str]:
    """`count` real pairs as tuples, and a description of where they came from."""
    return [
        (record.prompt, record.chosen, record.rejected, record.reference or record.chosen)
        for record in real_pairs(count)
    ], PAIRS_ORIGIN


@contextmanager
def smollm2_classifier_folder() -> Iterator[str]:
    """SmolLM2-135M-Instruct's weights under a fresh one-output classification head (random: timing only)."""
    from transformers import AutoModelForSequenceClassification

    from rmrouter.models.store import load_tokenizer, resolve_model

    source = resolve_model("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory(prefix="rmrouter-bench-") as folder:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
        model.save_pretrained(folder)
        load_tokenizer(source).save_pretrained(folder)
        del model
        yield folder


def time_rm(build: Callable[[], RewardModel], pairs: list[Pair], device: str) -> tuple[float, torch.Tensor]:
    """(seconds for one `score` call over both sides of every pair, the scores: chosen sides, then rejected)."""
    rm = build().to(device)
    prompts = [pair[0] for pair in pairs] * 2
    responses = [pair[1] for pair in pairs] + [pair[2] for pair in pairs]
    references = [pair[3] for pair in pairs] * 2
    rm.score(prompts[:2], responses[:2], references[:2])  # warm-up: kernels, allocator, lazy initialisation
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    scores = rm.score(prompts, responses, references)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, scores


MODEL_FREE = ("length", "verifier")  # no weights, so no dtype


def build_rm(kind: str, model_args: dict, classifier_folder: str | None) -> RewardModel:
    """One RM of the kind timed under `kind`; `model_args` go to the RMs that run a model."""
    if kind == "length":
        return LengthRewardModel("length")
    if kind == "verifier":
        return GSM8KVerifierRewardModel("gsm8k-verifier")
    if kind == "similarity":
        return ReferenceSimilarityRewardModel("minilm-similarity", **model_args)
    if kind == "likelihood":
        return LikelihoodRewardModel("smollm2-likelihood", **model_args)
    if kind == "likelihood-shared-prompts":
        return LikelihoodRewardModel("smollm2-likelihood", **model_args, share_prompts=True)
    return SequenceClassifierRewardModel("smollm2-classifier", classifier_folder, **model_args)


def prompt_sharing(scores: dict, dtypes: list[str]) -> list[str]:
    """The likelihood RM's prompt cache against whole rows, per dtype: speed-up, score and margin differences, and
    how often the two give a pair the same preferred side."""
    lines = []
    for dtype in dtypes:
        if ("likelihood", dtype) not in scores or ("likelihood-shared-prompts", dtype) not in scores:
            continue
        (shared_s, shared), (whole_s, whole) = scores["likelihood-shared-prompts", dtype], scores["likelihood", dtype]
        half = len(shared) // 2
        margins = shared[:half] - shared[half:], whole[:half] - whole[half:]
        both = margins[0].isfinite() & margins[1].isfinite()
        agree = (margins[0][both].sign() == margins[1][both].sign()).float().mean().item()
        differences = (shared - whole).abs()
        lines.append(
            f"| {dtype} | {whole_s / shared_s:.2f}x | {differences[differences.isfinite()].max().item():.2g} | "
            f"{(margins[0] - margins[1]).abs()[both].max().item():.2g} | {100 * agree:.1f} % ({int(both.sum())}) |"
        )
    if not lines:
        return []
    header = [
        "",
        "The likelihood RM's prompt cache (`share_prompts: true`) against whole rows (the default), on the same pairs:",
        "",
        "| weights | speed-up | largest score difference | largest margin difference | same preferred side (pairs) |",
        "|---|---:|---:|---:|---:|",
    ]
    return header + lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs to score (2 rows each)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass of the model RMs")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], help="weights' dtypes of the model RMs to time")
    parser.add_argument("--max-length", type=int, default=1024, help="most tokens per scored row of the model RMs")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table to this file")
    parser.add_argument(
        "--only", nargs="*", default=None, help="RM kinds to run: length verifier similarity likelihood classifier"
    )
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero on CPU")
    args = parser.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)
    pairs, origin = load_pairs(args.pairs)
    descriptions = {
        "length": "LengthRewardModel (characters)",
        "verifier": "GSM8KVerifierRewardModel",
        "similarity": "ReferenceSimilarityRewardModel (all-MiniLM-L6-v2)",
        "likelihood": "LikelihoodRewardModel (SmolLM2-135M-Instruct)",
        "likelihood-shared-prompts": "LikelihoodRewardModel (SmolLM2-135M-Instruct), `share_prompts: true`",
        "classifier": "SequenceClassifierRewardModel (SmolLM2-135M, random head)",
    }
    kinds = args.only or list(descriptions)
    rows, scores = [], {}
    with smollm2_classifier_folder() if "classifier" in kinds else nullcontext() as folder:  # made once, not per dtype
        for kind in kinds:
            for dtype in ["-"] if kind in MODEL_FREE else args.dtypes:
                model_args = {"batch_size": args.batch_size, "max_length": args.max_length, "dtype": dtype}
                seconds, found = time_rm(lambda k=kind, a=model_args: build_rm(k, a, folder), pairs, args.device)
                scores[kind, dtype] = (seconds, found)
                rows.append(
                    f"| {descriptions[kind]} | {dtype} | {len(pairs)} | {seconds:.2f} | {len(pairs) / seconds:.1f} |"
                )
                print(rows[-1], f"({int(found.isfinite().sum())}/{2 * len(pairs)} rows scored)", flush=True)
    threads = torch.get_num_threads()
    table = "\n".join(
        [
            f"Pairs: {origin}; device {args.device}, batch size {args.batch_size}, max length {args.max_length} "
            f"tokens, "
            f"{threads} torch threads, denormals {'kept' if args.keep_denormals else 'flushed'}.",
            "",
            "| RM | weights | pairs | seconds | pairs/s |",
            "|---|---|---:|---:|---:|",
            *rows,
            *prompt_sharing(scores, args.dtypes),
        ]
    )
    print("\n" + table)
    if args.output is not None:
        write_report(
            args.output,
            "Reward-model scoring throughput",
            "Model loading and one warm-up call are not timed; each pair is two scored responses.",
            table,
        )


if __name__ == "__main__":
    main()
