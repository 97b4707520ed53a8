"""Behaviour collection: run every RM of a pool once over labelled preference pairs.

`Trainer.predict` runs the pool (`PoolScorer`, a LightningModule whose `predict_step` scores a batch with every RM) on
the device asked for, with Lightning's progress bar, and `BehaviourWriter` (a `BasePredictionWriter`) appends each
batch's records as it is scored. Resumable (pairs already in the output file are not scored again) and deterministic:
batches are fixed slices of the pair list, so a resumed run scores exactly the batches an uninterrupted run would,
and writes the same bytes.

Each run over a file is recorded beside it (`runs_path`, e.g. `large.runs.json`): the command, commit and machine,
each RM's dtype and seconds, the pairs it scored; a resumed collection adds a run. `python cli.py ship` copies them
into a shipped set's manifest, so its provenance comes from the collection itself.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from rmrouter.behaviour.table import write_table
from rmrouter.data.behaviour import BehaviourRecord, drop_torn_tail, read_behaviour
from rmrouter.data.records import PreferenceRecord
from rmrouter.data.sources import PreferenceSource
from rmrouter.machine import current_commit, describe_machine
from rmrouter.reward_models.pool import RewardModelPool

log = logging.getLogger(__name__)

COLLECT_COMMAND = (
    "`python cli.py collect` (the default: `python cli.py collect --config configs/behaviour.yaml`, which "
    "`bash scripts/run.sh` runs; it only rescores missing pairs)"
)


def load_pairs(data: list[PreferenceSource]) -> list[PreferenceRecord]:
    """Every source's pairs in order; ids must be unique because resume keys on them."""
    pairs = [pair for source in data for pair in source.load()]
    seen: set[str] = set()
    for pair in pairs:
        if pair.id in seen:
            raise ValueError(f"pair id '{pair.id}' occurs twice across the data sources: ids must be unique")
        seen.add(pair.id)
    return pairs


def run_collect(args: list[str]) -> None:
    """`python cli.py collect ARGS` from Python; its table names that command exactly, unless `--command` is given."""
    from rmrouter.commands import run_function

    if not any(arg.startswith("--command") for arg in args):
        args = [*args, "--command", shlex.join(["python", "cli.py", "collect", *args])]
    run_function(collect_behaviour, args)


def collect_behaviour(
    pool: RewardModelPool,
    data: list[PreferenceSource],
    output: Path = Path("checkpoints/behaviour/behaviour.jsonl"),
    table: Path | None = Path("checkpoints/behaviour/table.md"),
    batch_size: int = 16,
    device: str = "cpu",
    max_batches: int | None = None,
    command: str | None = None,
) -> list[BehaviourRecord]:
    """Scores every pair with every RM of the pool, appends behaviour records to `output`, writes the table.

    Args:
        pool: The reward models (a `RewardModelPool`, e.g. `configs/pool/default.yaml`).
        data: Labelled preference-pair sources, read in order.
        output: The behaviour file (JSON lines). An existing file is resumed: its pairs are not scored again.
        table: Where to write the RM x domain accuracy table (markdown); None writes none.
        batch_size: Pairs per batch; each RM scores `2 * batch_size` responses per call.
        device: Where the RMs run (`cpu`, `cuda`, `cuda:1`, ...).
        max_batches: Stop after scoring this many batches (the rest is picked up by the next run).
        command: The command line the table names as its origin; `python cli.py collect ...` passes its own.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(data)
    torn = drop_torn_tail(output)
    if torn:
        log.warning("%s: dropped its unfinished last line (%d bytes, a stopped collection's); its pairs are scored "
                    "again", output, torn)  # fmt: skip
    done = set()
    if output.is_file():
        done = {record.pair.id for record in read_behaviour(output, pool.names, allow_empty=True)}
    _warn_stale(output, done - {pair.id for pair in pairs})
    batches = [pairs[start : start + batch_size] for start in range(0, len(pairs), batch_size)]
    todo = [batch for batch in batches if any(pair.id not in done for pair in batch)]
    if max_batches is not None:
        todo = todo[:max_batches]
    scorer = PoolScorer(pool)
    log.info("%d pairs, %d already in %s, %d batches to score", len(pairs), len(done), output, len(todo))
    runs = CollectionRuns(output, fresh=not done)
    run = runs.start(command or COLLECT_COMMAND, pool, batch_size, device, scorer.seconds)
    if todo:
        with open(output, "a", encoding="utf-8") as handle:
            writer = BehaviourWriter(handle, done, pool.names, runs, run)
            accelerator, devices = lightning_device(device)
            trainer = Trainer(
                accelerator=accelerator, devices=devices, logger=False, enable_checkpointing=False,
                enable_model_summary=False, default_root_dir=output.parent, callbacks=[writer],
            )  # fmt: skip
            # every batch to score is a whole slice of `batch_size` but the pair list's last, which comes last: cut
            # in order, their pairs make exactly those batches again
            todo_pairs = [pair for batch in todo for pair in batch]
            loader = torch.utils.data.DataLoader(todo_pairs, batch_size=batch_size, collate_fn=_as_is)
            trainer.predict(scorer, loader, return_predictions=False)
    records = read_behaviour(output, pool.names, allow_empty=True)
    if todo:
        timing = ", ".join(f"{name} {s:.1f}s" for name, s in scorer.seconds.items())
        log.info("scored %d batches; time per RM: %s", len(todo), timing)
    if table is not None and records:
        write_table(records, pool.names, Path(table), output, f"`{command}`" if command else COLLECT_COMMAND)
    return records


class PoolScorer(LightningModule):
    """The pool as a LightningModule: `predict_step` scores a batch of pairs with every RM, `[B, N, 2]` (NaN where an
    RM could not judge a pair, or scored a side infinite), adding each RM's seconds to `seconds`."""

    def __init__(self, pool: RewardModelPool) -> None:
        super().__init__()
        self.pool = pool
        self.seconds = dict.fromkeys(pool.names, 0.0)

    def transfer_batch_to_device(self, batch: list[PreferenceRecord], device, dataloader_idx: int):
        return batch  # texts: each RM tokenizes them onto its own device

    def predict_step(self, batch: list[PreferenceRecord], batch_idx: int) -> torch.Tensor:
        return _finite_or_abstain(_score_batch(self.pool, batch, self.seconds), self.pool.names)


class BehaviourWriter(BasePredictionWriter):
    """Appends each scored batch's records (its pairs not already in the file) to the open behaviour file, synced to
    disk, and records the run's progress: a crash loses at most the batch being scored."""

    def __init__(self, handle, done: set[str], names: list[str], runs: CollectionRuns, run: dict[str, Any]) -> None:
        super().__init__(write_interval="batch")
        self.handle, self.done, self.names, self.runs, self.run = handle, done, names, runs, run
        self.started = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        scored = [
            BehaviourRecord(pair, {name: tuple(sides) for name, sides in zip(self.names, row, strict=True)})
            for pair, row in zip(batch, prediction.tolist(), strict=True)
            if pair.id not in self.done
        ]
        self.handle.write("".join(json.dumps(record.to_dict(), ensure_ascii=False) + "\n" for record in scored))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.run["pairs"] += len(scored)
        self.run["wall_seconds"] = round(time.perf_counter() - self.started, 1)
        self.runs.save()


def lightning_device(device: str) -> tuple[str, int | list[int]]:
    """`cpu`, `cuda` or `cuda:<i>` as the Trainer's `accelerator` and `devices` (one device: the file is written in
    order by one process)."""
    if device == "cpu":
        return "cpu", 1
    if device == "cuda":
        return "gpu", 1
    if device.startswith("cuda:") and device[5:].isdigit():
        return "gpu", [int(device[5:])]
    raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")


def _as_is(batch: list[PreferenceRecord]) -> list[PreferenceRecord]:
    return batch


def _finite_or_abstain(scores: torch.Tensor, names: list[str]) -> torch.Tensor:
    """`[B, N, 2]` scores with a pair an RM scored infinite on either side made that RM's abstention (NaN), counted
    and logged: a behaviour file holds finite scores or null."""
    infinite = scores.isinf().any(dim=-1)  # [B, N]
    if infinite.any():
        counts = {name: int(count) for name, count in zip(names, infinite.sum(dim=0).tolist(), strict=True) if count}
        log.warning("infinite scores made these RMs abstain on pairs of this batch: %s", counts)
        scores = scores.masked_fill(infinite[..., None], float("nan"))
    return scores


def runs_path(output: Path) -> Path:
    """Where the runs of a collection into `output` are recorded: `large.jsonl` -> `large.runs.json`."""
    return output.with_name(output.name.split(".")[0] + ".runs.json")


class CollectionRuns:
    """The record of every run that wrote a behaviour file, kept beside it and rewritten whole after each batch.

    Args:
        output: The behaviour file.
        fresh: The file holds no record yet, so earlier runs (of a deleted file) are forgotten.
    """

    def __init__(self, output: Path, fresh: bool) -> None:
        self.path = runs_path(output)
        self.runs: list[dict[str, Any]] = []
        if not fresh and self.path.is_file():
            self.runs = json.loads(self.path.read_text(encoding="utf-8"))

    def start(
        self, command: str, pool: RewardModelPool, batch_size: int, device: str, seconds: dict[str, float]
    ) -> dict[str, Any]:
        """A new run, whose `seconds` per RM is the live dict the scoring adds to."""
        run = {
            "command": command,
            "commit": current_commit(),
            "machine": describe_machine(),
            "device": device,
            "batch_size": batch_size,
            "dtypes": {rm.name: _dtype_name(rm) for rm in pool.reward_models},
            "pairs": 0,
            "wall_seconds": 0.0,
            "seconds": seconds,
        }
        self.runs.append(run)
        return run

    def save(self) -> None:
        runs = [{**run, "seconds": {name: round(s, 1) for name, s in run["seconds"].items()}} for run in self.runs]
        text = json.dumps(runs, indent=1) + "\n"
        partial = self.path.with_name(f".{self.path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, self.path)


def _dtype_name(rm: torch.nn.Module) -> str:
    """The dtype an RM computes in (its first floating-point weight's), or `none` for an RM without weights."""
    weight = next((p for p in rm.parameters() if p.is_floating_point()), None)
    return str(weight.dtype).removeprefix("torch.") if weight is not None else "none"


def _warn_stale(output: Path, stale: set[str]) -> None:
    # Records of pairs the data no longer gives (a config changed since) would still train the offline router.
    if stale:
        log.warning(
            "%s holds %d pairs that the configured data no longer gives (e.g. %s); they stay in the file, the table "
            "and whatever reads it: delete the file to collect the configured data alone",
            output,
            len(stale),
            sorted(stale)[0],
        )


def _score_batch(pool: RewardModelPool, batch: list[PreferenceRecord], seconds: dict[str, float]) -> torch.Tensor:
    """`[B, N, 2]`: every RM's scores of each pair's chosen and rejected side (NaN where it could not judge)."""
    prompts = [pair.prompt for pair in batch]
    chosen = [pair.chosen for pair in batch]
    rejected = [pair.rejected for pair in batch]
    references = [pair.reference for pair in batch]
    columns = []
    for rm in pool.reward_models:
        start = time.perf_counter()
        scores_chosen, scores_rejected = pool.score_pairs(rm, prompts, chosen, rejected, references)
        seconds[rm.name] += time.perf_counter() - start
        columns.append(torch.stack([scores_chosen, scores_rejected], dim=1))
    return torch.stack(columns, dim=1)
