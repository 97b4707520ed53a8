"""The command line: LightningCLI for training (`fit`, `validate`, `test`, `predict`) plus rmrouter's own jobs.

    python cli.py fit --config configs/learned_rm/safety.yaml
    python cli.py collect --config configs/behaviour.yaml
    python cli.py table --behaviour rmrouter/shipped/behaviour_large --output docs/behaviour_table_large.md
    python cli.py ship --behaviour_config configs/behaviour_large.yaml --output rmrouter/shipped/behaviour_large
    python cli.py pipeline --config configs/pipeline.yaml
    python cli.py publish --config configs/publish.yaml
    python cli.py export --checkpoint checkpoints/online/live/last.ckpt
    python cli.py sweep --config configs/sweep.yaml
    python cli.py report --config configs/report.yaml
    python cli.py reproduce --config configs/reproduce.yaml
    python cli.py serve --config configs/serve.yaml

`rmrouter` (the console script) is the same entry point; `python cli.py --help` lists every command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from rmrouter.commands import (
    LIGHTNING_COMMANDS,
    RMRouterCLI,
    negative_values_joined,
    prepare_process,
    run_function,
    run_lightning,
)
from rmrouter.quiet import quiet_third_party

__all__ = ["RMRouterCLI", "main"]

LIGHTNING_HELP = {
    "fit": "train a LightningModule from a config (learned RMs, the offline router, online DPO)",
    "validate": "validate a trained checkpoint (--ckpt_path)",
    "test": "test a trained checkpoint; the offline router writes its report",
    "predict": "the offline router's decision on every test row (RoutingPredictionWriter)",
}
PROJECT_HELP = {
    "collect": "score labelled pairs with every RM of a pool: the behaviour file and its accuracy table",
    "table": "the accuracy table of an existing behaviour file",
    "probe": "cross-validated: how much routing learns beyond the data label on a behaviour file, before training",
    "ship": "keep a collected behaviour file in the repository: its scores, pool, heads and provenance",
    "pipeline": "the main job: learned RMs, behaviour, offline router, online DPO (writes under checkpoints/)",
    "publish": "copy the main job's tables and demo summary into docs/ and the README",
    "export": "an online DPO policy or a learned RM checkpoint as a folder transformers/peft load without rmrouter",
    "sweep": "train and evaluate every method for the same budget and seeds: the downstream table",
    "report": "regenerate docs/RESULTS.md from the runs' output files",
    "reproduce": "every published figure from this commit on this machine, stage by stage (resumable)",
    "serve": "a reward server: routed rewards over HTTP for OpenRLHF, verl or any trainer",
}


def _project_command(name: str) -> Callable:
    if name == "table":
        from rmrouter.behaviour.table import write_behaviour_table

        return write_behaviour_table
    if name == "probe":
        from rmrouter.behaviour.probe import run_probe

        return run_probe
    if name == "ship":
        from rmrouter.behaviour.shipped import ship

        return ship
    if name == "pipeline":
        from rmrouter.pipeline import run_pipeline

        return run_pipeline
    if name == "export":
        from rmrouter.export import export_checkpoint

        return export_checkpoint
    if name == "sweep":
        from rmrouter.sweep import run_sweep

        return run_sweep
    if name == "reproduce":
        from rmrouter.reproduce import reproduce

        return reproduce
    if name == "report":
        from rmrouter.report import write_report

        return write_report
    if name == "serve":
        from rmrouter.serving.command import serve

        return serve
    from rmrouter.publish import publish_docs

    return publish_docs


def usage() -> str:
    width = max(map(len, [*LIGHTNING_HELP, *PROJECT_HELP]))
    lines = ["usage: python cli.py <command> [--config FILE.yaml] [--key value ...]", "", "training (LightningCLI):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in LIGHTNING_HELP.items()]
    lines += ["", "rmrouter's jobs:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in PROJECT_HELP.items()]
    lines += ["", "`python cli.py <command> --help` shows a command's options."]
    return "\n".join(lines)


DEBUG_ENV = "RMROUTER_DEBUG"


def main(args: list[str] | None = None) -> None:
    """The command line. Run from the shell (`args` None), a user's mistake ends in one line on stderr: exit code 2
    for a config error, 1 for a data or model error (a missing or bad file, a model name that does not resolve);
    `--debug` or `RMROUTER_DEBUG=1` shows the traceback instead. From Python (`args` given) errors propagate."""
    if args is not None:
        _main(args)
        return
    debug = "--debug" in sys.argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    sys.argv = [arg for arg in sys.argv if arg != "--debug"]
    try:
        _main(None)
    except SystemExit as exit_:
        if not isinstance(exit_.code, str):
            raise
        print(exit_.code, file=sys.stderr)
        raise SystemExit(2 if exit_.code.startswith("config error:") else 1) from None
    except Exception as error:
        mistake = users_mistake(error)
        if debug or mistake is None:
            raise
        print(f"error: {mistake} (--debug shows where)", file=sys.stderr)
        raise SystemExit(1) from None


def users_mistake(error: BaseException) -> BaseException | None:
    """The user's mistake behind `error`: itself, or an error it was raised from or during (jsonargparse wraps the
    errors of the classes a config builds); None for anything else, whose traceback is then shown."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, user_errors()):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors that report a user's mistake in their message: a file, a record, a model name, a prior."""
    from rmrouter.data.jsonl import DataError
    from rmrouter.models.store import ModelNotAvailable
    from rmrouter.routers.prior import RouterPriorError

    return DataError, ModelNotAvailable, RouterPriorError, FileNotFoundError


def _main(args: list[str] | None) -> None:
    quiet_third_party()
    given = args is not None
    args = negative_values_joined(list(args if given else sys.argv[1:]))
    if not given:
        sys.argv[1:] = args
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return
    command, rest = args[0], args[1:]
    if command == "collect":  # its table names the command exactly as it was run
        from rmrouter.behaviour.collect import run_collect

        run_collect(rest)
        return
    if command in PROJECT_HELP:
        run_function(_project_command(command), rest)
        return
    if command not in LIGHTNING_COMMANDS and not command.startswith("-"):
        raise SystemExit(f"unknown command {command!r}\n\n{usage()}")
    if given:
        run_lightning(args)
        return
    prepare_process()
    # From the shell LightningCLI reads sys.argv itself (args=None: passing the same list again makes it warn), and
    # Lightning's multi-process launcher starts the other ranks from sys.argv.
    RMRouterCLI()
