"""The tracked docs from the main job's outputs: the main job writes only under `checkpoints/`, this copies.

    python cli.py publish --config configs/publish.yaml

Each copy starts with a line naming this command and its source, and the README's `online-demo-summary` block gets
the online summary, so `docs/` and the README change only when someone chooses to publish a run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

README_START, README_END = "<!-- online-demo-summary:start -->", "<!-- online-demo-summary:end -->"


def publish_docs(
    copies: dict[str, str],
    readme_summary: Path | None = None,
    readme: Path = Path("README.md"),
    command: str = "python cli.py publish --config configs/publish.yaml",
) -> None:
    """Copies each main-job output to its tracked doc, then shows `readme_summary` in the README's block.

    Args:
        copies: Source (a file the main job wrote) -> destination (a tracked doc).
        readme_summary: A summary (the online demo's) for the README's block; None leaves the README alone.
        readme: The README holding the block.
        command: How this was run, named in each copy's first line.
    """
    sources = [*copies, *([readme_summary] if readme_summary is not None else [])]
    missing = [str(source) for source in sources if not Path(source).is_file()]
    if missing:
        raise FileNotFoundError(
            f"nothing to publish from {missing}: run the main job (`bash scripts/run.sh`) first, which writes them"
        )
    for source, destination in copies.items():
        note = f"_Copied by `{command}` from `{source}`, which the main job (`bash scripts/run.sh`) wrote._\n\n"
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        Path(destination).write_text(note + Path(source).read_text())
        log.info("published %s -> %s", source, destination)
    if readme_summary is not None:
        show_in_readme(Path(readme_summary).read_text(), Path(readme))


def summary_block(summary: str) -> str:
    """The summary as the README shows it: its headings one level down, between the markers."""
    body = re.sub(r"^## ", "### ", summary.strip(), flags=re.M)
    return f"{README_START}\n{body}\n{README_END}"


def readme_block(readme: str) -> str | None:
    """The README's summary block, markers included; None when it has none."""
    match = re.search(re.escape(README_START) + r".*?" + re.escape(README_END), readme, flags=re.S)
    return match.group(0) if match else None


def show_in_readme(summary: str, readme: Path) -> None:
    """Puts `summary` in the README's block (left alone without one)."""
    text = Path(readme).read_text() if Path(readme).is_file() else ""
    block = readme_block(text)
    if block is not None:
        Path(readme).write_text(text.replace(block, summary_block(summary)))
