"""The routing benchmark's comparisons: paired tests between methods over the stream's unique pairs, the goals'
verdicts for each Bayesian router, its variants against it, and how far online learning moves its routing.

A paired test compares two methods on the stream's unique held-out pairs: per pair, each method's share of right labels
over every time the pair was routed (all passes, all seeds), so a pair counts once however often it recurs.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from rmrouter.routers.prior import RouterPrior
from rmrouter.routers.task_prior import TaskPrior
from rmrouter.simulation import StreamLog
from rmrouter.stats import paired_test

COMPARED = ("single_best", "majority", "data_label", "laser", "uwo")
VARIANTS = ("no_online", "no_prior", "weighted_score", "scale_one", "placeholder", "uncentred", "any_rm")


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def spread(values: list[float]) -> str:
    """`mean ± sd` in points over seeds (sd 0 for one seed)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.1f} ± {100 * sd:.1f}"


def logs(runs: dict[int, dict[str, Any]]) -> dict[int, StreamLog]:
    return {seed: StreamLog.from_dict(run["log"]) for seed, run in runs.items()}


def per_pair_credit(runs: dict[int, dict[str, Any]], num_records: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[M]` each record's share of right labels over every time it was routed, and how often that was."""
    right, count = torch.zeros(num_records, dtype=torch.float64), torch.zeros(num_records, dtype=torch.float64)
    for stream_log in logs(runs).values():
        right.index_add_(0, stream_log.row, stream_log.right.double())
        count.index_add_(0, stream_log.row, torch.ones_like(stream_log.row, dtype=torch.float64))
    return right / count.clamp_min(1), count


def compare(first: dict[int, dict[str, Any]], second: dict[int, dict[str, Any]], num_records: int):
    """The paired test of `first` against `second` over the unique pairs both routed."""
    a, count = per_pair_credit(first, num_records)
    b, _ = per_pair_credit(second, num_records)
    routed = count > 0
    return paired_test(a[routed].tolist(), b[routed].tolist())


def compare_early(first: dict[int, dict[str, Any]], second: dict[int, dict[str, Any]]):
    """The paired test over the first 10 % of each seed's stream, position by position (the same pair for both)."""
    a, b = [], []
    for seed, run in first.items():
        left, right = StreamLog.from_dict(run["log"]), StreamLog.from_dict(second[seed]["log"])
        cut = max(1, round(0.1 * len(left.right)))
        a += left.right[:cut].double().tolist()
        b += right.right[:cut].double().tolist()
    return paired_test(a, b)


def paired_cells(test) -> str:
    low, high = test.mean - 1.96 * test.se, test.mean + 1.96 * test.se
    return f"{100 * test.mean:+.1f} ({100 * low:+.1f}, {100 * high:+.1f}) | {test.p_value:.3g} | {test.verdict()}"


# (router, its label in goals, its no-online variant, its no-prior variant)
FORMS = (
    ("bayesian", "BayesianRouter", "no_online", "no_prior"),
    ("task", "TaskBayesianRouter", "task_no_online", "task_no_prior"),
)
TASK_VARIANTS = (
    "task_label_free", "task_no_online", "task_label_free_no_online", "task_no_prior", "task_fixed_strength"
)  # fmt: skip


def goals(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], num_records: int) -> str:
    """The issues' goals for each router form that ran, each with the test that decides it; none is assumed met."""
    if not any(key in runs for key, *_ in FORMS):
        return "No Bayesian router was run: no goal can be judged."
    lines = ["| goal | measured (points, 95 % interval) | p | verdict | met |", "|---|---:|---:|---|---|"]
    for key, name, no_online, no_prior in FORMS:
        if key not in runs:
            continue
        router = runs[key]
        for baseline in COMPARED:
            if baseline in runs:
                test = compare(router, runs[baseline], num_records)
                met = "yes" if test.verdict() == "above" else "no"
                lines.append(f"| {name} above {labels[baseline]} | {paired_cells(test)} | {met} |")
        if no_online in runs:
            test = compare(router, runs[no_online], num_records)
            met = "yes" if test.verdict() == "above" and test.mean >= 0.02 else "no"
            lines.append(f"| {name}: online updates >= 2 points above none | {paired_cells(test)} | {met} |")
        if no_prior in runs:
            test = compare_early(router, runs[no_prior])
            met = "yes" if test.verdict() == "above" and test.mean >= 0.05 else "no"
            lines.append(f"| {name}: the prior's gain >= 5 points in the first 10 % | {paired_cells(test)} | {met} |")
    for key in ("task_label_free", "task_label_free_no_online"):
        if key in runs and "data_label" in runs:
            test = compare(runs[key], runs["data_label"], num_records)
            met = "yes" if test.mean >= -0.01 else "no"
            lines.append(f"| {labels[key]} within 1 point of {labels['data_label']} | {paired_cells(test)} | {met} |")
    return "\n".join(lines)


def departure_table(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str]) -> str:
    """How far online learning moves each form's routing from its prior's: the share of pairs routed to another RM
    than its no-online variant chose for the same pair at the same stream position, early and late in the stream
    (Thompson draws make some of it at any time; what grows along the stream is learning)."""
    lines = ["| router | first 10 % | 10-50 % | last 50 % |", "|---|---:|---:|---:|"]
    for key, _, no_online, _ in FORMS:
        if key not in runs or no_online not in runs:
            continue
        shares: list[list[float]] = [[], [], []]
        for seed, run in runs[key].items():
            fixed = StreamLog.from_dict(runs[no_online][seed]["log"])
            moved = StreamLog.from_dict(run["log"]).rm_index != fixed.rm_index
            size = len(moved)
            cuts = [0, max(1, round(0.1 * size)), round(0.5 * size), size]
            for part in range(3):
                shares[part].append(float(moved[cuts[part] : cuts[part + 1]].double().mean()))
        lines.append(f"| {labels[key]} | " + " | ".join(spread(values) for values in shares) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def prior_weight_table(runs: dict[str, dict[int, dict[str, Any]]], bench) -> str:
    """How far the stream can move each form's posteriors: the rewards the stream gives the cells a router used,
    against the rewards its prior is worth there.

    A posterior mean after `k` rewards is `(lambda0 mu0 + sum r / sigma2) / (lambda0 + k / sigma2)`: it has moved
    `k / (k + lambda0 sigma2)` of the way from the prior to the rewards' mean. For the task-space router a cell is
    (task, RM) and `lambda0 sigma2` its training judgements (`lambda0: evidence`); for the paper's router every
    direction of `h` starts at `lambda0 sigma2` rewards and a cell is an RM (its rewards spread over 32 directions).
    """
    lines = [
        "| router | pairs routed through the cell over the stream | rewards its prior is worth there | "
        "share of the way from the prior to the stream's rewards |",
        "|---|---:|---:|---:|",
    ]
    for key, label, _, _ in FORMS:
        if key not in runs:
            continue
        received, worth, moved, spread_evenly = [], [], [], []
        for seed, run in runs[key].items():
            log = StreamLog.from_dict(run["log"])
            args = run.get("router") or {}
            sigma2 = float(args.get("sigma2", 1.0))
            if key == "task":
                prior = TaskPrior.load(bench.prior_path(seed, task=True))
                index = {task: t for t, task in enumerate(prior.tasks)}
                counts = torch.zeros_like(prior.judged, dtype=torch.float64)
                for row, rm in zip(log.row.tolist(), log.rm_index.tolist(), strict=True):
                    task = index.get(bench.stream.domains[int(row)])
                    if task is not None and rm >= 0:
                        counts[task, int(rm)] += 1
                evidence = prior.judged.double() if args.get("lambda0") == "evidence" else None
                if evidence is None:
                    evidence = torch.full_like(counts, float(args.get("lambda0", 1.0)) * sigma2)
            else:
                counts = torch.bincount(log.rm_index[log.rm_index >= 0].long(), minlength=len(bench.rm_names)).double()
                evidence = torch.full_like(counts, float(args.get("lambda0", 1.0)) * sigma2)
                dims = RouterPrior.load(bench.prior_path(seed)).bt_embeddings.shape[1]
            # one entry per routed pair, for the cell it went through: the medians are those of a typical pair's cell
            used = counts > 0
            weights = counts[used].long()
            per_pair = [counts[used], evidence[used], counts[used] / (counts[used] + evidence[used])]
            if key != "task":  # spread evenly over the directions of h, each gets 1/dims of an RM's rewards
                per_pair.append(counts[used] / dims / (counts[used] / dims + evidence[used]))
            per_pair = [values.repeat_interleave(weights).tolist() for values in per_pair]
            received += per_pair[0]
            worth += per_pair[1]
            moved += per_pair[2]
            spread_evenly += per_pair[3] if len(per_pair) > 3 else []
        if received:
            share = f"{100 * statistics.median(moved):.0f} %"
            if spread_evenly:
                share = f"{100 * statistics.median(spread_evenly):.0f}-{share} (spread evenly over h-one direction)"
            lines.append(f"| {label} | {statistics.median(received):.0f} | {statistics.median(worth):.0f} | {share} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def departure_section(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], bench=None) -> str:
    table = departure_table(runs, labels)
    if not table:
        return ""
    weights = prior_weight_table(runs, bench) if bench is not None else ""
    return (
        "### How far online learning moves the routing\n\nThe share of pairs each router sends to another RM than its "
        "no-online variant sends the same pair at the same position of the same stream (mean ± sd over seeds, in "
        "points). Thompson draws account for some of it from the first pair on; what grows along the stream is what "
        "the posteriors learned.\n\n"
        + table
        + (
            "\n\nHow many pairs the posteriors need to move: a posterior mean after `k` rewards has moved "
            "`k / (k + lambda0 sigma2)` of the way from its prior to the rewards' mean. A cell is a (task, RM) of the "
            "task-space router, whose prior is worth its training judgements there (`lambda0: evidence`), and an RM of "
            "the paper's router, whose prior is worth `lambda0 sigma2` rewards along every direction of `h` (and a "
            "cell's rewards spread over its 32 directions). Medians over every routed pair of the cell it went "
            "through, all seeds:\n\n" + weights
            if weights
            else ""
        )
    )


def switch_table(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], num_records: int) -> str:
    """Every other variant of each Bayesian router against its full form."""
    rows = [
        (key, "bayesian") for key in runs if key != "bayesian" and (key.startswith("bayesian") or key in VARIANTS)
    ] + [(key, "task") for key in runs if key in TASK_VARIANTS]
    rows = [(key, full) for key, full in rows if full in runs]
    if not rows:
        return ""
    lines = ["| variant | minus its full router (points, 95 % interval) | p | verdict |", "|---|---:|---:|---|"]
    for key, full in rows:
        lines.append(f"| {labels[key]} | {paired_cells(compare(runs[key], runs[full], num_records))} |")
    return "\n".join(lines)
