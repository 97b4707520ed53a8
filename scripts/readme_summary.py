"""Copies the online demo's closing summary (docs/online_demo.md, written by the main job) into README.md.

    .venv/bin/python scripts/readme_summary.py

The README shows the summary between its `online-demo-summary` markers; `tests/test_docs.py` fails when the copy and
the file differ, so the README never shows numbers that no run produced.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- online-demo-summary:start -->", "<!-- online-demo-summary:end -->"


def summary_block(summary: str) -> str:
    """The summary as the README shows it: its headings one level down, inside the markers."""
    body = re.sub(r"^## ", "### ", summary.strip(), flags=re.M)
    return f"{START}\n{body}\n{END}"


def readme_block(readme: str) -> str:
    match = re.search(re.escape(START) + r".*?" + re.escape(END), readme, flags=re.S)
    if match is None:
        raise ValueError(f"README.md has no {START} ... {END} block")
    return match.group(0)


def main() -> None:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    block = summary_block((ROOT / "docs" / "online_demo.md").read_text())
    readme_path.write_text(readme.replace(readme_block(readme), block))
    print(f"README.md now shows {ROOT / 'docs' / 'online_demo.md'}")


if __name__ == "__main__":
    main()
