"""The reward server's throughput: routed rewards against calling every RM of the pool, on the same requests.

    python benchmarks/serving.py --behaviour rmrouter/shipped/behaviour_large --output docs/serving.md

A real server (`rmrouter.serving.server`, uvicorn on localhost) serves the large set's pool (the default pool's RMs,
its learned heads shipped with the set) twice: routed, each prompt group to one RM by its data label (the lookup
fitted on the offline router's train split, `configs/serve.yaml`'s router), and as the ensemble, every RM scoring
every completion (`MajorityVoteRouter`: the group's reward is the mean of the RMs' z-scores). Each request is
`--pairs-per-request` held-out pairs (a seeded sample of the `test` split) sent as Online DPO sends them, two
completions per prompt; `--concurrency` clients send `--requests` requests. The first request of each server loads
the models and is not timed. Besides speed, each pair's rewards are checked against the human preference: a pair is
right where the preferred completion gets the higher reward (a tie counts half, no reward wrong). With `--litserve`
the routed scorer is also served by LitServe (`serving_litserve.py`) on the same requests, to compare the two serving
libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch
import yaml
from common import write_report

from rmrouter.behaviour.shipped import shipped_pool
from rmrouter.data.behaviour_datamodule import BehaviourDataModule
from rmrouter.data.behaviour_split import split_named_by
from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.baseline_routers import DataLabelRouter, MajorityVoteRouter
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.serving.scorer import RoutedScorer
from rmrouter.serving.server import BackgroundServer, build_app, free_port
from rmrouter.stats import paired_test


def table_row(name: str, result: dict, requests: int, calls: str) -> str:
    """A scorer's row: its speed over the rounds, calls, declared cost and accuracy (kept in `result["right"]`)."""
    seconds = statistics.median(result["seconds"])
    right = result["right"] = [c for answer in result["answers"] for c in credit(answer["rewards"])]
    cost = sum((answer["cost"] or 0.0) for answer in result["answers"]) / len(right)
    return (f"| {name} | {requests / seconds:.2f} | {spread(result['seconds'], len(right))} | "
            f"{seconds / len(right):.3f} | {calls} | {cost:.4f} | {100 * sum(right) / len(right):.1f} |")  # fmt: skip


def spread(seconds: list[float], pairs: int) -> str:
    """Pairs per second: the median round's, and the slowest and fastest rounds'."""
    rates = sorted(pairs / s for s in seconds)
    return f"{pairs / statistics.median(seconds):.2f} ({rates[0]:.2f}-{rates[-1]:.2f})"


def requests_of(pairs, per_request: int) -> list[dict]:
    """`/score` payloads: each pair as one prompt with its two completions, preferred first."""
    payloads = []
    for start in range(0, len(pairs) - per_request + 1, per_request):
        chunk = pairs[start : start + per_request]
        payloads.append({
            "prompts": [p.prompt for p in chunk for _ in range(2)],
            "completions": [text for p in chunk for text in (p.chosen, p.rejected)],
            "domains": [p.domain for p in chunk for _ in range(2)],
            "references": [p.reference for p in chunk for _ in range(2)],
        })  # fmt: skip
    return payloads


def credit(rewards: list[float | None]) -> list[float]:
    """Per pair (preferred first): 1 if the preferred completion has the higher reward, 0.5 on a tie, else 0."""
    out = []
    for first, second in zip(rewards[::2], rewards[1::2], strict=True):
        if first is None or second is None:
            out.append(0.0)
        else:
            out.append(1.0 if first > second else 0.5 if first == second else 0.0)
    return out


def timed_rounds(url: str, payloads: list[dict], concurrency: int, repeats: int) -> tuple[list[float], list[dict]]:
    """Sends the payloads to `url`'s `/score` `repeats` times with `concurrency` clients: each round's seconds, and
    the last round's answers."""

    def send(payload: dict) -> dict:
        answer = requests.post(f"{url}/score", json=payload, timeout=600)
        answer.raise_for_status()
        return answer.json()

    seconds, answers = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as clients:
            answers = list(clients.map(send, payloads))
        seconds.append(time.perf_counter() - started)
    return seconds, answers


def run(scorer: RoutedScorer, payloads: list[dict], concurrency: int, repeats: int) -> dict:
    """Serves `scorer` (FastAPI), sends the payloads `repeats` times with `concurrency` clients; timings, answers."""
    with BackgroundServer(build_app(scorer, max_request_bytes=64 << 20)) as server:
        requests.post(f"{server.url}/score", json=payloads[0], timeout=600).raise_for_status()  # loads the models
        warm_calls = sum(scorer.calls.values())
        seconds, answers = timed_rounds(server.url, payloads, concurrency, repeats)
    calls = (sum(scorer.calls.values()) - warm_calls) / repeats
    return {"seconds": seconds, "answers": answers, "calls": calls}


def run_litserve(args: argparse.Namespace, payloads: list[dict]) -> dict:
    """The routed scorer under LitServe instead (`serving_litserve.py`, its own process), on the same requests."""
    import subprocess

    port = free_port()
    worker = Path(__file__).with_name("serving_litserve.py")
    command = [sys.executable, str(worker), "--port", str(port), "--behaviour", str(args.behaviour),
               "--offline-config", str(args.offline_config), "--costs", str(args.costs)]  # fmt: skip
    # its own process group: LitServe starts worker processes, which must stop with it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LitServe did not start: {' '.join(command)}")
            time.sleep(0.5)
        requests.post(f"{url}/score", json=payloads[0], timeout=600).raise_for_status()  # loads the models
        seconds, answers = timed_rounds(url, payloads, args.concurrency, args.repeats)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    return {"seconds": seconds, "answers": answers}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviour", type=Path, default=Path("rmrouter/shipped/behaviour_large"))
    parser.add_argument("--offline-config", type=Path, default=Path("configs/offline_router.yaml"))
    parser.add_argument("--costs", type=Path, default=Path("docs/rm_cost.json"))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--pairs-per-request", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="which test pairs are sent")
    parser.add_argument("--litserve", action="store_true", help="the routed scorer under LitServe too")
    parser.add_argument("--output", type=Path, default=Path("docs/serving.md"))
    return parser.parse_args(argv)


def default_pool(behaviour: Path, rm_names: list[str], costs: dict[str, float]) -> RewardModelPool:
    """The default pool's RMs as the shipped set holds them (its learned heads), with their declared costs."""
    shipped = shipped_pool(behaviour)
    return RewardModelPool([rm for rm in shipped.reward_models if rm.name in rm_names],
                           costs={name: costs[name] for name in rm_names})  # fmt: skip


def behaviour_data(behaviour: Path, offline_config: Path) -> tuple[list[str], BehaviourDataModule, DataLabelRouting]:
    """The default pool's RM names, the set's splits, and the lookup fitted on its train split."""
    rm_names = yaml.safe_load(offline_config.read_text())["data"]["init_args"]["rm_names"]
    data = BehaviourDataModule(str(behaviour), rm_names, split_named_by(offline_config))
    data.setup("fit")
    train = data.splits["train"]
    return rm_names, data, DataLabelRouting.fit(train.domains, train.sources, train.agree.bool(), train.eligible)


def main(argv: list[str] | None = None) -> dict:
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_flush_denormal(True)  # as every command runs (rmrouter.commands.prepare_process)
    costs = json.loads(args.costs.read_text())["seconds_per_pair"]
    rm_names, data, lookup = behaviour_data(args.behaviour, args.offline_config)
    test = data.splits["test"]
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed)).tolist()
    pairs = [test.records[i].pair for i in order[: args.requests * args.pairs_per_request]]  # a seeded sample
    payloads = requests_of(pairs, args.pairs_per_request)
    pool = default_pool(args.behaviour, rm_names, costs)
    routers = {"routed by data label (one RM per prompt)": DataLabelRouter(routing=lookup),
               "ensemble (every RM, mean z-score)": MajorityVoteRouter(None, seed=0)}  # fmt: skip
    rows, results = [], {}
    for name, router in routers.items():
        scorer = RoutedScorer(pool, router)
        result = run(scorer, payloads, args.concurrency, args.repeats)
        results[name] = result
        completions = sum(len(p["completions"]) for p in payloads)
        rows.append(table_row(name, result, len(payloads), f"{result['calls'] / completions:.2f}"))
    header = ["| scorer | requests per second | pairs per second (min-max over rounds) | seconds per pair | "
              "RM calls per completion | "
              "declared cost per pair (s) | preferred completion rewarded higher (%) |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    notes = (
        f"\nPool: the default pool's RMs `{rm_names}` from `{args.behaviour}` (its shipped heads), costs declared "
        f"from `{args.costs}`. {len(payloads)} requests of {args.pairs_per_request} held-out `test` pairs (seed "
        f"{args.seed}; two completions per prompt), sent by {args.concurrency} concurrent clients to a server on "
        f"localhost; the median of {args.repeats} rounds, after one untimed request that loads the models. Accuracy: "
        f"{len(pairs)} pairs."
    )
    if args.litserve:
        result = results["litserve"] = run_litserve(args, payloads)
        rows.append(table_row("routed by data label, served by LitServe", result, len(payloads), "1.00"))
    routed, ensemble = (results[name]["right"] for name in routers)
    test = paired_test(routed, ensemble)
    times = [statistics.median(results[name]["seconds"]) for name in routers]
    verdict = (f"\nRouted against the ensemble on the same pairs: {times[1] / times[0]:.1f}x the pairs per second; "
               f"preferred completion rewarded higher {100 * test.mean:+.1f} ± {100 * test.se:.1f} points "
               f"(paired, {test.verdict()}).")  # fmt: skip
    if args.litserve:
        ours, theirs = results[next(iter(routers))]["seconds"], results["litserve"]["seconds"]
        overlap = min(ours) <= max(theirs) and min(theirs) <= max(ours)
        ranges = "overlap: no difference beyond the spread" if overlap else "do not overlap"
        verdict += (" The same routed scorer served by LitServe instead of rmrouter's FastAPI app: "
                    f"{statistics.median(ours) / statistics.median(theirs):.2f}x its pairs per second (medians; the "
                    f"rounds' ranges {ranges}).")  # fmt: skip
    write_report(args.output, "Reward server throughput", notes, "\n".join([*header, *rows, verdict]))
    return results


if __name__ == "__main__":
    main()
