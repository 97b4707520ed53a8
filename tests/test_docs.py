"""The README shows the online demo's summary exactly as the main job wrote it (docs/online_demo.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_summary", ROOT / "scripts" / "readme_summary.py")
readme_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_summary)


def test_readme_shows_the_demo_summary_the_main_job_wrote():
    summary = (ROOT / "docs" / "online_demo.md").read_text()
    assert "- steps: " in summary  # written by OnlineSummary, not a placeholder
    readme = (ROOT / "README.md").read_text()
    assert readme_summary.readme_block(readme) == readme_summary.summary_block(summary), (
        "README.md's online demo summary differs from docs/online_demo.md: run scripts/readme_summary.py"
    )
