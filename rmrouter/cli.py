"""The command line: LightningCLI for training (`fit`, `validate`, `test`, `predict`) plus rmrouter's own jobs.

    python cli.py fit --config configs/learned_rm/safety.yaml
    python cli.py collect --config configs/behaviour.yaml
    python cli.py table --behaviour checkpoints/behaviour/large.jsonl --output docs/behaviour_table_large.md
    python cli.py pipeline --config configs/pipeline.yaml

`rmrouter` (the console script) is the same entry point.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI


class RMRouterCLI(LightningCLI):
    """LightningCLI with the project's defaults: any LightningModule/DataModule by `class_path`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)


def _project_commands() -> dict[str, Callable]:
    from rmrouter.behaviour.collect import collect_behaviour
    from rmrouter.behaviour.table import write_behaviour_table
    from rmrouter.pipeline import run_pipeline

    return {"collect": collect_behaviour, "table": write_behaviour_table, "pipeline": run_pipeline}


PROJECT_COMMANDS = ("collect", "table", "pipeline")


def main(args: list[str] | None = None) -> None:
    given = args is not None
    args = list(args if given else sys.argv[1:])
    # SmolLM2's activations produce denormal floats that make CPU matmuls about 3x slower; flushing them to zero
    # changes no result that matters (they are below 1e-38) and has no effect on GPUs.
    torch.set_flush_denormal(True)
    if args and args[0] in PROJECT_COMMANDS:
        from jsonargparse import auto_cli

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

        rest = args[1:]
        if args[0] == "collect" and not any(arg.startswith("--command") for arg in rest):
            # the table names the command that wrote it, exactly as it was run
            rest += ["--command", shlex.join(["python", "cli.py", *args])]
        auto_cli(_project_commands()[args[0]], args=rest, as_positional=False)
        return
    if not given:
        RMRouterCLI(args=args)  # sys.argv stays: Lightning's multi-process launcher starts the other ranks from it
        return
    # Called with its own command (a stage of `pipeline`, a test): LightningCLI warns when sys.argv holds another one,
    # so it sees only the program name meanwhile.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        RMRouterCLI(args=args)
    finally:
        sys.argv = argv


if __name__ == "__main__":
    main()
