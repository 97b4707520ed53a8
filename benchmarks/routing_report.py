"""The routing benchmark's report: tables over seeds, paired tests, the goals' verdicts, and the PNG plots.

Every figure comes from the run logs `routing_benchmark.py` keeps; nothing here is typed by hand. A paired test
compares two methods on the stream's unique held-out pairs: per pair, each method's share of right labels over every
time the pair was routed (all passes, all seeds), so a pair counts once however often it recurs.
"""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path
from typing import Any

import torch
from common import write_report
from routing_goals import departure_section, goals, logs, percent, spread, switch_table

from rmrouter.simulation import cumulative_accuracy

FIDELITY_TITLES = {
    "oracle": "Fidelity (a): oracle reward (loss 0 for a right label, 1 for a wrong one)",
    "log_linear_dpo": "Fidelity (b): log-linear DPO policy over frozen MiniLM embeddings (its per-pair DPO loss)",
    "lm_dpo": "Fidelity (c): the LM policy of the simulated online config, SmolLM2 with LoRA (its per-pair DPO loss)",
}
# The methods a plot shows (ten colours at most); the tables carry every variant.
PLOTTED = (
    "single_best",
    "majority",
    "uwo",
    "data_label",
    "laser",
    "bayesian",
    "bayesian_paper",
    "no_online",
    "no_prior",
)


def borrowed(runs: dict[int, dict[str, Any]], fidelity: str) -> bool:
    """The method was routed with another fidelity's learner (the oracle's): its routing reads no reward, so its
    labels are those any learner would get, but its losses are not this fidelity's."""
    return any(run.get("learner", fidelity) != fidelity for run in runs.values())


def borrowed_note(runs: dict[str, dict[int, dict[str, Any]]], fidelity: str) -> str:
    if not any(borrowed(seeds, fidelity) for seeds in runs.values()):
        return ""
    return (
        "\n\n† Routing reads no reward, so this method's labels are the same under any learner (the suite checks it "
        "at fidelities a and b); it was routed on this stream with the oracle learner, and the LM's time went to the "
        "routers that learn."
    )


def method_table(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], fidelity: str) -> str:
    dpo = fidelity == "log_linear_dpo"
    head = "| method | accuracy | first 10 % | coverage | accuracy where labelled | RM calls / pair |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if dpo:
        head, rule = head + " policy agreement |", rule + "---:|"
    lines = [head, rule]
    for key, seeds in runs.items():
        summaries = [run["summary"] for run in seeds.values()]
        cells = [spread([s[name] for s in summaries]) for name in ("accuracy", "first_accuracy", "coverage")]
        labelled = [s["accuracy_labelled"] for s in summaries if s["accuracy_labelled"] is not None]
        cells.append(spread(labelled) if labelled else "n/a")
        cells.append(f"{statistics.fmean(s['rm_calls_per_pair'] for s in summaries):.2f}")
        if dpo:
            cells.append(spread([s["policy_agreement"] for s in summaries]))
        lines.append(f"| {labels[key]}{' †' if borrowed(seeds, fidelity) else ''} | " + " | ".join(cells) + " |")
    # a property of each seed's stream, the same for every method
    ceiling = [run["summary"]["ceiling"] for run in next(iter(runs.values())).values()]
    lines.append(f"| *ceiling: some eligible RM right* | {spread(ceiling)} | | | | |" + (" |" if dpo else ""))
    return "\n".join(lines)


def domain_table(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str]) -> str:
    domains = sorted({d for seeds in runs.values() for run in seeds.values() for d in run["summary"]["per_domain"]})
    lines = ["| method | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for key, seeds in runs.items():
        cells = []
        for domain in domains:
            values = [run["summary"]["per_domain"].get(domain) for run in seeds.values()]
            values = [v for v in values if v is not None]
            cells.append(percent(statistics.fmean(values)) if values else "n/a")
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reward_keys(runs: dict[str, dict[int, dict[str, Any]]], fidelity: str, keys: tuple[str, ...]) -> list[str]:
    """Those of `keys` run with this fidelity's own learner, so that their losses are this fidelity's rewards."""
    return [k for k in keys if k in runs and not borrowed(runs[k], fidelity)]


def auroc_table(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], fidelity: str) -> str:
    keys = reward_keys(runs, fidelity, ("bayesian", "bayesian_paper", "laser", "single_best"))
    if not keys:
        return ""
    first = next(iter(runs[keys[0]].values()))["auroc"]
    lines = ["| steps | " + " | ".join(labels[k] for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    for index, window in enumerate(first):
        cells = []
        for key in keys:
            values = [run["auroc"][index]["auroc"] for run in runs[key].values() if index < len(run["auroc"])]
            values = [v for v in values if v is not None]
            cells.append(f"{statistics.fmean(values):.3f}" if values else "n/a")
        lines.append(f"| {window['first_step']}- | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_cumulative(runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    for key, seeds in runs.items():
        if key not in PLOTTED:
            continue
        curves = torch.stack([cumulative_accuracy(stream_log) for stream_log in logs(seeds).values()])
        axis.plot(range(1, curves.shape[1] + 1), 100 * curves.mean(0).numpy(), label=labels[key], linewidth=1.2)
    axis.set_xlabel("pairs routed")
    axis.set_ylabel("cumulative labelling accuracy (%), mean over seeds")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_auroc(
    runs: dict[str, dict[int, dict[str, Any]]], labels: dict[str, str], path: Path, title: str, fidelity: str
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    for key in reward_keys(runs, fidelity, ("bayesian", "bayesian_paper", "laser", "single_best", "random")):
        seeds = list(runs[key].values())
        steps = [w["first_step"] for w in seeds[0]["auroc"]]
        means = []
        for index in range(len(steps)):
            values = [s["auroc"][index]["auroc"] for s in seeds if s["auroc"][index]["auroc"] is not None]
            means.append(statistics.fmean(values) if values else float("nan"))
        axis.plot(steps, means, marker=".", label=labels[key])
    axis.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    axis.set_xlabel("first step of the window")
    axis.set_ylabel("AUROC of -loss for 'routed label right'")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def fitted_scales(runs) -> dict[int, float]:
    """The calibrated prior scale each seed's BayesianRouter was built with (from its run file)."""
    for methods in runs.values():
        if "bayesian" in methods:
            return {seed: run["router"]["prior_scale"] for seed, run in sorted(methods["bayesian"].items())}
    return {}


def headroom_table(bench) -> str:
    """Per domain of the stream: its best RM there (in hindsight, on the stream itself), the any-RM-right ceiling, and
    how much of the gap other RMs' right labels could fill; where those are near chance, no router can learn them."""
    stream = bench.stream
    lines = [
        "| domain | pairs | best RM on the stream | its accuracy | ceiling | other RMs right where it is wrong |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for domain in sorted(set(stream.domains)):
        rows = torch.tensor([d == domain for d in stream.domains])
        right, eligible = stream.right[rows], stream.eligible[rows]
        accuracy = right.double().mean(0)
        best = int(accuracy.argmax())
        wrong = ~right[:, best]
        others = [n for n in range(right.shape[1]) if n != best]
        rescued = [float(right[wrong, n].double().mean()) if wrong.any() and eligible[wrong, n].any() else None
                   for n in others]  # fmt: skip
        shown = ", ".join(f"{bench.rm_names[n]} {percent(r)}" for n, r in zip(others, rescued, strict=True) if r)
        lines.append(
            f"| {domain} | {int(rows.sum())} | {bench.rm_names[best]} | {percent(float(accuracy[best]))} | "
            f"{percent(float(right.any(1).double().mean()))} | {shown or 'n/a'} |"
        )
    return "\n".join(lines)


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def setup_notes(args, bench, runs, seeds: list[int]) -> str:
    stream, records = bench.stream, len(bench.stream)
    domains = {d: bench.stream.domains.count(d) for d in sorted(set(stream.domains))}
    scales = ", ".join(f"seed {seed}: {scale:.3f}" for seed, scale in fitted_scales(runs).items()) or "not used"
    priors = str(args.prior) if args.prior is not None else f"{args.priors}/seed_<S>/prior.pt"
    return "\n".join([
        f"\nCommit `{commit()}`; seeds {seeds}.\n",
        f"- **Stream:** the {records} pairs of the `test` ({len(bench.splits['test'])}) and `ood` "
        f"({len(bench.splits['ood'])}) splits of `{args.offline_config}` read from `{args.behaviour}`, which no prior "
        f"trained or was selected on; {args.pairs} pairs per stream, so each pair is routed about "
        f"{args.pairs / records:.1f} times, in reshuffled passes. Batches of {args.batch_size}. Domains: {domains}.",
        f"- **Pool:** {bench.rm_names}. Best single RM on the train split: `{bench.best_single}`.",
        f"- **Priors:** `{priors}` (the offline router of each seed). `prior_scale: calibrated`, each prior's "
        f"reward_scale, fitted by the offline fit on the validation split ({len(bench.splits['val'])} pairs): "
        f"{scales}.",
        "- **Accuracy** counts a pair without a label as wrong (it trains nothing); *coverage* is the share labelled.",
        "- **Paired tests** are over the unique pairs: each method's share of right labels per pair over all its "
        "routings (passes and seeds); the first-10 % test pairs the same stream positions of each seed.",
        f"- **Log-linear DPO:** beta 0.1, SGD step {args.learning_rate}; *policy agreement* is the share of the "
        "stream's pairs whose true chosen side the final policy's implicit reward prefers.",
        lm_note(args, runs),
    ])  # fmt: skip


def lm_note(args, runs) -> str:
    """Fidelity (c)'s settings and cost, from its runs."""
    if "lm_dpo" not in runs:
        return "- **The LM policy** (fidelity c) was not run (`--fidelities` left `lm_dpo` out)."
    learned = {key: seeds for key, seeds in runs["lm_dpo"].items() if not borrowed(seeds, "lm_dpo")}
    steps = -(-args.lm_pairs // args.batch_size)
    seconds = [run["seconds"] / steps for seeds in learned.values() for run in seeds.values() if "seconds" in run]
    cost = f"; {statistics.median(seconds):.0f} s a step (median over runs, loading included)" if seconds else ""
    return (
        f"- **The LM policy (fidelity c):** the policy, LoRA, beta, learning rate and truncation of `{args.lm_config}`"
        f"{f' with policy `{args.lm_policy}`' if args.lm_policy else ''}, bf16 autocast where native, one AdamW step "
        f"per batch; {args.lm_pairs} pairs per stream (the first {args.lm_pairs} of each seed's order), "
        f"{steps} steps{cost}. Methods that learn from the reward: {sorted(learned) or 'none'}."
    )


def write_benchmark_report(args, bench, runs, labels: dict[str, str], argv) -> None:
    plots = args.plots_dir if args.plots_dir is not None else args.output.parent / args.output.stem
    seeds = sorted({seed for methods in runs.values() for per_seed in methods.values() for seed in per_seed})
    sections, records = [], len(bench.stream)
    for fidelity, methods in runs.items():
        title = FIDELITY_TITLES[fidelity]
        cumulative, auroc = plots / f"{fidelity}_cumulative.png", plots / f"{fidelity}_auroc.png"
        plot_cumulative(methods, labels, cumulative, title)
        plot_auroc(methods, labels, auroc, title, fidelity)
        relative = args.output.parent
        parts = [
            f"## {title}",
            "Mean ± sd over seeds, in points.\n\n"
            + method_table(methods, labels, fidelity)
            + borrowed_note(methods, fidelity),
            "### Goals (paired)\n\n" + goals(methods, labels, records),
            "### Each Bayesian router's variants against it\n\n" + switch_table(methods, labels, records),
            departure_section(methods, labels, bench),
            "### Per domain (mean accuracy over seeds)\n\n" + domain_table(methods, labels),
            "### The reward's signal: AUROC of -loss for 'routed label right', per window of "
            f"{args.window} steps (mean over seeds)\n\n" + auroc_table(methods, labels, fidelity),
            f"![cumulative accuracy]({cumulative.relative_to(relative)})\n\n"
            f"![reward AUROC]({auroc.relative_to(relative)})",
        ]
        sections.append("\n\n".join(part for part in parts if part.strip()))
    headroom = (
        "## What routing can gain on this stream\n\nPer domain, in hindsight: the RM best on the stream's own pairs, "
        "the share some eligible RM gets right, and each other RM's accuracy on the pairs the best one gets wrong "
        "(a router gains there only if it can tell those pairs apart from the text).\n\n" + headroom_table(bench)
    )
    notes = setup_notes(args, bench, runs, seeds)
    write_report(args.output, "Online routing benchmark", notes, "\n\n".join([headroom, *sections]))
