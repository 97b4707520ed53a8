"""Accuracy against cost per pair on the large set: every single RM, majority vote and UWO, the data-label lookup, the
cost-aware lookup over a sweep of lambda, the lookup under a budget per pair, and two-stage cascades over a sweep of
thresholds.

    python benchmarks/cost_frontier.py --behaviour rmrouter/shipped/behaviour_large --costs docs/rm_cost.json \
        --output docs/cost_frontier.md

Costs are each RM's seconds per pair when called alone (`benchmarks/rm_cost.py`); a pair costs the RMs called on it,
and an RM is called only on the pairs it can judge. Everything is fitted on the offline router's `train` split (the
lookup's per-label accuracies and the cascades' margin calibration) and evaluated on `test` and the mixed `ood` split.
Each point is deterministic given the split, so its noise is that of its pairs: each accuracy carries its standard
error, and the goals are paired tests over the pairs. UWO standardises each RM over the whole split's responses (its
batch), the steadiest common scale it can have.

With `--task-priors DIR` (the task-aware offline router's `seed_<s>/prior.pt`, as the routing benchmark reads them),
the online routers run too, on the routing benchmark's stream (the `test` and `ood` pairs in reshuffled passes) at
fidelity (a), the oracle reward: routing by data label, and TaskBayesianRouter (`configs/routers/task_bayesian.yaml`)
and the cascade as a router (`CascadeRouter`) over a sweep of `cost_weight`, each over `--seeds`, with the cost its
calls add up to. `--priors DIR` (the paper's offline router's `seed_<s>/prior.pt`) adds the paper's BayesianRouter
(`configs/routers/bayesian.yaml`, whose calibrated prior scale puts its scores on the reward's scale) over the same
sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from common import write_report

from rmrouter.data.behaviour_datamodule import BehaviourDataModule, BehaviourPairs
from rmrouter.data.behaviour_split import split_named_by
from rmrouter.models.embedding_store import EmbeddingCache
from rmrouter.routers.baseline_routers import DataLabelRouter
from rmrouter.routers.bayesian import BayesianRouter
from rmrouter.routers.cascade import CascadeRouter
from rmrouter.routers.cost import MarginCalibration, budget_choice, cascade, cost_aware_choice
from rmrouter.routers.data_label import DataLabelRouting
from rmrouter.routers.decisions import majority_vote_credit, uwo_pair_margins
from rmrouter.routers.task_bayesian import TaskBayesianRouter
from rmrouter.simulation import OracleLearner, PairStream, run_stream
from rmrouter.stats import paired_test, proportion_se

LAMBDAS = [0.0, *(10 ** (k / 2) for k in range(-4, 5))]  # 0, then 0.01 ... 100 per second of RM time
THRESHOLDS = [0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.01]
COST_WEIGHTS = [0.0, 0.1, 0.316228, 1.0, 3.16228, 10.0]
ROUTERS = Path(__file__).resolve().parents[1] / "configs" / "routers"


def router_settings(name: str) -> dict:
    """The `init_args` of a shipped router config (`configs/routers/<name>.yaml`)."""
    return yaml.safe_load((ROUTERS / f"{name}.yaml").read_text())["model"]["init_args"]["router"]["init_args"]


@dataclass(frozen=True)
class Point:
    """One method's outcome on a split: per pair its credit (1 right, 0 wrong or none; majority: 0.5 on a tie), its
    cost and its RM calls."""

    method: str
    setting: str
    credit: torch.Tensor
    cost: torch.Tensor
    calls: torch.Tensor

    @property
    def accuracy(self) -> float:
        return float(self.credit.double().mean())

    @property
    def mean_cost(self) -> float:
        return float(self.cost.double().mean())


def routed(name: str, setting: str, split: BehaviourPairs, chosen: torch.Tensor, cost: torch.Tensor) -> Point:
    """The point of routing each pair to `chosen` (-1: no RM, no label, no cost)."""
    index = chosen.clamp_min(0)
    right = split.agree.bool()[torch.arange(len(chosen)), index] & (chosen >= 0)
    return Point(name, setting, right.double(), torch.where(chosen >= 0, cost[index], 0.0), (chosen >= 0).double())


def frontier(split: BehaviourPairs, train: BehaviourPairs, lookup: DataLabelRouting, cost: torch.Tensor,
             rm_names: list[str]) -> list[Point]:  # fmt: skip
    """Every point on `split`, fitted on `train`."""
    points = []
    for n, name in enumerate(rm_names):
        chosen = torch.where(split.eligible[:, n], n, -1)
        points.append(routed(f"single: {name}", "", split, chosen, cost))
    every = split.eligible.double()
    spent, calls = (every * cost).sum(dim=1), every.sum(dim=1)  # what asking every eligible RM costs
    points.append(Point("majority vote", "every eligible RM", majority_vote_credit(split.margin).double(), spent,
                        calls))  # fmt: skip
    points.append(Point("ceiling: any RM right", "every eligible RM, knowing the truth",
                        (split.agree.bool() & split.eligible).any(dim=1).double(), spent, calls))  # fmt: skip
    uwo_margin = uwo_pair_margins(split.scores, router_settings("uwo")["coeff"])
    points.append(Point("UWO", "every eligible RM", (uwo_margin > 0).double(), spent, calls))
    label_route = lookup.route(split.domains, split.sources, split.eligible)
    points.append(routed("data-label lookup", "", split, label_route, cost))
    labels = [lookup.label_of(domain, source) for domain, source in zip(split.domains, split.sources, strict=True)]
    reliability = torch.tensor([lookup.accuracies[label] for label in labels], dtype=torch.float64).clamp_min(0.0)
    for lam in LAMBDAS:
        chosen = cost_aware_choice(reliability, cost, lam, split.eligible)
        points.append(routed("cost-aware lookup", f"lambda {lam:g}", split, chosen, cost))
    for budget in sorted(set(cost.tolist())):  # each RM's cost: the budgets at which the choice can change
        chosen = budget_choice(reliability, cost, budget, split.eligible)
        points.append(routed("budget lookup", f"budget {budget:.3g} s", split, chosen, cost))
    first = int(torch.argmin(cost))  # the cheapest RM, asked first
    calibration = MarginCalibration.fit(train.domains, train.margin[:, first], train.agree[:, first].bool())
    confidence = calibration.probability(split.domains, split.margin[:, first])
    # labels in the records' orientation: +1 prefers the chosen side (right), -1 the rejected one, 0 none
    first_label = torch.nan_to_num(torch.sign(split.margin[:, first]), nan=0.0)
    second = label_route.clamp_min(0)
    second_margin = split.margin[torch.arange(len(second)), second]
    second_label = torch.where(label_route >= 0, torch.nan_to_num(torch.sign(second_margin), nan=0.0), 0.0)
    for threshold in THRESHOLDS:
        labels_given, escalated = cascade(first_label, confidence, second_label, threshold)
        credit = (labels_given > 0).double()
        extra = escalated & (label_route >= 0) & (label_route != first)
        spent = torch.where(split.eligible[:, first], cost[first], 0.0) + torch.where(extra, cost[second], 0.0)
        calls = split.eligible[:, first].double() + extra.double()
        points.append(Point(f"cascade: {rm_names[first]}, then the lookup's RM", f"threshold {threshold:g}",
                            credit, spent, calls))  # fmt: skip
    return points


def margin_halves(split: BehaviourPairs, rm_names: list[str]) -> list[str]:
    """Per RM, its accuracy on the half of each task's judged pairs it scores farthest apart against the closer half
    (split at the task's median |margin|, pooled over tasks): the per-pair signal a cascade's calibration reads."""
    lines = ["| RM | larger-margin half (%) | smaller-margin half (%) | difference (points) |", "|---|---:|---:|---:|"]
    for n, name in enumerate(rm_names):
        wide, narrow = [], []
        for task in sorted(set(split.domains)):
            rows = torch.tensor([d == task for d in split.domains]) & split.eligible[:, n]
            if int(rows.sum()) < 2:
                continue
            margin, right = split.margin[rows, n].abs(), split.agree[rows, n]
            order = torch.argsort(margin, descending=True, stable=True)
            half = len(order) // 2
            wide.append(right[order[:half]])
            narrow.append(right[order[half : 2 * half]])
        if not wide:
            continue
        top, bottom = float(torch.cat(wide).mean()), float(torch.cat(narrow).mean())
        lines.append(f"| {name} | {100 * top:.1f} | {100 * bottom:.1f} | {100 * (top - bottom):+.1f} |")
    return lines


def plot(results: dict[str, list[Point]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(12, 5), sharey=True)
    for axis, (name, points) in zip(axes, results.items(), strict=True):
        for point in points:
            if point.method.startswith(("single", "ceiling")) or point.method in (
                "majority vote",
                "UWO",
                "data-label lookup",
            ):
                axis.scatter(point.mean_cost, 100 * point.accuracy, s=25)
                axis.annotate(point.method.removeprefix("single: "), (point.mean_cost, 100 * point.accuracy),
                              fontsize=7, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        for method in ("cost-aware lookup", "budget lookup", "cascade"):
            curve = sorted((p.mean_cost, 100 * p.accuracy) for p in points if p.method.startswith(method))
            axis.plot(*zip(*curve, strict=True), marker=".", linewidth=1.2, label=method)
        axis.set_xscale("symlog", linthresh=1e-3)
        axis.set_xlabel("seconds of RM time per pair (symlog)")
        axis.set_title(f"`{name}` split", fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("labelling accuracy (%)")
    axes[0].legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def stream_rows(data: BehaviourDataModule, lookup: DataLabelRouting, cost: torch.Tensor, rm_names: list[str],
                args: argparse.Namespace) -> list[str]:  # fmt: skip
    """The online routers on the routing benchmark's stream at the oracle reward, over seeds: accuracy and cost."""
    stream = PairStream([*data.splits["test"].records, *data.splits["ood"].records], rm_names)
    routers = {}
    if args.task_priors is not None:
        routers["TaskBayesianRouter"] = (TaskBayesianRouter, router_settings("task_bayesian"), args.task_priors)
    if args.priors is not None:
        routers["BayesianRouter"] = (BayesianRouter, router_settings("bayesian"), args.priors)
    methods = [("data-label lookup", "", None)]
    methods += [(name, f"cost_weight {weight:g}", weight) for name in routers for weight in COST_WEIGHTS]
    methods += [("CascadeRouter", f"cost_weight {weight:g}", weight) for weight in COST_WEIGHTS]
    first = int(torch.argmin(cost))  # the cheapest RM, asked first
    train = data.splits["train"]
    calibration = MarginCalibration.fit(train.domains, train.margin[:, first].double(), train.agree[:, first].bool())
    lines = ["| router | setting | accuracy (%), mean ± sd over seeds | seconds per pair |", "|---|---|---:|---:|"]
    caches: dict[tuple, EmbeddingCache] = {}
    for method, setting, weight in methods:
        accuracy, spent = [], []
        for seed in args.seeds:
            if weight is None:
                router = DataLabelRouter(rm_names, lookup)
            elif method == "CascadeRouter":
                router = CascadeRouter(rm_names, first=rm_names[first], lookup=lookup, calibration=calibration,
                                       cost_weight=weight)  # fmt: skip
            else:
                kind, settings, priors = routers[method]
                prior = str(priors / f"seed_{seed}" / "prior.pt")
                router = kind(**{**settings, "rm_names": rm_names, "prior_path": prior, "seed": seed,
                                 "cost_weight": weight})  # fmt: skip
                # one cache of text embeddings for every run (as the routing benchmark shares them)
                embedder = router.embedder
                embedder.cache = caches.setdefault((embedder.encoder_name, embedder.pooling, embedder.max_length),
                                                   EmbeddingCache())  # fmt: skip
            router.connect_pool(rm_names, costs=cost)
            log = run_stream(router, stream, OracleLearner(), args.pairs, 8, seed)
            accuracy.append(float(log.right.double().mean()))
            spent.append(router.cost_total / router.pairs_routed)
        sd = torch.tensor(accuracy).std().item() if len(accuracy) > 1 else 0.0
        lines.append(f"| {method} | {setting} | {100 * sum(accuracy) / len(accuracy):.1f} ± {100 * sd:.1f} | "
                     f"{sum(spent) / len(spent):.4f} |")  # fmt: skip
    return lines


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviour", type=Path, default=Path("rmrouter/shipped/behaviour_large"))
    parser.add_argument("--offline-config", type=Path, default=Path("configs/offline_router.yaml"))
    parser.add_argument("--costs", type=Path, default=Path("docs/rm_cost.json"))
    parser.add_argument("--output", type=Path, default=Path("docs/cost_frontier.md"))
    parser.add_argument("--task-priors", type=Path, default=None, help="seed_<s>/prior.pt: the online routers too")
    parser.add_argument("--priors", type=Path, default=None, help="the paper's seed_<s>/prior.pt: its router too")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--pairs", type=int, default=2400, help="pairs per stream, as the routing benchmark's")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, list[Point]]:
    args = parse(sys.argv[1:] if argv is None else argv)
    rm_names = yaml.safe_load(args.offline_config.read_text())["data"]["init_args"]["rm_names"]
    seconds = json.loads(args.costs.read_text())["seconds_per_pair"]
    cost = torch.tensor([seconds[name] for name in rm_names], dtype=torch.float64)
    data = BehaviourDataModule(str(args.behaviour), rm_names, split_named_by(args.offline_config))
    data.setup("fit")
    train = data.splits["train"]
    lookup = DataLabelRouting.fit(train.domains, train.sources, train.agree.bool(), train.eligible)
    results = {name: frontier(data.splits[name], train, lookup, cost, rm_names) for name in ("test", "ood")}
    goals, verdicts = [], []
    for name, points in results.items():
        rows, lines = goal_rows(name, points)
        goals += rows
        verdicts += lines
    body = ["## Goals", "", "Each goal's best point (the most accurate within the cost it allows), paired over the "
            "split's pairs:", "", "| split | goal | against | best point | difference (points) | verdict |",
            "|---|---|---|---|---:|---|", *goals, "", *verdicts, ""]  # fmt: skip
    for name, points in results.items():
        body += [f"## `{name}` ({len(points[0].credit)} pairs)", "",
                 "| method | setting | accuracy (%) ± se | seconds per pair | RM calls per pair |",
                 "|---|---|---:|---:|---:|"]  # fmt: skip
        for point in points:
            se = proportion_se(point.accuracy, len(point.credit))
            body.append(f"| {point.method} | {point.setting} | {100 * point.accuracy:.1f} ± {100 * se:.1f} | "
                        f"{point.mean_cost:.4f} | {float(point.calls.mean()):.2f} |")  # fmt: skip
        body += ["", "How much an RM's margin says about its own pair (the signal a cascade "
                 "reads), on this split:", "", *margin_halves(data.splits[name], rm_names), ""]  # fmt: skip
    if args.task_priors is not None or args.priors is not None:
        body += [f"## On the routing benchmark's stream, oracle reward ({args.pairs} pairs, seeds {args.seeds})", "",
                 "The stream replays the `test` and `ood` pairs; what learns nothing online (single RMs, ensembles, "
                 "the lookups, the cascades) scores there what it scores on those pairs above, so beside the "
                 "data-label lookup, the baseline, the routers that learn run here, and the cascade as a router "
                 f"(`CascadeRouter`: {rm_names[int(torch.argmin(cost))]} first, the lookup's RM where its training "
                 "accuracy on the label beats the first RM's calibrated chance by more than `cost_weight` times its "
                 "cost).", "",
                 *stream_rows(data, lookup, cost, rm_names, args), ""]  # fmt: skip
    picture = args.output.with_suffix(".png")
    plot(results, picture)
    body.append(f"![accuracy against cost]({picture.name})")
    notes = (
        f"\nRMs `{rm_names}`, costs from `{args.costs}` (seconds per pair, each RM alone); fitted on the `train` split "
        f"of `{args.offline_config}`'s split. Accuracy counts a pair without a label as wrong; majority vote scores a "
        "tie as half right."
    )
    write_report(args.output, "Accuracy against cost per pair", notes, "\n".join(body))
    return results


def goal_rows(split: str, points: list[Point]) -> tuple[list[str], list[str]]:
    """The goals as `(table rows, verdict lines)`: against every single RM, the most accurate routed or cascaded point
    at no more than its cost (paired over the pairs); against each ensemble (majority vote, UWO), the most accurate
    point at a third of its cost or less, and whether it is within 1 point."""
    rows, beaten, unbeaten = [], [], []
    candidates = [p for p in points if not p.method.startswith(("single", "majority", "UWO", "ceiling"))]

    def row(goal: str, against: Point, best: Point, verdict: str) -> str:
        test = paired_test(best.credit.tolist(), against.credit.tolist())
        return (f"| `{split}` | {goal} | {against.method} ({against.mean_cost:.4f} s) | {described(best)} | "
                f"{100 * test.mean:+.1f} ± {100 * test.se:.1f} | {verdict or test.verdict()} |")  # fmt: skip

    for single in [p for p in points if p.method.startswith("single")]:
        name = single.method.removeprefix("single: ")
        cheaper = [p for p in candidates if p.mean_cost <= single.mean_cost]
        if not cheaper:
            unbeaten.append(name)
            continue
        best = max(cheaper, key=lambda p: p.accuracy)
        verdict = paired_test(best.credit.tolist(), single.credit.tolist()).verdict()
        rows.append(row("above at no more cost", single, best, verdict))
        (beaten if verdict == "above" else unbeaten).append(name)
    for ensemble in [p for p in points if p.method in ("majority vote", "UWO")]:
        third = [p for p in candidates if p.mean_cost <= ensemble.mean_cost / 3]
        if third:
            best = max(third, key=lambda p: p.accuracy)
            test = paired_test(best.credit.tolist(), ensemble.credit.tolist())
            within = "within 1 point" if test.mean >= -0.01 else "not within 1 point"
            rows.append(row("within 1 point at a third of the cost", ensemble, best, f"{test.verdict()}; {within}"))
    singles = {p.method.removeprefix("single: "): p.mean_cost for p in points if p.method.startswith("single")}
    cheapest = min(singles, key=singles.get)
    why = [f"{name} costs {singles[name]:.1e} s per pair, the least of any RM, so a point at no more cost can only "
           "call it" for name in unbeaten if name == cheapest]  # fmt: skip
    verdict = "met" if not unbeaten else f"not met: nothing at no more cost is above {', '.join(unbeaten)}"
    verdict += f" ({'; '.join(why)})" if why else ""
    return rows, [f"- **`{split}`: a point above every single RM at no more than its cost**: {verdict}."]


def described(point: Point) -> str:
    setting = f", {point.setting}" if point.setting else ""
    return f"{point.method} ({point.mean_cost:.4f} s{setting})"


if __name__ == "__main__":
    main()
