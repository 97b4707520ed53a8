"""Simulated online DPO labelling accuracy of every router method, written to `docs/online_simulated.md`.

For each method (a file of `configs/routers/`, or a variant of `configs/routers/<router>_variants/` overlaid on
`<router>.yaml`) this runs the paper's controlled simulation through the project CLI,
`python cli.py fit --config configs/online/simulated.yaml --config configs/routers/<method>.yaml`, with the policy
given here, one pass over the behaviour file (or `--max-steps`), and a per-method overlay config that sends the run's
checkpoints and TensorBoard logs to `<out-dir>/<method>/` and adds `rmrouter.callbacks.LabellingTally`. The tally
counts routed pairs and correctly labelled pairs over the whole run, overall and per domain, and reads the router's
RM calls and selections (`<out-dir>/<method>/labelling.json`); the tables are built from those files only. Every
method starts from the same seed, so all of them route the same pairs in the same order.

    .venv/bin/python benchmarks/simulated_labelling.py --output docs/online_simulated.md

Arguments after `--` go to every `fit` unchanged (e.g. `-- --data.init_args.batch_size 4`). Needs the behaviour file
and the offline prior of `bash scripts/run.sh`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import redirected_trainer, split_passthrough, write_report

from rmrouter.cli import main as cli_main

log = logging.getLogger("simulated_labelling")

# The paper's method first, then the baselines, then its variants; any other router config follows, by name.
METHOD_ORDER = [
    "bayesian",
    "laser",
    "single",
    "random",
    "majority",
    "uwo",
    "bayesian_variants/paper_form",
    "bayesian_variants/no_prior",
    "bayesian_variants/no_online_updates",
    "bayesian_variants/weighted_score",
]
PAPER_BAYESIAN_ACCURACY = 88.23  # the paper's simulated online DPO (docs/concepts/method.md, "Simulated online DPO")
TALLY = "rmrouter.callbacks.labelling_tally.LabellingTally"


def default_methods(routers: Path) -> list[str]:
    names = sorted(path.stem for path in routers.glob("*.yaml"))
    variants = [f"{folder.name}/{path.stem}" for folder in routers.glob("*_variants") for path in folder.glob("*.yaml")]
    names += sorted(variants)
    return [m for m in METHOD_ORDER if m in names] + [m for m in names if m not in METHOD_ORDER]


def method_configs(routers: Path, method: str) -> list[Path]:
    """A method's router configs: its own file, or for `<router>_variants/<variant>` that overlay on `<router>.yaml`."""
    if "/" in method:
        folder = method.split("/", 1)[0]
        return [routers / f"{folder.removesuffix('_variants')}.yaml", routers / f"{method}.yaml"]
    return [routers / f"{method}.yaml"]


def overlay_config(simulated: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The trainer keys that send one method's run to `folder` and add the tally, from the simulated config's own."""
    overlay = redirected_trainer(simulated, folder)
    overlay["trainer"]["callbacks"].append({"class_path": TALLY, "init_args": {"path": str(folder / "labelling.json")}})
    return overlay


def fit_arguments(args: argparse.Namespace, method: str, overlay: Path, passthrough: list[str]) -> list[str]:
    steps = ["--trainer.max_steps=-1", "--trainer.max_epochs=1"] if args.max_steps is None else [
        f"--trainer.max_steps={args.max_steps}"
    ]  # fmt: skip
    return [
        "fit",
        "--config", str(args.config),
        *(arg for path in method_configs(args.routers, method) for arg in ("--config", str(path))),
        "--config", str(overlay),
        f"--model.init_args.policy={args.policy}",
        *steps,
        *passthrough,
    ]  # fmt: skip


def run_method(args: argparse.Namespace, method: str, passthrough: list[str]) -> dict[str, Any]:
    """One simulated fit of `method`; its tally summary with the fit's wall seconds and composed config added."""
    folder = args.out_dir / method
    folder.mkdir(parents=True, exist_ok=True)
    overlay = folder / "report_overlay.yaml"
    overlay.write_text(yaml.safe_dump(overlay_config(yaml.safe_load(args.config.read_text()), folder)))
    fit_args = fit_arguments(args, method, overlay, passthrough)
    record, tally = folder / "report_run.json", folder / "labelling.json"
    if args.reuse and record.exists() and tally.exists():
        previous = json.loads(record.read_text())
        if previous.get("fit_args") == fit_args:
            log.info("%s: reusing %s", method, tally)
            return {**json.loads(tally.read_text()), **previous}
    tally.unlink(missing_ok=True)
    log.info("%s: python cli.py %s", method, " ".join(fit_args))
    start = time.perf_counter()
    cli_main(fit_args)  # which hides this script's sys.argv from LightningCLI while it runs
    seconds = time.perf_counter() - start
    if not tally.exists():
        raise RuntimeError(f"{method}: the fit wrote no {tally}; did it train any simulated batch?")
    saved = folder / "tensorboard" / "config.yaml"  # what LightningCLI saved: the composed config of the run
    config = yaml.safe_load(saved.read_text()) if saved.exists() else {}
    run = {"fit_args": fit_args, "seconds": seconds, "data": (config.get("data") or {}).get("init_args", {})}
    record.write_text(json.dumps(run, indent=2) + "\n")
    return {**json.loads(tally.read_text()), **run}


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def accuracy_table(results: dict[str, dict[str, Any]]) -> str:
    """Rows: methods; columns: overall, then each domain (as in docs/behaviour_table.md); a first row of pair counts."""
    domains = sorted({d for summary in results.values() for d in summary["pairs"] if d != "overall"})
    columns = ["overall", *domains]
    first = next(iter(results.values()))
    lines = [
        "| method | router | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
        "| pairs | | " + " | ".join(str(first["pairs"].get(c, 0)) for c in columns) + " |",
    ]
    for method, summary in results.items():
        cells = " | ".join(percent(summary["accuracy"].get(c)) for c in columns)
        lines.append(f"| {method} | {summary['router']} | {cells} |")
    return "\n".join(lines)


def routing_table(results: dict[str, dict[str, Any]]) -> str:
    """Rows: methods; columns: steps, RM calls per pair, each RM's select rate, and the fit's wall seconds."""
    rm_names = list(dict.fromkeys(name for summary in results.values() for name in summary["select_rate"]))
    columns = ["steps", "RM calls / pair", *(f"select {name}" for name in rm_names), "fit wall s"]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for method, summary in results.items():
        calls = summary["rm_calls_per_pair"]
        rates = [percent(summary["select_rate"][n]) if summary["select_rate"] else "-" for n in rm_names]
        cells = [str(summary["global_step"]), "n/a" if calls is None else f"{calls:.2f}", *rates]
        lines.append(f"| {method} | " + " | ".join([*cells, f"{summary['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def notes(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> str:
    data = next(iter(results.values()))["data"]
    same_pairs = len({json.dumps(summary["pairs"], sort_keys=True) for summary in results.values()}) == 1
    length = "one pass over the file" if args.max_steps is None else f"{args.max_steps} steps"
    lines = [
        f"Policy `{args.policy}`; behaviour file `{data.get('path', 'n/a')}`, batch size "
        f"{data.get('batch_size', 'n/a')}; {length} per method; runs under `{args.out_dir}/<method>/`.",
        f"The paper reports **{PAPER_BAYESIAN_ACCURACY:.2f} %** for BayesianRouter in this simulation "
        '(docs/concepts/method.md, "Simulated online DPO"), with its four RewardBench 2 RMs and LLaMA3-SFT-v2 '
        "policy; these runs use this project's pool, whose per-RM accuracies and any-RM-right ceiling are in "
        "[`behaviour_table.md`](behaviour_table.md).",
        "Labelling accuracy: the share of routed pairs whose routed label equals the recorded one, counted exactly "
        "over the run (`rmrouter.callbacks.LabellingTally`), not a mean of per-step means; a pair left unlabelled "
        "(abstention or tie) counts as wrong. Domains are one column each, as in the behaviour table.",
        "Select rates are shares of the pairs labelled by one RM (`-` for routers that aggregate every RM). Wall "
        "time is the whole `fit` call, loading the policy included.",
        prior_note(data),
        sample_note(results),
    ]
    if not same_pairs:
        lines.append("**The methods did not route the same pairs** (see each method's pairs in its labelling.json).")
    return "\n".join(["", *lines])


def sample_note(results: dict[str, dict[str, Any]]) -> str:
    """How much one pair weighs: every method is a single run, and a run of a Thompson-sampling router is noisy."""
    pairs = max(summary["pairs"]["overall"] for summary in results.values())
    return (
        f"Each method is one run from one seed over {pairs} routed pairs, so one pair is {100 / pairs:.2f} points "
        "overall and more in a small domain column; a gap of a few pairs between methods can come from one run's "
        "randomness alone (its Thompson or random draws, and the CPU's bfloat16 kernels behind the DPO losses)."
    )


def prior_note(data: dict[str, Any]) -> str:
    """Whether the routed pairs are ones the offline prior trained on, from the run's data settings."""
    served = data.get("train_splits") or ["train"]
    if "train" in served:
        return (
            "The routers that use the offline prior (BayesianRouter and its variants but `no_prior`) route "
            f"the behaviour file's {' + '.join(served)} split, which holds pairs the prior was fitted on "
            "(`configs/offline_router.yaml`): their accuracy here is partly in-sample for the prior."
        )
    split = data.get("split") if isinstance(data.get("split"), dict) else data  # runs saved before configs/splits/
    held_out = ", ".join(f"{key} {split[key]}" for key in ("ood_domains", "ood_sources") if split.get(key))
    return (
        f"Every method routes the behaviour file's {' + '.join(served)} splits of the offline router's split "
        f"settings ({held_out}): pairs the offline prior never trained on."
    )


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, passthrough = split_passthrough(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None, help="router configs by name; default: all of them")
    parser.add_argument("--policy", default="smollm2-135m-instruct", help="the policy model (name or folder)")
    parser.add_argument("--max-steps", type=int, default=None, help="steps per method; default: one pass (1 epoch)")
    parser.add_argument("--config", type=Path, default=Path("configs/online/simulated.yaml"), help="simulated config")
    parser.add_argument("--routers", type=Path, default=Path("configs/routers"), help="folder of router configs")
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints/online/simulated_report"), help="run folders")
    parser.add_argument("--output", type=Path, default=Path("docs/online_simulated.md"), help="the markdown report")
    parser.add_argument("--reuse", action="store_true", help="keep a method's finished run made with the same fit args")
    return parser.parse_args(own), passthrough


def main() -> dict[str, dict[str, Any]]:
    """Runs every method, prints the tables and writes the report; returns each method's summary."""
    args, passthrough = parse(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    methods = args.methods or default_methods(args.routers)
    missing = [m for m in methods if not (args.routers / f"{m}.yaml").exists()]
    if missing:
        raise SystemExit(
            f"no router config for {missing} in {args.routers}; choose from {default_methods(args.routers)}"
        )
    results = {method: run_method(args, method, passthrough) for method in methods}
    tables = accuracy_table(results) + "\n\n" + routing_table(results)
    print(tables)
    write_report(args.output, "Simulated online DPO: labelling accuracy (%) per router", notes(args, results), tables)
    log.info("wrote %s", args.output)
    return results


if __name__ == "__main__":
    main()
