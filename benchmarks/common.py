"""What the benchmark scripts share: the real preference pairs they time, and how they write their report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from rmrouter.data import AlpacaEvalPairs, GSM8KSolutionPairs, HHRLHFHarmlessPairs, PreferenceRecord
from rmrouter.machine import describe_machine

PAIRS_ORIGIN = "GSM8K solutions + HH-RLHF harmless + AlpacaEval, round-robin"


def real_pairs(count: int) -> list[PreferenceRecord]:
    """`count` vendored pairs, taken in turn from GSM8K, HH-RLHF harmless and AlpacaEval."""
    sources = [GSM8KSolutionPairs(limit=count), HHRLHFHarmlessPairs(limit=count), AlpacaEvalPairs(limit=count)]
    columns = [source.load() for source in sources]
    interleaved = [column[index] for index in range(count) for column in columns if index < len(column)]
    return interleaved[:count]


def write_report(path: Path, title: str, notes: str, table: str) -> None:
    """A markdown report that names the exact command and machine that produced `table`."""
    command = shlex.join(["python", *sys.argv])  # quoted as a shell needs it, e.g. a list argument
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# {title}\n\nWritten by `{command}` ({describe_machine()}); do not edit by hand.\n{notes}\n\n{table}\n"
    )


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """A script's own arguments, and those after `--` that it hands to every CLI run unchanged."""
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def redirected_trainer(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """An overlay config of `config`'s trainer keys that sends everything one run writes into `folder`.

    The run's folder (`default_root_dir`, where the logger and every callback given no path write) moves there, and so
    do the checkpoints and files of callbacks that name their own (`dirpath`, `path` or `*_path`, kept by file name),
    so runs of one config side by side never overwrite each other's outputs, nor the default run's.
    """
    trainer = config.get("trainer", {})
    callbacks = []
    for callback in trainer.get("callbacks") or []:
        callback = {"class_path": callback} if isinstance(callback, str) else callback
        init_args = dict(callback.get("init_args") or {})
        for key, value in init_args.items():
            if key == "dirpath":
                init_args[key] = str(folder)
            elif (key == "path" or key.endswith("_path")) and isinstance(value, str):
                init_args[key] = str(folder / Path(value).name)
        callbacks.append({**callback, "init_args": init_args})
    return {"trainer": {"default_root_dir": str(folder), "callbacks": callbacks}}
