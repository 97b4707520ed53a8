"""Running a command from Python with shell-style arguments: LightningCLI's (`fit`, ...) or one of rmrouter's jobs.

The CLI (`rmrouter.cli`) and the main job (`rmrouter.pipeline`) both run commands through these functions, so the
pipeline calls a function with arguments instead of the CLI's `main`, and neither module imports the other's.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from rmrouter.config_checks import ConfigError, check_config

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class RMRouterCLI(LightningCLI):
    """LightningCLI with the project's defaults: any LightningModule/DataModule by `class_path`, and a bad config
    refused in one line that names its key before any class (and so any model) is built (`rmrouter.config_checks`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        try:
            check_config(config.as_dict(), torch.cuda.is_available())
        except ConfigError as error:
            raise SystemExit(f"config error: {error}") from None


def prepare_process() -> None:
    """Process-wide settings every command runs with."""
    from rmrouter.quiet import quiet_third_party

    quiet_third_party()
    # SmolLM2's activations produce denormal floats that make CPU matmuls about 3x slower; flushing them to zero
    # changes no result that matters (they are below 1e-38) and has no effect on GPUs.
    torch.set_flush_denormal(True)


def run_lightning(args: list[str]) -> None:
    """One LightningCLI command from Python, e.g. `run_lightning(["fit", "--config", "configs/offline_router.yaml"])`.

    LightningCLI warns when it is given `args` while `sys.argv` holds a command of its own (the `pipeline` or a
    benchmark that runs it): here that is intended, so only that warning is silenced, and `sys.argv` is left alone.
    """
    prepare_process()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
        RMRouterCLI(args=list(args))


def run_function(function: Callable, args: list[str]) -> None:
    """`function` with its arguments parsed from `args` (`--config file.yaml`, `--key value`), as jsonargparse's CLI."""
    from jsonargparse import auto_cli

    prepare_process()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    auto_cli(function, args=list(args), as_positional=False)
