"""How much the offline router's accuracy depends on its training seed, written to `docs/offline_router_seeds.md`.

`docs/offline_router.md` is one fit. This script repeats the shipped fit and test through the project CLI once per
seed, on the same behaviour file and the same train/val/test/ood split (`split_seed` is left alone), with the seed
of the initial weights (`seed_everything`) and of the training order (`data.init_args.seed`) set to each value:

    python cli.py fit  --config configs/offline_router.yaml --config OVERLAY --seed_everything S --data.init_args.seed S
    python cli.py test --config configs/offline_router.yaml --config OVERLAY --ckpt_path OUT_DIR/seed_S/best.ckpt

The overlay sends each run's checkpoints, prior, logs and results (`metrics.json`, from `OfflineRouterReport`) to
`<out-dir>/seed_S/`; the tables are built from those files only. The baselines (random, single RMs, majority vote)
are functions of the split's behaviour labels alone, so they are the same for every seed.

    .venv/bin/python benchmarks/offline_router_seeds.py --seeds 0 1 2 3 4 --output docs/offline_router_seeds.md

Arguments after `--` go to every `fit` and `test` unchanged (e.g. `-- --trainer.max_epochs 5`). Needs the behaviour
file of `bash scripts/run.sh`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from common import redirected_trainer, split_passthrough, write_report

from rmrouter.callbacks.offline_report import ROWS
from rmrouter.cli import main as cli_main

log = logging.getLogger("offline_router_seeds")

REPORT = "OfflineRouterReport"  # rmrouter.callbacks, by either import path
(_, ROUTER_KEY), *BASELINES = ROWS  # "router_acc", then the baselines' (label, key)


def overlay_config(config: dict[str, Any], folder: Path, command: str) -> dict[str, Any]:
    """The trainer keys that send one seed's run to `folder`, with the results report also writing `metrics.json`."""
    overlay = redirected_trainer(config, folder)
    for callback in overlay["trainer"]["callbacks"]:
        if callback["class_path"].endswith(f".{REPORT}"):
            callback["init_args"].update(metrics_path=str(folder / "metrics.json"), command=command)
            break
    else:
        raise SystemExit(f"the config has no {REPORT} callback, which writes the results this script reads")
    return overlay


def run_seed(args: argparse.Namespace, seed: int, passthrough: list[str]) -> dict[str, Any]:
    """Fits and tests the router with `seed`; returns the test's `metrics.json` (`splits`, `sizes`, `metrics`)."""
    folder = args.out_dir / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    overlay, results = folder / "overlay.yaml", folder / "metrics.json"
    checkpoint = folder / "best.ckpt"
    common = ["--config", str(args.config), "--config", str(overlay)]
    fit = ["fit", *common, f"--seed_everything={seed}", f"--data.init_args.seed={seed}", *passthrough]
    test = ["test", *common, f"--ckpt_path={checkpoint}", *passthrough]
    record = folder / "report_run.json"
    if args.reuse and record.exists() and results.exists() and json.loads(record.read_text()) == [fit, test]:
        log.info("seed %d: reusing %s", seed, results)
        return json.loads(results.read_text())
    command = "python cli.py " + " ".join(test)
    overlay.write_text(yaml.safe_dump(overlay_config(yaml.safe_load(args.config.read_text()), folder, command)))
    results.unlink(missing_ok=True)
    checkpoint.unlink(missing_ok=True)
    (folder / "last.ckpt").unlink(missing_ok=True)  # a fit finds no earlier run's checkpoint to resume or keep
    for stage in (fit, test):
        log.info("seed %d: python cli.py %s", seed, " ".join(stage))
        cli_main(stage)
    if not results.exists():
        raise RuntimeError(f"seed {seed}: the test wrote no {results}")
    record.write_text(json.dumps([fit, test], indent=2) + "\n")
    return json.loads(results.read_text())


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def summary_table(runs: dict[int, dict[str, Any]]) -> str:
    """Rows: splits; the router's mean, sample std, min and max over seeds, the baselines, and how often it won."""
    first = next(iter(runs.values()))
    labels = [label for label, _ in BASELINES]
    columns = ["rows", "router mean", "router std", "router min", "router max", *labels, "router > best single"]
    lines = ["| split | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for split in first["splits"]:
        router = [run["metrics"][f"{split}/{ROUTER_KEY}"] for run in runs.values()]
        best_single = [run["metrics"][f"{split}/baseline/best_single"] for run in runs.values()]
        spread = statistics.stdev(router) if len(router) > 1 else float("nan")
        wins = sum(r > b for r, b in zip(router, best_single, strict=True))
        baselines = [percent(statistics.fmean(run["metrics"][f"{split}/{key}"] for run in runs.values()))
                     for _, key in BASELINES]  # fmt: skip
        cells = [
            str(first["sizes"].get(split, "n/a")), percent(statistics.fmean(router)), percent(spread),
            percent(min(router)), percent(max(router)), *baselines, f"{wins} of {len(router)}",
        ]  # fmt: skip
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(runs: dict[int, dict[str, Any]]) -> str:
    """Rows: seeds; columns: the router's accuracy on each split."""
    splits = next(iter(runs.values()))["splits"]
    lines = ["| seed | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for seed, run in runs.items():
        lines.append(f"| {seed} | " + " | ".join(percent(run["metrics"][f"{s}/{ROUTER_KEY}"]) for s in splits) + " |")
    return "\n".join(lines)


def baselines_vary(runs: dict[int, dict[str, Any]]) -> list[str]:
    """The baseline cells whose value is not the same for every seed (none, unless the split or data changed)."""
    splits = next(iter(runs.values()))["splits"]
    keys = [f"{split}/{key}" for split in splits for _, key in BASELINES]
    return [key for key in keys if len({run["metrics"][key] for run in runs.values()}) > 1]


def notes(args: argparse.Namespace, runs: dict[int, dict[str, Any]]) -> str:
    config = yaml.safe_load(args.config.read_text())
    model = config["model"]["init_args"]
    lines = [
        f"Config `{args.config}` (encoder `{model['encoder']}`, {model['pooling']} pooling, "
        f"{'frozen' if model['freeze_encoder'] else 'fine-tuned'} encoder); seeds {list(runs)}; runs under "
        f"`{args.out_dir}/seed_<S>/`. Each seed sets the initial weights and the training order; the split is the "
        "shipped one, so every seed is judged on the same rows.",
        "Accuracies are over the rows where at least one RM is right, as in "
        "[`offline_router.md`](offline_router.md); std is the sample standard deviation over seeds; "
        "`best single RM` is the best in hindsight on each split; the last column counts the seeds whose router "
        "is strictly above it.",
    ]
    varying = baselines_vary(runs)
    if varying:
        lines.append(f"**These baselines differ between seeds** (their mean is shown): {varying}.")
    return "\n".join(["", *lines])


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    own, passthrough = split_passthrough(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one fit and test per seed")
    parser.add_argument("--config", type=Path, default=Path("configs/offline_router.yaml"), help="the router config")
    parser.add_argument("--out-dir", type=Path, default=Path("checkpoints/offline_router_seeds"), help="run folders")
    parser.add_argument("--output", type=Path, default=Path("docs/offline_router_seeds.md"), help="the report")
    parser.add_argument("--reuse", action="store_true", help="keep a seed's finished run made with the same args")
    return parser.parse_args(own), passthrough


def main() -> dict[int, dict[str, Any]]:
    """Fits and tests every seed, prints the tables and writes the report; returns each seed's results."""
    args, passthrough = parse(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds repeats a seed: {args.seeds}")
    runs = {seed: run_seed(args, seed, passthrough) for seed in args.seeds}
    tables = summary_table(runs) + "\n\nRouter accuracy (%) per seed:\n\n" + per_seed_table(runs)
    print(tables)
    write_report(args.output, "Offline router: accuracy (%) over training seeds", notes(args, runs), tables)
    log.info("wrote %s", args.output)
    return runs


if __name__ == "__main__":
    main()
