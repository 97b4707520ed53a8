"""Running a command from Python with shell-style arguments: LightningCLI's (`fit`, ...) or one of rmrouter's jobs.

The CLI (`rmrouter.cli`) and the main job (`rmrouter.pipeline`) both run commands through these functions, so the
pipeline calls a function with arguments instead of the CLI's `main`, and neither module imports the other's.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable

import torch
from jsonargparse import ArgumentParser, lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from rmrouter.config_checks import ConfigError, check_config

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


class ShortErrors:
    """A parser whose errors are two lines: a short usage and the key at fault with what was wrong, naming the config
    files given (jsonargparse prints its whole usage and a nested report of every type it tried).
    `RMROUTER_DEBUG=1` (or jsonargparse's own debug switch) shows the full report."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("RMROUTER_DEBUG", "") not in ("", "0"):
            return super().error(message, ex)
        self._logger.error(message)
        configs = config_files(sys.argv)
        where = f"keys come from {', '.join(configs)} and the command line" if configs else "keys come from the command"
        command = " ".join(["python cli.py", *sys.argv[1:2]])
        sys.stderr.write(f"usage: {command} --config FILE.yaml [--key value ...]   ({command} --help lists the keys)\n")
        sys.stderr.write(f"config error: {short_parse_error(message)} ({where})\n")
        sys.exit(2)


class RMRouterParser(ShortErrors, LightningArgumentParser):
    """LightningCLI's parser with two-line errors."""


class FunctionParser(ShortErrors, ArgumentParser):
    """The parser of rmrouter's own jobs (`collect`, `table`, ...), with two-line errors."""


def negative_values_joined(args: list[str]) -> list[str]:
    """`--key -1e-4` as `--key=-1e-4`: argparse takes a value that starts with `-` and is not a plain `-1` or `-0.5`
    for an option, and would report `--key: expected one argument`."""
    joined: list[str] = []
    for arg in args:
        previous = joined[-1] if joined else ""
        if NEGATIVE_NUMBER.match(arg) and previous.startswith("--") and "=" not in previous:
            joined[-1] = f"{previous}={arg}"
        else:
            joined.append(arg)
    return joined


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf$|^-nan$", re.IGNORECASE)


def config_files(argv: list[str]) -> list[str]:
    """The files of every `--config FILE` (or `--config=FILE`) of a command line, in order."""
    return [arg.partition("=")[2] or following for arg, following in zip(argv, [*argv[1:], ""], strict=True)
            if arg == "--config" or arg.startswith("--config=")]  # fmt: skip


def short_parse_error(message: str) -> str:
    """jsonargparse's nested error report as one line: the key, and the innermost reason with the value given."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    keys = re.findall(r'Parser key "([^"]+)"', message)
    # an init argument of a class given by class_path: `model` then `beta` is `model.init_args.beta`
    key = ".init_args.".join(keys[:2]) if "class_path" in message else (keys[0] if keys else None)
    reasons = [
        line
        for line in lines
        if re.search(r"not accepted|[Uu]nrecognized|required|[Ee]xpected a <class '(?!NoneType)|Not of type", line)
    ]
    reason = (reasons[0] if reasons else lines[0]).lstrip("- ")
    owner = re.search(r"Problem with given class_path '([^']+)'", message)
    if owner and "not accepted" in reason:
        reason += f" by {owner.group(1)}"
    given = re.search(r"Given value: (.*)", message)
    if given and "Expected" in reason:
        reason += f", got {given.group(1)}"
    return f"{key}: {reason}" if key else reason


def logs_in(run_folder: str | None) -> str:
    """The logger's `save_dir` for a run whose folder is `run_folder` (None: Lightning's, the working directory)."""
    return run_folder if run_folder is not None else os.getcwd()


class RMRouterCLI(LightningCLI):
    """LightningCLI with the project's defaults: any LightningModule/DataModule by `class_path`, a bad config refused
    in one line that names its key before any class (and so any model) is built (`rmrouter.config_checks`), and one
    folder per run: `trainer.default_root_dir`. The logger writes there (TensorBoard in `<folder>/tensorboard` unless a
    config picks another logger, whose `save_dir` is linked to the folder too), as `ResumableCheckpoint` and the
    project's writers do when they are given no path (`rmrouter.callbacks.run_folder`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_class", RMRouterParser)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(LightningModule, LightningDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        default_logger = lazy_instance(TensorBoardLogger, save_dir=".", name="", version="tensorboard")
        parser.set_defaults({"trainer.logger": default_logger})
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir", compute_fn=logs_in)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        from rmrouter.callbacks.run_config import RunConfigInCheckpoint

        subcommand = str(self.subcommand) if self.subcommand else None
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        parser = self._parser(self.subcommand)
        self.trainer.callbacks.append(RunConfigInCheckpoint(parser.dump(config, skip_none=False)))

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


def instantiate(spec, annotation):
    """Builds `spec` (`class_path`/`init_args` dicts, as in a config file) as a value of type `annotation`, with the
    same jsonargparse machinery and checks as the CLI's configs, e.g. `instantiate(pool_yaml, RewardModelPool)`."""
    import json

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--value", type=annotation)
    spec = json.loads(json.dumps(spec))  # parsing changes the dicts it is given
    return parser.instantiate_classes(parser.parse_object({"value": spec})).value


def run_function(function: Callable, args: list[str]) -> None:
    """`function` with its arguments parsed from `args` (`--config file.yaml`, `--key value`), as jsonargparse's CLI."""
    from jsonargparse import auto_cli

    prepare_process()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    auto_cli(function, args=list(args), as_positional=False, parser_class=FunctionParser)
