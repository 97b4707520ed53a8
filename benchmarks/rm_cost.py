"""What each RM of a shipped set's pool costs per call: seconds per pair, each RM timed alone on the same pairs.

    python benchmarks/rm_cost.py --behaviour rmrouter/shipped/behaviour_large --pairs 64 --output docs/rm_cost.md

A routed pair calls one RM, so its cost is that RM's time on its own: each RM is timed in a pool built afresh for
it (the collection's per-RM seconds, in the set's manifest, charge an encoder the learned heads share to the first
head that runs it, so the others look free there). The pairs are a seeded sample of the set's pairs, scored in
batches as the collection does, in the precision the collection recorded; model loading and one warm-up batch of
other pairs are not timed. Writes the table and a JSON of seconds per pair (`--json`, default beside the output) for
the cost frontier (`benchmarks/cost_frontier.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from common import write_report

from rmrouter.behaviour.collect import load_pairs
from rmrouter.behaviour.shipped import read_manifest, shipped_pool, shipped_sources
from rmrouter.data.records import PreferenceRecord

Pairs = list[PreferenceRecord]


def sample(pairs: Pairs, count: int, seed: int) -> tuple[Pairs, Pairs]:
    """`count` pairs to time and as many others to warm up on, drawn without replacement."""
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pairs[i] for i in order[:count]], [pairs[i] for i in order[count : 2 * count]]


def seconds_per_pair(folder: Path, name: str, timed: list[PreferenceRecord], warm: list[PreferenceRecord],
                     batch_size: int) -> float:  # fmt: skip
    """RM `name` alone, in a pool of its own: seconds per pair over `timed`, after one warm-up batch of `warm`."""
    pool = shipped_pool(folder)
    rm = next(rm for rm in pool.reward_models if rm.name == name)

    def score(pairs: list[PreferenceRecord]) -> None:
        with torch.inference_mode():
            pool.score_pairs(rm, [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs],
                             [p.reference for p in pairs])  # fmt: skip

    score(warm[:batch_size])
    started = time.perf_counter()
    for start in range(0, len(timed), batch_size):
        score(timed[start : start + batch_size])
    return (time.perf_counter() - started) / len(timed)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviour", type=Path, default=Path("rmrouter/shipped/behaviour_large"))
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("docs/rm_cost.md"))
    parser.add_argument("--json", type=Path, default=None, help="default: the output with .json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_flush_denormal(True)  # as every command runs (rmrouter.commands.prepare_process)
    manifest = read_manifest(args.behaviour)
    collection = manifest["runs"][0]
    pairs = load_pairs(shipped_sources(args.behaviour))
    timed, warm = sample(pairs, args.pairs, args.seed)
    names = manifest["rm_names"]
    costs = {name: seconds_per_pair(args.behaviour, name, timed, warm, args.batch_size) for name in names}
    collected = {name: seconds / collection["pairs"] for name, seconds in collection["seconds"].items()}
    rows = [
        f"| {name} | {collection['dtypes'].get(name, 'none')} | {costs[name]:.4f} | "
        f"{1 / costs[name] if costs[name] > 0 else float('inf'):.1f} | {collected.get(name, float('nan')):.4f} |"
        for name in manifest["rm_names"]
    ]
    notes = (
        f"\nPool: `{args.behaviour}`'s ({len(manifest['rm_names'])} RMs); {args.pairs} of its pairs (seed "
        f"{args.seed}), batches of {args.batch_size}, each RM timed alone in a pool built for it, in the precision its "
        "collection recorded. The last column is the collection's own per-RM seconds over its pairs, where RMs that "
        "share an encoder are charged once (to its first user)."
    )
    header = ["| RM | weights | seconds per pair | pairs per second | in the collection (seconds per pair) |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    write_report(args.output, "Reward-model cost per call", notes, "\n".join([*header, *rows]))
    json_path = args.json or args.output.with_suffix(".json")
    json_path.write_text(json.dumps({"pool": str(args.behaviour), "seconds_per_pair": costs}, indent=1) + "\n")
    return costs


if __name__ == "__main__":
    main()
