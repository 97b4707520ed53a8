"""Routing under drift: every router on streams where the RMs' reliability changes, built from real held-out pairs.

    python benchmarks/routing_drift.py --behaviour rmrouter/shipped/behaviour_large \
        --priors checkpoints/offline_router_seeds_large --task-priors checkpoints/offline_router_task_seeds_large \
        --seeds 0 1 2 3 4 --output docs/routing_drift.md

The pairs are those of the routing benchmark's stream (`benchmarks/routing_benchmark.py`): the `test` and `ood` rows
of the offline router's split, which no prior trained on. Four streams are built from them
(`rmrouter.simulation.drift`), each on a rule stated in the report: `stationary` (reshuffled passes: nothing drifts),
`quality` (AlpacaEval pairs as an improving policy would make them), `task_mix` (math-heavy, then chat-heavy) and
`degradation` (the RM the static lookup sends most pairs to becomes a coin from the middle on). Every router of
`METHODS` runs on each at fidelity (a) `oracle` and (b) `log_linear_dpo` (as the routing benchmark builds them, with
the seed's priors); routers whose labels never read a reward run once, their (a) run standing for (b), and the
windowed lookup always learns from the oracle's right-or-wrong (the report marks it). Each run is kept under
`--runs-dir` and reused while its stream, router, prior and length are the same, so an interrupted run resumes;
`drift_report.py` writes the report and a PNG per stream.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from drift_report import write_drift_report
from routing_benchmark import Benchmark, add_stream_arguments, file_digest

from rmrouter.simulation import OracleLearner, PairStream, run_stream
from rmrouter.simulation.drift import DriftStream, quality_drift, rm_degradation, task_mix_drift
from rmrouter.simulation.windowed_lookup import WindowedLabelRouter

log = logging.getLogger("routing_drift")
FIDELITIES = ("oracle", "log_linear_dpo")
PAPER = "bayesian.yaml+bayesian_variants/paper_form.yaml"
NO_ONLINE = "bayesian.yaml+bayesian_variants/no_online_updates.yaml"
# (key, label, router config, overrides); `forgetting: True` is replaced by the factor of `--half-life`.
METHODS: list[tuple[str, str, str | None, dict[str, Any]]] = [
    ("single_best", "best single RM (on train)", "single.yaml", {}),
    ("majority", "majority vote (all RMs)", "majority.yaml", {}),
    ("data_label", "static lookup (routing by data label)", None, {}),
    ("windowed", "windowed lookup (oracle feedback)", None, {}),
    ("laser", "LASER", "laser.yaml", {}),
    ("bayesian_paper", "BayesianRouter, the paper's form", PAPER, {}),
    ("bayesian_paper_forget", "BayesianRouter, the paper's form, forgetting", PAPER, {"forgetting": True}),
    ("no_online", "BayesianRouter - online updates", NO_ONLINE, {}),
    ("task", "TaskBayesianRouter", "task_bayesian.yaml", {}),
    ("task_forget", "TaskBayesianRouter, forgetting", "task_bayesian.yaml", {"forgetting": True}),
    ("task_forget_prior", "TaskBayesianRouter, forgetting toward the prior", "task_bayesian.yaml",
     {"forgetting": True, "forget_toward": "prior"}),
    ("task_no_online", "TaskBayesianRouter - online updates", "task_bayesian.yaml", {"online_updates": False}),
]  # fmt: skip
# Routers whose labels never depend on the losses they observe (or, the windowed lookup, on anything but the oracle).
ORACLE_ONLY = ("single_best", "majority", "data_label", "windowed", "no_online", "task_no_online")
STREAMS = ("stationary", "quality", "task_mix", "degradation")


def forgetting_factor(half_life_pairs: int, batch_size: int) -> float:
    """The per-step factor `g` under which a reward's weight halves every `half_life_pairs` pairs."""
    return 0.5 ** (batch_size / half_life_pairs)


def lookup_rm(bench: Benchmark) -> int:
    """The RM the static lookup sends the most held-out pairs to: the one a deployed lookup leans on, and so the one a
    policy would learn to exploit (the degradation stream's RM)."""
    stream = bench.stream
    chosen = bench.data_label.route(stream.domains, stream.sources, stream.eligible)
    return int(torch.bincount(chosen[chosen >= 0], minlength=len(bench.rm_names)).argmax())


def build_streams(bench: Benchmark, args: argparse.Namespace) -> dict[str, PairStream]:
    held, names, count = bench.stream.records, bench.rm_names, len(bench.rm_names)
    length = args.phase_pairs * 2
    return {
        "stationary": bench.stream,
        "quality": DriftStream(held, names, partial(quality_drift, held, count, args.phase_pairs)),
        "task_mix": DriftStream(held, names, partial(task_mix_drift, held, count, args.phase_pairs)),
        "degradation": DriftStream(
            held, names, partial(rm_degradation, held, count, lookup_rm(bench), length, args.phase_pairs, 0.5)
        ),
    }


def stream_length(stream: PairStream, args: argparse.Namespace) -> int:
    if isinstance(stream, DriftStream):
        return len(stream.schedule(0).order)
    return 2 * args.phase_pairs


def router(bench: Benchmark, key: str, config: str | None, overrides: dict[str, Any], seed: int, args):
    if key == "windowed":
        routing = WindowedLabelRouter(bench.rm_names, bench.data_label, args.window_pairs, min(10, args.window_pairs))
        return routing, {"window": args.window_pairs, "min_pairs": routing.min_pairs}
    overrides = dict(overrides)
    if overrides.get("forgetting") is True:
        overrides["forgetting"] = forgetting_factor(args.half_life, args.batch_size)
    return bench.router(key, config, overrides, seed)


def identity(name: str, stream: PairStream, fidelity: str, key: str, router_args: dict, pairs: int, seed: int, args):
    order = stream.order(pairs, seed)
    flipped = stream.schedule(seed).flipped.nonzero().tolist() if isinstance(stream, DriftStream) else []
    served = "\n".join(stream.records[int(i)].pair.id for i in order) + json.dumps(flipped)
    return {
        "stream": name, "served": hashlib.sha256(served.encode()).hexdigest()[:16], "rm_names": stream.rm_names,
        "fidelity": fidelity, "method": key, "router": router_args, "prior": file_digest(router_args.get("prior_path")),
        "pairs": pairs, "batch_size": args.batch_size, "seed": seed,
    }  # fmt: skip


def run_one(bench, args, name: str, stream: PairStream, fidelity: str, method, seed: int) -> dict[str, Any]:
    key, _, config, overrides = method
    path = args.runs_dir / name / fidelity / key / f"seed_{seed}.json"
    pairs = stream_length(stream, args)
    built, router_args = router(bench, key, config, overrides, seed, args)
    wanted = json.loads(json.dumps(identity(name, stream, fidelity, key, router_args, pairs, seed, args)))
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("identity") == wanted:
            return saved
        log.warning("%s: saved for another stream, router, prior or length: run again", path)
    learner = OracleLearner() if fidelity == "oracle" else bench.learner(fidelity, seed)
    started = time.perf_counter()
    stream_log = run_stream(built, stream, learner, pairs, args.batch_size, seed, progress=True)
    result = {"identity": wanted, "router": router_args, "seconds": time.perf_counter() - started,
              "log": stream_log.to_dict()}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    log.info("%s %s %s seed %d: accuracy %.3f", name, fidelity, key, seed, stream_log.right.double().mean())
    return result


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_stream_arguments(parser)
    parser.add_argument("--streams", nargs="+", choices=STREAMS, default=list(STREAMS))
    parser.add_argument("--fidelities", nargs="+", choices=FIDELITIES, default=list(FIDELITIES))
    parser.add_argument("--methods", nargs="+", default=[key for key, *_ in METHODS])
    parser.add_argument("--phase-pairs", type=int, default=1200, help="pairs per phase (quality has three, others two)")
    parser.add_argument("--window-pairs", type=int, default=200, help="pairs per report window and lookup window")
    parser.add_argument("--half-life", type=int, default=200, help="forgetting: pairs until a reward weighs half")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=10.0, help="SGD step of the log-linear DPO policy")
    parser.add_argument("--encoder", default=None, help="replace every text encoder (tests: a tiny one)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: checkpoints/<the output's stem>")
    parser.add_argument("--output", type=Path, default=Path("docs/routing_drift.md"))
    parser.add_argument("--plots-dir", type=Path, default=None, help="PNG folder; default: beside --output")
    args = parser.parse_args(argv)
    # what routing_benchmark.Benchmark reads besides
    args.lm_config, args.lm_policy = None, None
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, dict[int, dict[str, Any]]]]]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.runs_dir is None:
        args.runs_dir = Path("checkpoints") / args.output.stem
    unknown = sorted(set(args.methods) - {key for key, *_ in METHODS})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {[key for key, *_ in METHODS]}")
    bench = Benchmark(args)
    streams = {name: stream for name, stream in build_streams(bench, args).items() if name in args.streams}
    runs: dict[str, dict[str, dict[str, dict[int, dict[str, Any]]]]] = {}
    for name, stream in streams.items():
        for fidelity in args.fidelities:
            for method in [method for method in METHODS if method[0] in args.methods]:
                key = method[0]
                if fidelity != "oracle" and key in ORACLE_ONLY and "oracle" in args.fidelities:
                    continue  # its labels are those of its oracle run
                for seed in args.seeds:
                    result = run_one(bench, args, name, stream, fidelity, method, seed)
                    runs.setdefault(name, {}).setdefault(fidelity, {}).setdefault(key, {})[seed] = result
    write_drift_report(args, bench, streams, runs, {key: label for key, label, *_ in METHODS}, argv)
    return runs


if __name__ == "__main__":
    main()
