"""The README shows the online demo's summary exactly as published in docs/online_demo.md; publish copies them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rmrouter.publish import readme_block, show_in_readme, summary_block

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_demo_summary_the_main_job_wrote():
    summary = (ROOT / "docs" / "online_demo.md").read_text()
    assert "- steps: " in summary  # written by OnlineSummary, not a placeholder
    shown = readme_block((ROOT / "README.md").read_text())
    # publish writes both; the docs file starts with a line saying where it came from
    assert shown is not None and summary_block(summary.split("\n\n", 1)[1]) == shown


def test_publish_refreshes_the_readme_block_and_leaves_other_readmes_alone(tmp_path):
    readme = tmp_path / "README.md"
    old = summary_block("## old\n\n- steps: 1")
    readme.write_text(f"intro\n\n{old}\n\nrest\n")
    show_in_readme("## new run\n\n- steps: 2\n", readme)
    assert readme.read_text() == "intro\n\n<!-- online-demo-summary:start -->\n### new run\n\n- steps: 2\n" \
        "<!-- online-demo-summary:end -->\n\nrest\n"  # fmt: skip
    plain = tmp_path / "OTHER.md"
    plain.write_text("no block here\n")
    show_in_readme("## new run\n", plain)
    assert plain.read_text() == "no block here\n"


def test_every_file_the_readme_links_to_is_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target]
    assert "docs/offline_router.md" in local  # the pattern finds the links
    missing = [target for target in local if not (ROOT / target).exists()]
    assert missing == [], f"README.md links to files that are not in the repository: {missing}"


def test_publish_names_what_is_missing_and_writes_nothing(tmp_path):
    from rmrouter.publish import publish_docs

    (tmp_path / "table.md").write_text("| a |\n")
    with pytest.raises(FileNotFoundError, match=r"summary\.md.*bash scripts/run\.sh"):
        publish_docs({str(tmp_path / "table.md"): str(tmp_path / "docs" / "t.md")}, tmp_path / "summary.md")
    assert not (tmp_path / "docs").exists()


def test_every_file_a_design_note_links_to_is_in_the_repository():
    notes = sorted((ROOT / "docs" / "design").glob("*.md"))
    assert notes  # the pattern finds the notes
    for note in notes:
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", note.read_text())
        missing = [target for target in targets if "://" not in target and not (note.parent / target).exists()]
        assert missing == [], f"{note.name} links to files that are not in the repository: {missing}"
