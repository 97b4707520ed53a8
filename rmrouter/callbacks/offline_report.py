"""Writes the offline router's results table (router vs baselines per evaluated split) after `test`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from rmrouter.callbacks.run_folder import in_run_folder
from rmrouter.callbacks.smoke_run import writes_artifacts
from rmrouter.machine import describe_machine

log = logging.getLogger(__name__)

ROWS = (
    ("router (argmax BT)", "router_acc"),
    ("random RM", "baseline/random"),
    ("best single RM", "baseline/best_single"),
    ("majority vote (all RMs)", "baseline/majority_vote"),
    ("data-label routing", "baseline/data_label"),
)


def results_table(
    metrics: dict[str, float],
    splits: list[str],
    rm_names: list[str],
    sizes: dict[str, int] | None = None,
    router_label: str = ROWS[0][0],
) -> str:
    """Markdown: rows are the router and its baselines, columns the splits; accuracies over rows some RM gets right.

    `sizes` (rows per split) becomes a first `rows` line when given; `router_label` names the router's row.
    """
    lines = ["| method | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    if sizes is not None:
        lines.append("| rows | " + " | ".join(str(sizes.get(s, "n/a")) for s in splits) + " |")
    for label, key in [(router_label, ROWS[0][1]), *ROWS[1:]]:
        lines.append(f"| {label} | " + " | ".join(_percent(metrics, f"{s}/{key}") for s in splits) + " |")
    for name in rm_names:
        cells = " | ".join(_percent(metrics, f"{s}/baseline/single/{name}") for s in splits)
        lines.append(f"| single: {name} | {cells} |")
    for name in rm_names:
        cells = " | ".join(_percent(metrics, f"{s}/coverage/{name}") for s in splits)
        lines.append(f"| coverage: {name} (share of all rows) | {cells} |")
    lines.append(
        "| any RM right (share of all rows) | " + " | ".join(_percent(metrics, f"{s}/any_right") for s in splits) + " |"
    )
    return "\n".join(lines)


def evaluated_path(path: Path, datamodule: object) -> Path:
    """`path`, or for a run that evaluates a whole other file (`BehaviourDataModule(evaluate_all=True)`, whose
    `evaluation_name` is the file's stem) `<stem>.<name><suffix>` beside it, so the main run's file stays as it is."""
    name = getattr(datamodule, "evaluation_name", None)
    return path if name is None else path.with_name(f"{path.stem}.{name}{path.suffix}")


def _percent(metrics: dict[str, float], key: str) -> str:
    return f"{100 * metrics[key]:.1f}" if key in metrics else "n/a"


class OfflineRouterReport(Callback):
    """After `test`, writes the router-vs-baselines table of every test split (`test`, `ood`) to a markdown file.

    Args:
        command: The command that regenerates it, quoted in the file.
        path: The markdown file; None: `report.md` in the run's folder (`trainer.default_root_dir`).
        about: A paragraph on the data, e.g. what the `ood` split holds, written above the table.
        metrics_path: A JSON file that also receives the numbers behind the table (`splits`, `sizes` and every
            logged `metrics` value), for scripts that compare runs; None writes none.
    """

    FILE_NAME = "report.md"

    def __init__(self, command: str, path: str | None = None, about: str | None = None,
                 metrics_path: str | None = None):  # fmt: skip
        self.path = None if path is None else Path(path)
        self.command = command
        self.about = about
        self.metrics_path = None if metrics_path is None else Path(metrics_path)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        configured = in_run_folder(trainer, self.path, self.FILE_NAME)
        path = evaluated_path(configured, trainer.datamodule)
        if not trainer.is_global_zero or not writes_artifacts(trainer, path):
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        splits = list(getattr(trainer.datamodule, "test_split_names", ["test"]))
        hparams = pl_module.hparams
        mode = "frozen encoder, cached embeddings" if hparams.freeze_encoder else "fine-tuned encoder"
        sizes = getattr(trainer.datamodule, "split_sizes", {})
        router_label = getattr(pl_module, "router_label", ROWS[0][0])
        table = results_table(metrics, splits, list(hparams.rm_names), sizes, router_label)
        about = f"{self.about.strip()}\n\n" if self.about else ""
        if path != configured:  # evaluate_all: the configured paragraph is about the main run's data
            about = (
                f"Every row of `{trainer.datamodule.path}` is evaluated (`evaluate_all`); data-label routing was "
                "fitted on those same rows, so its row is in-sample.\n\n"
            )
        print(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Offline router: accuracy (%) against its baselines\n\n"
            f"Written by `{self.command}` ({describe_machine()}); do not edit by hand.\n"
            f"Encoder `{hparams.encoder}` ({hparams.pooling} pooling, {mode}); checkpoint `{trainer.ckpt_path}`; "
            f"split sizes {sizes}.\n"
            "Router, random, single, majority-vote and data-label accuracies are over the rows where at least one RM "
            "is right (the oracle scores 100 there); the last row is the share of all rows where some RM is right. "
            "An RM that cannot judge a row (no reference answer) is ineligible there: the router and the random RM "
            "choose among the eligible RMs, `single: <rm>` is over the rows the RM can judge and `coverage: <rm>` "
            "the share of rows it can judge. `best single RM` is the best RM used alone on every row (a row it "
            "cannot judge gets no label), chosen in hindsight on each column. Data-label routing sends each row to "
            "the RM best on its domain (else its dataset) in the train split. `ood/<domain>` columns are the `ood` "
            "rows of one domain.\n\n"
            f"{about}{table}\n",
            encoding="utf-8",
        )
        log.info("wrote %s", path)
        if self.metrics_path is not None:
            metrics_path = evaluated_path(self.metrics_path, trainer.datamodule)
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            results = {"splits": splits, "sizes": sizes, "metrics": metrics}
            metrics_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            log.info("wrote %s", metrics_path)
