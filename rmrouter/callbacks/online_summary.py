"""The closing summary of an online DPO run: what was trained, what the routing cost and which RM each kind of prompt
went to, how the losses moved, where the outputs are.

`OnlineSummary` keeps the per-step values the module logged (`train/*`), so the summary covers the whole run even
after a resume with `--ckpt_path` (the history is in its `state_dict`). At the end of the fit rank zero logs the
summary and, with `path`, writes it as markdown. Under several processes the per-domain routing table counts rank
zero's pairs only (the router's totals above it count every rank's).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from rmrouter.callbacks.run_folder import in_run_folder
from rmrouter.callbacks.smoke_run import writes_artifacts
from rmrouter.routers.base import Router

log = logging.getLogger(__name__)

# (logged name, how the summary calls it); the trend is the mean over the first third of the steps vs the last third.
TRENDS = (
    ("train/dpo_loss", "DPO loss"),
    ("train/reward_margin", "implicit reward margin"),
    ("train/reward_acc", "implicit reward accuracy"),
    ("train/implicit_kl", "implicit KL to the reference"),
    ("train/response_length", "trained response length (tokens)"),
    ("train/eos_rate", "share of samples that ended (EOS)"),
)
COUNTS = ("train/pairs", "train/candidate_pairs")


def thirds(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last third of `values` (at least one value each; NaN for an empty list)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    size = max(len(finite) // 3, 1)
    return sum(finite[:size]) / size, sum(finite[-size:]) / size


def _shown(path: str) -> str:
    """`path` relative to the working directory when it lies inside it (Lightning makes checkpoint folders absolute)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)


def cost_clause(router: Router) -> str:
    """What the router's RM calls cost, in the pool's unit (`RewardModelPool.costs`); nothing when it has none."""
    if router.costs is None:
        return ""
    return f", costing {router.cost_total:.4g} ({router.cost_total / max(router.pairs_routed, 1):.4g} per pair)"


class OnlineSummary(Callback):
    """Collects the per-step `train/*` values of an online DPO fit and reports the run when it ends.

    Args:
        path: Where rank zero writes the summary as markdown; None: `summary.md` in the run's folder
            (`trainer.default_root_dir`).
        title: The markdown heading.
    """

    FILE_NAME = "summary.md"

    def __init__(self, path: str | None = None, title: str = "Online DPO run summary") -> None:
        self.path = Path(path) if path is not None else None
        self.title = title
        self.history: dict[str, list[float]] = {}
        self.routed: dict[str, list[int]] = {}  # domain -> pairs routed to each RM (this rank's pairs)
        self.seconds = 0.0
        self._started: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        # The module's values of this step only: one it did not log (no DPO loss on a step without a pair) is NaN.
        outputs = outputs if isinstance(outputs, dict) else {}
        values = outputs.get("step_values", {})
        for name in (*(name for name, _ in TRENDS), *COUNTS):
            self.history.setdefault(name, []).append(values.get(name, math.nan))
        router = next((cb for cb in trainer.callbacks if isinstance(cb, Router)), None)
        for domain, rm in outputs.get("routing", []):
            if router is not None and rm >= 0:
                self.routed.setdefault(domain, [0] * len(router.rm_names))[rm] += 1

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self._started = None
        self._report(trainer)

    @rank_zero_only
    def _report(self, trainer: Trainer) -> None:
        text = self.render(trainer)
        log.info("\n%s", text)
        path = in_run_folder(trainer, self.path, self.FILE_NAME)
        if writes_artifacts(trainer, path):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            log.info("online summary written to %s", path)

    def render(self, trainer: Trainer) -> str:
        """The summary as markdown."""
        router = next((cb for cb in trainer.callbacks if isinstance(cb, Router)), None)
        steps = trainer.global_step
        trained = int(sum(v for v in self.history.get("train/pairs", []) if math.isfinite(v)))
        lines = [f"## {self.title}", ""]
        lines += [
            f"- steps: {steps} in {self.seconds:.0f} s ({self.seconds / max(steps, 1):.1f} s per step on "
            f"{trainer.strategy.root_device.type}, {trainer.world_size} process(es))",
            f"- pairs trained: {trained}",
        ]
        if router is not None:
            lines += [
                f"- router: `{type(router).__name__}`; {router.pairs_routed} pairs routed, {router.rm_calls} RM calls "
                f"({router.rm_calls / max(router.pairs_routed, 1):.2f} per pair){cost_clause(router)}",
                "",
                "| RM | selected |",
                "|---|---:|",
            ]
            total = max(int(router.selections.sum()), 1)
            lines += [
                f"| {name} | {100 * int(count) / total:.1f} % |"
                for name, count in zip(router.rm_names, router.selections.tolist(), strict=True)
            ]
            lines += self._routing_by_domain(router.rm_names)
        lines += ["", "| logged value | first third of steps | last third |", "|---|---:|---:|"]
        for name, label in TRENDS:
            first, last = thirds(self.history.get(name, []))
            if math.isfinite(first):
                lines.append(f"| {label} (`{name}`) | {first:.4g} | {last:.4g} |")
        lines += ["", *self._where(trainer)]
        return "\n".join(lines) + "\n"

    def _routing_by_domain(self, rm_names: list[str]) -> list[str]:
        if not self.routed:
            return []
        lines = ["", "| prompt domain | pairs | " + " | ".join(rm_names) + " |", "|---|---:|" + "---:|" * len(rm_names)]
        for domain, counts in sorted(self.routed.items()):
            shares = " | ".join(f"{100 * n / sum(counts):.0f} %" for n in counts)
            lines.append(f"| {domain} | {sum(counts)} | {shares} |")
        return lines

    @staticmethod
    def _where(trainer: Trainer) -> list[str]:
        where = []
        logger = trainer.logger
        log_dir = (
            (getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)) if logger is not None else None
        )
        if log_dir:
            log_dir = _shown(log_dir)
            if isinstance(logger, TensorBoardLogger):
                where.append(f"- TensorBoard logs: `{log_dir}` (`tensorboard --logdir {log_dir}`)")
            elif isinstance(logger, CSVLogger):
                where.append(
                    f"- CSV logs: `{log_dir}` (`metrics.csv`; a live run's sample completions: `samples.jsonl`)"
                )
            else:
                where.append(f"- {type(logger).__name__} logs: `{log_dir}`")
        checkpoint = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)), None)
        if checkpoint is not None and checkpoint.dirpath:
            where.append(f"- checkpoints: `{_shown(checkpoint.dirpath)}` (resume with `--ckpt_path last`)")
        return where

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": {k: list(v) for k, v in self.history.items()},
            "routed": {k: list(v) for k, v in self.routed.items()},
            "seconds": self.seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self.routed = {k: list(v) for k, v in state_dict["routed"].items()}
        self.seconds = float(state_dict["seconds"])
