"""Building a serve config's pool and router outside the command line (for `RoutedReward.from_config`)."""

from __future__ import annotations

from pathlib import Path

from rmrouter.reward_models.pool import RewardModelPool
from rmrouter.routers.base import Router


def load_pool_and_router(path: str | Path) -> tuple[RewardModelPool, Router]:
    """The `pool` and `router` of a serve config (`configs/serve.yaml`), parsed and checked by jsonargparse as
    `python cli.py serve --config` parses them (relative paths in it are read relative to the file)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from rmrouter.serving.command import serve

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(serve, as_group=False, sub_configs=True)  # a pool given as a file path
    config = parser.instantiate_classes(parser.parse_args(["--config", str(path)]))
    return config.pool, config.router
