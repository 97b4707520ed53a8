"""The tracked docs from the main job's outputs: the main job writes only under `checkpoints/`, this copies.

    python cli.py publish --config configs/publish.yaml

Each copy starts with a line naming this command and its source, so `docs/` changes only when someone chooses to
publish a run.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def publish_docs(copies: dict[str, str], command: str = "python cli.py publish --config configs/publish.yaml") -> None:
    """Copies each main-job output to its tracked doc.

    Args:
        copies: Source (a file the main job wrote) -> destination (a tracked doc).
        command: How this was run, named in each copy's first line.
    """
    missing = [str(source) for source in copies if not Path(source).is_file()]
    if missing:
        raise FileNotFoundError(
            f"nothing to publish from {missing}: run the main job (`bash scripts/run.sh`) first, which writes them"
        )
    for source, destination in copies.items():
        note = f"_Copied by `{command}` from `{source}`, which the main job (`bash scripts/run.sh`) wrote._\n\n"
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        Path(destination).write_text(note + Path(source).read_text())
        log.info("published %s -> %s", source, destination)
