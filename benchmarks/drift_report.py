"""The drift benchmark's report (`routing_drift.py`): per stream, every RM's accuracy per window (the drift a reader
sees before any router runs), every router's accuracy before and after the change with a paired test against the
static lookup, its recovery time, and a PNG of the per-window accuracies."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
from routing_report import commit

from rmrouter.machine import describe_machine
from rmrouter.simulation import PairStream, StreamLog
from rmrouter.simulation.drift import DriftStream
from rmrouter.simulation.metrics import signal_auroc
from rmrouter.stats import paired_test

REFERENCE = "data_label"  # what users do today: every router is compared with it
PLOTTED = ("data_label", "windowed", "bayesian_paper", "task", "task_forget", "task_forget_prior", "task_no_online")
RECOVERY_MARGIN = 0.02  # back within 2 points of the window's best RM
RULES = {
    "stationary": "The routing benchmark's stream: the held-out pairs in reshuffled passes. Nothing drifts, so a fixed "
    "lookup is optimal by construction; forgetting must cost nothing here.",
    "quality": "AlpacaEval pairs in the order an improving policy would produce them: the GPT-4-turbo reference "
    "against alpaca-7b's answers (a weak policy), then against claude-2's (a strong one), then two models' answers "
    "(a policy whose samples are close in quality). Each phase cycles through its own held-out pairs.",
    "task_mix": "The mix of kinds moves: 80 % math pairs (10 % chat, 10 % safety) in the first half, 80 % chat pairs "
    "in the second. Per-label reliabilities do not change, only their shares.",
    "degradation": "The stationary mix, in which from the middle on the RM that the static lookup sends the most "
    "held-out pairs to (`{rm}`; the RM a deployed lookup leans on, and so the one a policy would learn to exploit) "
    "has its judgement reversed on a seeded half of the pairs: a coin, whatever it was before.",
}


def logs(seeds: dict[int, dict[str, Any]]) -> dict[int, StreamLog]:
    return {seed: StreamLog.from_dict(run["log"]) for seed, run in seeds.items()}


def change_at(stream: PairStream, seed: int) -> int | None:
    """The first change point (the second phase's start), None for a stationary stream."""
    if not isinstance(stream, DriftStream):
        return None
    return stream.schedule(seed).phases[1][1]


def windows(values: torch.Tensor, size: int) -> torch.Tensor:
    """`[W, ...]` means of consecutive `size`-row windows of `values [L, ...]` (the last window may be shorter)."""
    return torch.stack([values[start : start + size].double().mean(dim=0) for start in range(0, len(values), size)])


def rm_windows(stream: PairStream, seeds: list[int], size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[W, N]` each RM's per-window accuracy and `[W]` the share some RM is right, means over seeds."""
    per_seed, ceiling = [], []
    for seed in seeds:
        if isinstance(stream, DriftStream):
            right, _ = stream.right_at(seed)
        else:
            right = stream.right[stream.order(length, seed)]
        per_seed.append(windows(right[:length], size))
        ceiling.append(windows(right[:length].any(dim=1), size))
    return torch.stack(per_seed).mean(0), torch.stack(ceiling).mean(0)


def router_windows(seeds: dict[int, dict[str, Any]], size: int) -> torch.Tensor:
    """`[W]` the router's per-window accuracy, mean over seeds."""
    return torch.stack([windows(log.right, size) for log in logs(seeds).values()]).mean(0)


def recovery(curve: torch.Tensor, best: torch.Tensor, change: int, size: int) -> int | None:
    """Pairs from the change to the end of the first window from which the router is within 2 points of the
    window's best RM; None when it never is."""
    first = change // size
    for index in range(first, len(curve)):
        if curve[index] >= best[index] - RECOVERY_MARGIN:
            return (index + 1) * size - change
    return None


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def after(seeds: dict[int, dict[str, Any]], stream: PairStream) -> dict[int, torch.Tensor]:
    """Per seed, `[P]` right or not on the pairs from the change on (every pair for a stationary stream)."""
    return {seed: log.right[change_at(stream, seed) or 0 :] for seed, log in logs(seeds).items()}


def compared(first: dict[int, dict[str, Any]], second: dict[int, dict[str, Any]], stream: PairStream):
    """The paired test of two routers' right-or-not over the pairs from the change on, every seed's pairs pooled."""
    ours, theirs = after(first, stream), after(second, stream)
    return paired_test(torch.cat([ours[s] for s in sorted(ours)]).double().tolist(),
                       torch.cat([theirs[s] for s in sorted(ours)]).double().tolist())  # fmt: skip


def router_table(runs: dict[str, dict[int, dict]], stream: PairStream, labels, best: torch.Tensor, size: int) -> str:
    """Each router's accuracy (mean ± sd over seeds), paired against the static lookup; on a drift stream also over
    the pairs from the change on, with the router's recovery time."""
    seeds = sorted(next(iter(runs.values())))
    change = change_at(stream, seeds[0])
    if change is None:
        lines = ["| router | accuracy (%) | vs static lookup (points) |", "|---|---|---|"]
    else:
        lines = ["| router | whole stream (%) | after the change (%) | after the change: vs static lookup (points) | "
                 "recovery (pairs) |", "|---|---|---|---|---|"]  # fmt: skip
    for key, seeds_runs in runs.items():
        cells = [labels[key], spread([float(log.right.double().mean()) for log in logs(seeds_runs).values()])]
        if change is not None:
            cells.append(spread([float(v.double().mean()) for v in after(seeds_runs, stream).values()]))
        if REFERENCE not in runs or key == REFERENCE:
            cells.append("")
        else:
            test = compared(seeds_runs, runs[REFERENCE], stream)
            cells.append(f"{100 * test.mean:+.1f} ± {100 * test.se:.1f} ({test.verdict()}, p = {test.p_value:.3g})")
        if change is not None:
            pairs = recovery(router_windows(seeds_runs, size), best, change, size)
            cells.append("never" if pairs is None else str(pairs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rm_table(rm_names: list[str], accuracy: torch.Tensor, ceiling: torch.Tensor, size: int, phases) -> str:
    starts = {start: name for name, start in phases}
    lines = [
        "| pairs | phase | " + " | ".join(rm_names) + " | any RM right |",
        "|---|---|" + "---|" * (len(rm_names) + 1),
    ]
    for index, row in enumerate(accuracy):
        start = index * size
        phase = next((name for first, name in sorted(starts.items(), reverse=True) if first <= start), "")
        best = int(row.argmax())
        cells = [f"**{100 * v:.1f}**" if n == best else f"{100 * v:.1f}" for n, v in enumerate(row.tolist())]
        lines.append(f"| {start}-{start + size} | {phase} | " + " | ".join(cells) + f" | {100 * ceiling[index]:.1f} |")
    return "\n".join(lines)


def plot(path: Path, title: str, rm_names, accuracy, runs_by_key, labels, size: int, changes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    x = [size * (index + 0.5) for index in range(accuracy.shape[0])]
    for n, name in enumerate(rm_names):
        axis.plot(x, 100 * accuracy[:, n].numpy(), color="0.7", linewidth=0.9, linestyle="--")
        axis.annotate(name, (x[-1], 100 * float(accuracy[-1, n])), fontsize=6, color="0.45")
    for key, seeds in runs_by_key.items():
        if key in PLOTTED:
            axis.plot(x, 100 * router_windows(seeds, size).numpy(), label=labels[key], linewidth=1.6, marker="o",
                      markersize=3)  # fmt: skip
    for change in changes:  # every phase boundary
        axis.axvline(change, color="0.3", linewidth=0.8)
    axis.set_xlabel(f"pairs routed (windows of {size})")
    axis.plot([], [], color="0.7", linewidth=0.9, linestyle="--", label="each RM alone")
    axis.set_ylabel("labelling accuracy per window (%), mean over seeds")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


GOALS = [("task", REFERENCE), ("task_forget", REFERENCE), ("task_forget_prior", REFERENCE)]
# not goals, the switches themselves: online updates against none, each form of forgetting against none
SWITCHES = [("task", "task_no_online"), ("task_forget", "task"), ("task_forget_prior", "task")]


def goals_table(runs, streams: dict[str, PairStream], size: int) -> str:
    """The issue's goals, measured at fidelity (a): on each drift stream, an online task-aware router at least 3 points
    above the static lookup after the change, recovering within 500 pairs; on the stationary stream, no significant
    loss for online updates (against none) or for forgetting (against none). On the drift streams the switches are
    compared too, without a goal."""
    lines = ["| stream | router | against | points (± se) | verdict | recovery (pairs) | goal |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, stream in streams.items():
        oracle = runs.get(name, {}).get("oracle", {})
        drifting = change_at(stream, 0) is not None
        for key, against in (GOALS + SWITCHES) if drifting else SWITCHES:
            if key not in oracle or against not in oracle:
                continue
            test = compared(oracle[key], oracle[against], stream)
            recovered, goal = "", ""
            if not drifting:
                goal = "met" if test.verdict() != "below" else "not met"
            elif against == REFERENCE:
                seeds = sorted(oracle[key])
                best = rm_windows(stream, seeds, size, len(stream.schedule(seeds[0]).order))[0].max(dim=1).values
                pairs_back = recovery(router_windows(oracle[key], size), best, change_at(stream, seeds[0]), size)
                recovered = "never" if pairs_back is None else str(pairs_back)
                above = test.mean >= 0.03 and test.verdict() == "above"
                goal = "met" if above and pairs_back is not None and pairs_back < 500 else "not met"
            lines.append(f"| {name} | {key} | {against} | {100 * test.mean:+.1f} ± {100 * test.se:.1f} | "
                         f"{test.verdict()} | {recovered} | {goal} |")  # fmt: skip
    return "\n".join(lines)


def reward_signal(seeds: dict[int, dict[str, Any]], stream: PairStream) -> str:
    """What the DPO reward lets a router see: the AUROC of `-loss` for a right label against a wrong one over the
    router's trained pairs, before and after the change (every seed's pairs pooled)."""
    parts = {"before the change": [], "after it": []} if change_at(stream, 0) is not None else {"over the stream": []}
    for seed, log in logs(seeds).items():
        trained = torch.isfinite(log.loss) & (log.preference != 0)
        change = change_at(stream, seed) or 0
        position = torch.arange(len(log.loss))
        masks = [position < change, position >= change] if len(parts) == 2 else [position >= 0]
        for values, mask in zip(parts.values(), masks, strict=True):
            values.append((log.loss[trained & mask], log.right[trained & mask]))
    cells = []
    for name, values in parts.items():
        auroc = signal_auroc(torch.cat([loss for loss, _ in values]), torch.cat([right for _, right in values]))
        cells.append(f"{name} {'n/a' if auroc is None else f'{auroc:.3f}'}")
    return ", ".join(cells)


def write_drift_report(args, bench, streams: dict[str, PairStream], runs, labels: dict[str, str], argv) -> None:
    size = args.window_pairs
    plots = args.plots_dir or args.output.with_suffix("")
    seeds = list(args.seeds)
    degraded = bench.rm_names[int(streams["degradation"].schedule(0).flipped.any(dim=0).nonzero()[0])] if (
        "degradation" in streams) else "n/a"  # fmt: skip
    command = "python benchmarks/routing_drift.py " + " ".join(argv if argv is not None else [])
    parts = [
        "# Routing under drift",
        "",
        f"Written by `{command.strip()}` at commit `{commit()}` ({describe_machine()}); do not edit by hand.",
        "",
        f"Pairs: the routing benchmark's held-out stream ({len(bench.stream)} pairs of `{args.behaviour}` that no "
        f"prior trained on), served by four streams built on the rules below; seeds {seeds} (each fixes the order, "
        "the sides, the reversals, the routers' draws and which offline prior they start from). Accuracy is the "
        "share of pairs that got the true label (no label counts as wrong). Fidelity (a) `oracle`: the reward is "
        "whether the label was right; (b) `log_linear_dpo`: the per-pair DPO loss of a log-linear policy trained on "
        "the routed labels. Routers that never read a reward (and the windowed lookup, which always learns from the "
        "oracle's right-or-wrong) run at (a) only; their rows at (b) are those runs. Forgetting halves a reward's "
        f"weight every {args.half_life} pairs (`forgetting` = {0.5 ** (args.batch_size / args.half_life):.4f} per "
        f"step of {args.batch_size}); the windowed lookup keeps the last {size} pairs per label and RM. Recovery: "
        f"pairs from the change until the router's accuracy, in windows of {size}, is back within 2 points of the "
        "best single RM of that window (means over seeds); `never` if it is not by the end.",
        "",
        "## Goals (fidelity a)",
        "",
        "On each drift stream, an online task-aware router (without and with forgetting) against the static lookup "
        "over the pairs from the change on: the goal is at least 3 points above it with a recovery under 500 pairs; "
        "the rows without a goal compare the switches themselves (online updates against none, forgetting against "
        "none). On the stationary stream (points over the whole stream), online updates and forgetting must cost "
        "nothing: the goal is no significant loss. Paired tests over every seed's pairs.",
        "",
        goals_table(runs, streams, size),
    ]
    for name, stream in streams.items():
        length = len(stream.schedule(0).order) if isinstance(stream, DriftStream) else 2 * args.phase_pairs
        phases = stream.schedule(0).phases if isinstance(stream, DriftStream) else [("stationary", 0)]
        accuracy, ceiling = rm_windows(stream, seeds, size, length)
        parts += ["", f"## `{name}`", "", RULES[name].format(rm=degraded), "",
                  "Every RM's accuracy per window (mean over seeds; bold: the window's best RM):", "",
                  rm_table(bench.rm_names, accuracy, ceiling, size, phases)]  # fmt: skip
        for fidelity in args.fidelities:
            by_key = dict(runs.get(name, {}).get("oracle", {}))
            by_key.update(runs.get(name, {}).get(fidelity, {}))  # reward-free routers: their oracle runs
            ordered = {key: by_key[key] for key in labels if key in by_key}
            if not ordered:
                continue
            best = accuracy.max(dim=1).values
            picture = plots / f"{name}_{fidelity}.png"
            plot(picture, f"{name}, fidelity {fidelity}", bench.rm_names, accuracy, ordered, labels, size,
                 [start for _, start in phases[1:]])  # fmt: skip
            relative = Path(picture.parent.name) / picture.name
            parts += ["", f"### Fidelity `{fidelity}`", "", router_table(ordered, stream, labels, best, size), "",
                      f"![{name}, {fidelity}]({relative})"]  # fmt: skip
            if fidelity != "oracle" and "task" in ordered:
                signal = reward_signal(ordered["task"], stream)
                parts += ["", "What the DPO reward lets a router see: the AUROC of -L_DPO for a right label against a "
                          f"wrong one over TaskBayesianRouter's trained pairs, {signal} (0.5: no signal; the oracle's "
                          "is 1)."]  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(parts) + "\n")
