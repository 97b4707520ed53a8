"""Pair-encoding throughput of the offline router: pairs/s of `PairEncoder` in a training step, in three modes.

1. Frozen encoder, cache cold: the first epoch of a frozen-encoder fit. `forward(..., use_cache=True)` on an empty
   cache, so the encoder runs (without gradients) on both texts of every pair and fills the cache.
2. Frozen encoder, cache warm: every later epoch. The same pairs again, with `use_cache=True`: the embeddings come
   from the cache and only the MLP runs.
3. Fine-tuned encoder (`freeze_encoder=False`, train mode, dropout on): the encoder runs on every text with
   gradients, every epoch; there is no cache for an encoder that changes.

Each step is what a training step does to the pair encoder: `h = encoder(prompts, chosen, rejected)`, a dummy loss
`h.sum()`, `backward()`, and `zero_grad()` (no optimiser step). In the frozen modes the backward pass reaches the MLP
only. A step takes `--batch-size` pairs, that is twice as many texts, which the text encoder runs in passes of its own
batch size (16 texts). Pairs come round-robin from the vendored GSM8K solution pairs, HH-RLHF harmless pairs and
AlpacaEval pairs. Model loading and one warm-up batch per
model are not timed; each mode times `--repeats` epochs over the same pairs and reports the fastest (the cold
mode empties the cache before each). On CPU, denormal floats are flushed to zero unless `--keep-denormals` is
given, as in `benchmarks/rm_throughput.py`.

    .venv/bin/python benchmarks/pair_encoding.py --pairs 64 --batch-size 16 --device cpu --output pair_encoding.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import PAIRS_ORIGIN, real_pairs, write_report

from rmrouter.data.records import Message
from rmrouter.models.pair_encoder import PairEncoder

Pair = tuple[list[Message], str, str]  # prompt, chosen, rejected


def load_pairs(count: int) -> tuple[list[Pair], str]:
    """`count` real pairs as tuples, and a description of where they came from."""
    return [(record.prompt, record.chosen, record.rejected) for record in real_pairs(count)], PAIRS_ORIGIN


def batches(pairs: list[Pair], size: int) -> list[list[Pair]]:
    return [pairs[start : start + size] for start in range(0, len(pairs), size)]


def training_step(encoder: PairEncoder, batch: list[Pair], use_cache: bool) -> None:
    """Forward, dummy loss `h.sum()`, backward and zero_grad: the pair encoder's share of a training step."""
    prompts, chosen, rejected = (list(column) for column in zip(*batch, strict=True))
    h = encoder(prompts, chosen, rejected, use_cache=use_cache)
    h.sum().backward()
    encoder.zero_grad(set_to_none=True)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_epoch(
    encoder: PairEncoder, steps: list[list[Pair]], use_cache: bool, device: str, cold: bool
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for one pass of training steps over `steps`.

    `cold` empties the cache first (not timed). CPU seconds well under wall seconds times the torch threads mean that
    other work on the machine took cores from the benchmark.
    """
    if cold:
        encoder.cache.clear()
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for batch in steps:
        training_step(encoder, batch, use_cache)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def fastest_epoch(
    repeats: int, encoder: PairEncoder, steps: list[list[Pair]], use_cache: bool, device: str, cold: bool
) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `repeats` timed epochs: the one least disturbed by other work."""
    times = [time_epoch(encoder, steps, use_cache, device, cold) for _ in range(repeats)]
    print("  epochs (wall s):", " ".join(f"{wall:.3f}" for wall, _ in times), flush=True)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="all-minilm-l6-v2", help="text encoder's model name (model store)")
    parser.add_argument("--pooling", default="mean", choices=["mean", "last_token"], help="token pooling")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per prompt+response text")
    parser.add_argument("--hidden-size", type=int, default=64, help="pair MLP's hidden width (configs/offline_router)")
    parser.add_argument("--output-size", type=int, default=32, help="size of h (embedding_size in the config)")
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs per timed epoch (2 texts each)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per training step")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per mode; the fastest is reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MLP's initialisation and of dropout")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table to this file")
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero on CPU")
    args = parser.parse_args()
    torch.set_flush_denormal(not args.keep_denormals)
    pairs, origin = load_pairs(args.pairs)
    steps = batches(pairs, args.batch_size)
    warm_up = steps[0]

    def build(freeze_encoder: bool) -> PairEncoder:
        torch.manual_seed(args.seed)
        encoder = PairEncoder(
            args.encoder, args.pooling, args.max_length, args.hidden_size, args.output_size, freeze_encoder
        )
        return encoder.to(args.device).train()  # train(): a frozen encoder stays in eval mode, a tuned one does not

    rows = []

    def report(mode: str, seconds: tuple[float, float], encoded: str) -> None:
        wall, cpu = seconds
        rate = len(pairs) / wall
        rows.append(f"| {mode} | {len(pairs)} | {len(steps)} | {encoded} | {wall:.3f} | {cpu:.3f} | {rate:.1f} |")
        print(rows[-1], flush=True)

    frozen = build(freeze_encoder=True)
    training_step(frozen, warm_up, use_cache=False)  # warm-up without filling the cache
    assert len(frozen.cache) == 0
    seconds = fastest_epoch(args.repeats, frozen, steps, True, args.device, cold=True)
    report("frozen encoder, cache cold (first epoch)", seconds, str(len(frozen.cache)))
    training_step(frozen, warm_up, use_cache=True)  # warm-up of the cache-hit path
    cached = len(frozen.cache)
    seconds = fastest_epoch(args.repeats, frozen, steps, True, args.device, cold=False)
    assert len(frozen.cache) == cached, "a warm epoch embedded new texts"
    report("frozen encoder, cache warm (later epochs)", seconds, "0")
    del frozen

    tuned = build(freeze_encoder=False)
    training_step(tuned, warm_up, use_cache=False)
    seconds = fastest_epoch(args.repeats, tuned, steps, False, args.device, cold=False)
    report("fine-tuned encoder (train mode, backward through encoder)", seconds, str(2 * len(pairs)))
    del tuned

    threads = torch.get_num_threads()
    table = "\n".join(
        [
            f"Pairs: {origin}; encoder {args.encoder}, pooling {args.pooling}, max length {args.max_length}, MLP "
            f"{args.hidden_size}/{args.output_size}; device {args.device}, batch size {args.batch_size} pairs, "
            f"{threads} torch threads, denormals {'kept' if args.keep_denormals else 'flushed'}; fastest of "
            f"{args.repeats} timed epochs per mode.",
            "",
            "| mode | pairs | steps | texts encoded per epoch | seconds | CPU seconds | pairs/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print("\n" + table)
    if args.output is not None:
        write_report(
            args.output,
            "Offline router: pair-encoding throughput",
            "Model loading and one warm-up batch per model are not timed; each mode reports the fastest of its timed "
            "epochs (the cold mode empties the cache before each). Each step is a training step of the pair "
            "encoder alone: forward, a dummy loss `h.sum()`, backward, zero_grad (no optimiser step); in the frozen "
            "modes the backward pass reaches the MLP only. *Texts encoded per epoch* counts the texts the encoder ran "
            "on in a timed epoch (two per pair, fewer when texts repeat). *CPU seconds* is the process's CPU time in "
            "that epoch: when it is well under *seconds* times the torch threads, other work on the machine took cores "
            "from the benchmark.",
            table,
        )


if __name__ == "__main__":
    main()
