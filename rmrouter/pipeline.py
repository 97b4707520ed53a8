"""The main job on the embedded default: every stage that exists, each skipped when its output is already there.

1. Train the learned safety RM of the default pool (`fit` on its config) unless its checkpoint exists.
2. Collect behaviour records of the default pool (resumes a partial file) and write the accuracy table.
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
    behaviour_args: list[str] | None = None,
) -> None:
    """Runs the pipeline's stages in order; each one is skipped or resumed when its output exists.

    Args:
        learned_rm_config: LightningCLI `fit` config of the learned RM the pool needs.
        learned_rm_checkpoint: Where that fit leaves the checkpoint the pool loads.
        behaviour_config: Config of the `collect` command.
        behaviour_args: Extra `collect` arguments, e.g. `["--max_batches", "2"]`.
    """
    from rmrouter.cli import main

    started = time.perf_counter()
    if Path(learned_rm_checkpoint).is_file():
        log.info("[1/2] learned RM: %s exists, not retraining", learned_rm_checkpoint)
    else:
        log.info("[1/2] learned RM: training with %s", learned_rm_config)
        main(["fit", "--config", str(learned_rm_config)])
        if not Path(learned_rm_checkpoint).is_file():
            raise FileNotFoundError(f"fit with {learned_rm_config} did not write {learned_rm_checkpoint}")
    log.info("[2/2] behaviour collection with %s", behaviour_config)
    main(["collect", "--config", str(behaviour_config), *(behaviour_args or [])])
    log.info("pipeline done in %.0f s", time.perf_counter() - started)
