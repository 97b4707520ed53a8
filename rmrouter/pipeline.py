"""The main job on the embedded default: every stage that exists, each skipped when its output is already there.

1. Train the learned safety RM of the default pool (`fit` on its config) unless its checkpoint exists.
2. Collect behaviour records of the default pool (resumes a partial file) and write the accuracy table.
3. Train the offline router on those records unless its prior exists, then `test` it, which writes its results table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def run_pipeline(
    learned_rm_config: Path = Path("configs/learned_rm/safety.yaml"),
    learned_rm_checkpoint: Path = Path("checkpoints/learned_rm/safety/best.ckpt"),
    behaviour_config: Path = Path("configs/behaviour.yaml"),
    offline_router_config: Path = Path("configs/offline_router.yaml"),
    offline_router_prior: Path = Path("checkpoints/offline_router/prior.pt"),
    offline_router_checkpoint: Path = Path("checkpoints/offline_router/best.ckpt"),
    behaviour_args: list[str] | None = None,
) -> None:
    """Runs the pipeline's stages in order; each one is skipped or resumed when its output exists.

    Args:
        learned_rm_config: LightningCLI `fit` config of the learned RM the pool needs.
        learned_rm_checkpoint: Where that fit leaves the checkpoint the pool loads.
        behaviour_config: Config of the `collect` command.
        offline_router_config: LightningCLI config of the offline router (`fit`, then `test`).
        offline_router_prior: Where that fit leaves the prior artifact for the online stage.
        offline_router_checkpoint: The checkpoint `test` evaluates.
        behaviour_args: Extra `collect` arguments, e.g. `["--max_batches", "2"]`.
    """
    from rmrouter.cli import main

    started = time.perf_counter()
    if Path(learned_rm_checkpoint).is_file():
        log.info("[1/3] learned RM: %s exists, not retraining", learned_rm_checkpoint)
    else:
        log.info("[1/3] learned RM: training with %s", learned_rm_config)
        main(["fit", "--config", str(learned_rm_config)])
        _expect(learned_rm_checkpoint, learned_rm_config)
    log.info("[2/3] behaviour collection with %s", behaviour_config)
    main(["collect", "--config", str(behaviour_config), *(behaviour_args or [])])
    if Path(offline_router_prior).is_file():
        log.info("[3/3] offline router: %s exists, not retraining", offline_router_prior)
    else:
        log.info("[3/3] offline router: training with %s", offline_router_config)
        main(["fit", "--config", str(offline_router_config)])
        _expect(offline_router_prior, offline_router_config)
        main(["test", "--config", str(offline_router_config), "--ckpt_path", str(offline_router_checkpoint)])
    log.info("pipeline done in %.0f s", time.perf_counter() - started)


def _expect(output: Path, config: Path) -> None:
    if not Path(output).is_file():
        raise FileNotFoundError(f"fit with {config} did not write {output}: check the paths in that config")
