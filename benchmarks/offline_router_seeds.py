"""The offline router over training seeds, against its baselines with a paired test: `docs/offline_router_seeds.md`.

`docs/offline_router.md` is one fit. This script repeats the shipped fit, test and predict through the project CLI
once per seed, on the same behaviour file and the same train/val/test/ood split (the split file's `seed` is left
alone), with the seed of the initial weights (`seed_everything`) and of the training order (`data.init_args.seed`)
set to each value:

    python cli.py fit     --config CONFIG --config OVERLAY --seed_everything S --data.init_args.seed S
    python cli.py test    --config CONFIG --config OVERLAY --ckpt_path OUT_DIR/seed_S/best.ckpt
    python cli.py predict --config CONFIG --config OVERLAY --ckpt_path OUT_DIR/seed_S/best.ckpt

(CONFIG is `configs/offline_router.yaml` unless `--config` names another.)

The overlay sends each run's checkpoints, prior, logs, results (`metrics.json`, from `OfflineRouterReport`) and
per-row routing decisions (`predictions.jsonl`, from `RoutingPredictionWriter`) to `<out-dir>/seed_S/`; the tables
are built from those files only. The baselines (random, single RMs, majority vote, data-label routing) are functions
of the split's behaviour labels alone, so they are the same for every seed.

The router is compared with the best of the baselines a user would choose instead (the best single RM in hindsight,
majority vote, data-label routing) on each split, row by row: per row, the share of seeds whose router was right,
minus the baseline's credit on that row; `rmrouter.stats.paired_test` over the rows where some RM is right.

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
from rmrouter.callbacks.routing_predictions import read_predictions
from rmrouter.cli import main as cli_main
from rmrouter.stats import paired_test, proportion_se

log = logging.getLogger("offline_router_seeds")

REPORT = "OfflineRouterReport"  # rmrouter.callbacks, by either import path
PREDICTIONS = "RoutingPredictionWriter"
(_, ROUTER_KEY), *BASELINES = ROWS  # "router_acc", then the baselines' (label, key)
COMPARED = ("best single RM", "majority vote (all RMs)", "data-label routing")  # what a user would choose instead


def overlay_config(
    config: dict[str, Any], folder: Path, command: str, predictions: str = "predictions.jsonl"
) -> dict[str, Any]:
    """The trainer keys that send one seed's run to `folder`, with the results report also writing `metrics.json`
    and the routing decisions going to `folder / predictions`."""
    overlay = redirected_trainer(config, folder)
    names = {callback["class_path"].rsplit(".", 1)[-1]: callback for callback in overlay["trainer"]["callbacks"]}
    for needed in (REPORT, PREDICTIONS):
        if needed not in names:
            raise SystemExit(f"the config has no {needed} callback, which writes what this script reads")
    names[REPORT]["init_args"].update(metrics_path=str(folder / "metrics.json"), command=command)
    names[PREDICTIONS]["init_args"].update(path=str(folder / predictions))
    return overlay


def other_checkpoint(checkpoint: str) -> str:
    """The checkpoint model selection is compared with: the final weights for the monitored best, and back."""
    return "last.ckpt" if checkpoint == "best.ckpt" else "best.ckpt"


def run_seed(args: argparse.Namespace, seed: int, passthrough: list[str]) -> dict[str, Any]:
    """Fits, tests and predicts with `seed`; returns the test's `metrics.json` (`splits`, `sizes`, `metrics`) with
    the per-row decisions added as `rows`, and those of the other checkpoint (`other_checkpoint`) as `other_rows`."""
    folder = args.out_dir / f"seed_{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    overlay, other_overlay, results = folder / "overlay.yaml", folder / "overlay_other.yaml", folder / "metrics.json"
    checkpoint, other = folder / args.checkpoint, folder / other_checkpoint(args.checkpoint)
    common = ["--config", str(args.config), "--config", str(overlay)]
    fit = ["fit", *common, f"--seed_everything={seed}", f"--data.init_args.seed={seed}", *passthrough]
    test = ["test", *common, f"--ckpt_path={checkpoint}", *passthrough]
    predict = ["predict", *common, f"--ckpt_path={checkpoint}", *passthrough]
    predict_other = ["predict", "--config", str(args.config), "--config", str(other_overlay), f"--ckpt_path={other}",
                     *passthrough]  # fmt: skip
    record, predictions = folder / "report_run.json", folder / "predictions.jsonl"
    other_predictions = folder / "predictions_other.jsonl"
    stages = [fit, test, predict, predict_other]
    done = record.exists() and results.exists() and predictions.exists() and other_predictions.exists()
    if args.reuse and done and json.loads(record.read_text()) == stages:
        log.info("seed %d: reusing %s", seed, results)
        return with_rows(json.loads(results.read_text()), predictions, other_predictions)
    command = "python cli.py " + " ".join(test)
    config = yaml.safe_load(args.config.read_text())
    overlay.write_text(yaml.safe_dump(overlay_config(config, folder, command)))
    other_overlay.write_text(yaml.safe_dump(overlay_config(config, folder, command, other_predictions.name)))
    for stale in (results, predictions, other_predictions, folder / "best.ckpt", folder / "last.ckpt"):
        stale.unlink(missing_ok=True)  # a fit finds no earlier run's checkpoint to resume or keep
    for stage in stages:
        log.info("seed %d: python cli.py %s", seed, " ".join(stage))
        cli_main(stage)
    for output in (results, predictions, other_predictions):
        if not output.exists():
            raise RuntimeError(f"seed {seed}: the runs wrote no {output}")
    record.write_text(json.dumps(stages, indent=2) + "\n")
    return with_rows(json.loads(results.read_text()), predictions, other_predictions)


def with_rows(results: dict[str, Any], predictions: Path, other_predictions: Path) -> dict[str, Any]:
    header, rows = read_predictions(predictions)
    return {
        **results,
        "rm_names": header["rm_names"],
        "rows": rows,
        "other_rows": read_predictions(other_predictions)[1],
    }


def baseline_credits(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per compared baseline, its credit on each row (rows where some RM is right), in the order of `rows`."""
    num_rms = len(rows[0]["right"])
    alone = [sum(row["right"][n] for row in rows) for n in range(num_rms)]
    best = max(range(num_rms), key=lambda n: (alone[n], -n))  # the first of equals, as the metrics pick it
    return {
        "best single RM": [float(row["right"][best]) for row in rows],
        "majority vote (all RMs)": [row["majority_credit"] for row in rows],
        "data-label routing": [float(row["label_route"] >= 0 and row["right"][row["label_route"]]) for row in rows],
    }


def routable_rows(runs: dict[int, dict[str, Any]], split: str, key: str = "rows") -> list[list[dict[str, Any]]]:
    """Per seed, its predictions on the rows of `split` where some RM is right, checked to be the same rows."""
    per_seed = [[row for row in run[key] if row["split"] == split and any(row["right"])] for run in runs.values()]
    ids = [row["id"] for row in per_seed[0]]
    if any([row["id"] for row in rows] != ids for rows in per_seed):
        raise RuntimeError(f"{split}: the seeds' predictions are not on the same rows in the same order")
    return per_seed


def router_credit(per_seed: list[list[dict[str, Any]]]) -> list[float]:
    """Per row, the share of seeds whose router was right."""
    return [statistics.fmean(float(rows[i]["right"][rows[i]["routed"]]) for rows in per_seed)
            for i in range(len(per_seed[0]))]  # fmt: skip


def paired_comparisons(runs: dict[int, dict[str, Any]], split: str) -> tuple[str, float, Any]:
    """The best compared baseline on `split` (name, accuracy) and the paired test of the router against it."""
    per_seed = routable_rows(runs, split)
    router = router_credit(per_seed)
    credits = baseline_credits(per_seed[0])
    name = max(COMPARED, key=lambda label: (statistics.fmean(credits[label]), -COMPARED.index(label)))
    return name, statistics.fmean(credits[name]), paired_test(router, credits[name])


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def difference_cells(test: Any) -> list[str]:
    """A paired test's cells: the mean difference in points with its 95 % interval, p, and the verdict."""
    low, high = test.mean - 1.96 * test.se, test.mean + 1.96 * test.se
    return [f"{100 * test.mean:+.1f} ({100 * low:+.1f}, {100 * high:+.1f})", f"{test.p_value:.3g}", test.verdict()]


def summary_table(runs: dict[int, dict[str, Any]]) -> str:
    """Rows: splits; the router's mean (with the standard error of that accuracy), sample std, min and max over seeds,
    the baselines, the ceiling, and the paired test against the best compared baseline."""
    first = next(iter(runs.values()))
    labels = [label for label, _ in BASELINES]
    columns = ["rows", "router mean ± se", "router std", "router min–max", *labels, "any RM right",
               "best baseline", "router − best (95% CI)", "p", "verdict"]  # fmt: skip
    lines = ["| split | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for split in first["splits"]:
        router = [run["metrics"][f"{split}/{ROUTER_KEY}"] for run in runs.values()]
        spread = statistics.stdev(router) if len(router) > 1 else float("nan")
        baselines = [percent(statistics.fmean(run["metrics"][f"{split}/{key}"] for run in runs.values()))
                     for _, key in BASELINES]  # fmt: skip
        best, best_accuracy, test = paired_comparisons(runs, split)
        mean = statistics.fmean(router)
        cells = [
            str(first["sizes"].get(split, "n/a")), f"{percent(mean)} ± {percent(proportion_se(mean, test.rows))}",
            percent(spread), f"{percent(min(router))}–{percent(max(router))}", *baselines,
            percent(first["metrics"][f"{split}/any_right"]), f"{best} {percent(best_accuracy)}",
            *difference_cells(test),
        ]  # fmt: skip
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_table(runs: dict[int, dict[str, Any]], checkpoint: str) -> str:
    """Rows: splits; the router at `checkpoint` against the same fits at the other checkpoint, row by row."""
    other = other_checkpoint(checkpoint)
    first = next(iter(runs.values()))
    columns = ["routable rows", f"at {checkpoint}", f"at {other}", f"{checkpoint} − {other} (95% CI)", "p", "verdict"]
    lines = ["| split | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for split in first["splits"]:
        main = router_credit(routable_rows(runs, split))
        compared = router_credit(routable_rows(runs, split, "other_rows"))
        test = paired_test(main, compared)
        cells = [
            str(len(main)), percent(statistics.fmean(main)), percent(statistics.fmean(compared)),
            *difference_cells(test),
        ]  # fmt: skip
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versus_table(runs: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]], label: str) -> str:
    """Rows: splits; this router against another one's runs on the same rows (the share of seeds right on each)."""
    first = next(iter(runs.values()))
    columns = ["routable rows", "this router", label, f"this − {label} (95% CI)", "p", "verdict"]
    lines = ["| split | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for split in first["splits"]:
        mine, theirs = routable_rows(runs, split), routable_rows(other, split)
        if [row["id"] for row in mine[0]] != [row["id"] for row in theirs[0]]:
            raise RuntimeError(f"{split}: the two routers' predictions are not on the same rows")
        ours, compared = router_credit(mine), router_credit(theirs)
        test = paired_test(ours, compared)
        cells = [str(len(ours)), percent(statistics.fmean(ours)), percent(statistics.fmean(compared)),
                 *difference_cells(test)]  # fmt: skip
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_runs(folder: Path, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """Another router's finished runs (`--out-dir` of an earlier call of this script), per seed."""
    runs = {}
    for seed in seeds:
        run = folder / f"seed_{seed}"
        files = [run / "metrics.json", run / "predictions.jsonl", run / "predictions_other.jsonl"]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise SystemExit(f"--versus {folder}: seed {seed} has no {missing}; run this script for it first")
        runs[seed] = with_rows(json.loads(files[0].read_text()), files[1], files[2])
    return runs


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
        f"`{args.out_dir}/seed_<S>/`, evaluated at `{args.checkpoint}` ("
        + ("the monitored best on val, as the prior" if args.checkpoint == "best.ckpt" else "the final weights")
        + "). Each seed sets the initial weights and the training order; the split is the "
        "shipped one, so every seed is judged on the same rows.",
        "Accuracies are over the rows where at least one RM is right, as in "
        "[`offline_router.md`](offline_router.md) (`any RM right` is that share of all rows); `se` is the standard "
        "error of the router's mean accuracy on that many rows, std the sample standard deviation over seeds. "
        "`best single RM` is the best RM used alone, chosen in hindsight on each split. `best baseline` is the best "
        "of best single RM, majority vote and data-label routing on the split; the router is compared with it row by "
        "row (the share of seeds right on a row minus the baseline's credit there), with a paired test over the "
        "rows: `verdict` is `no difference` when p >= 0.05.",
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
    parser.add_argument(
        "--versus",
        type=Path,
        default=None,
        help="another router's --out-dir of the same seeds and rows, compared row by row",
    )
    parser.add_argument("--versus-label", default="the other router", help="that router's name in the table")
    parser.add_argument(
        "--checkpoint", choices=["best.ckpt", "last.ckpt"], default="best.ckpt",
        help="what test and predict evaluate: the checkpoint model selection kept (the prior's), or the final weights",
    )  # fmt: skip
    return parser.parse_args(own), passthrough


def main() -> dict[int, dict[str, Any]]:
    """Fits and tests every seed, prints the tables and writes the report; returns each seed's results."""
    args, passthrough = parse(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds repeats a seed: {args.seeds}")
    runs = {seed: run_seed(args, seed, passthrough) for seed in args.seeds}
    other = other_checkpoint(args.checkpoint)
    tables = (
        summary_table(runs)
        + "\n\nRouter accuracy (%) per seed:\n\n"
        + per_seed_table(runs)
        + f"\n\nModel selection: the same fits evaluated at `{args.checkpoint}` and at `{other}`, row by row (the "
        "share of seeds right on each row):\n\n" + selection_table(runs, args.checkpoint)
    )
    if args.versus is not None:
        other = read_runs(args.versus, list(runs))
        tables += (
            f"\n\nAgainst {args.versus_label} (`{args.versus}`), fitted on the same split with the same seeds, row by "
            "row (the share of seeds right on each row):\n\n" + versus_table(runs, other, args.versus_label)
        )
    print(tables)
    write_report(args.output, "Offline router: accuracy (%) over training seeds", notes(args, runs), tables)
    log.info("wrote %s", args.output)
    return runs


if __name__ == "__main__":
    main()
