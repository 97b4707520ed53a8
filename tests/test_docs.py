"""The README and the documentation site: links that resolve, a method page the code cites, and a site that builds
with warnings as errors; publish copies the main job's outputs into docs/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_a_landing_page_whose_links_are_all_in_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200  # the rest is the documentation site's
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [target for target in targets if "://" not in target]
    assert "docs/RESULTS.md" in local  # the pattern finds the links
    missing = [target for target in local if not (ROOT / target).exists()]
    assert missing == [], f"README.md links to files that are not in the repository: {missing}"


def test_publish_names_what_is_missing_and_writes_nothing(tmp_path):
    from rmrouter.publish import publish_docs

    (tmp_path / "table.md").write_text("| a |\n")
    with pytest.raises(FileNotFoundError, match=r"summary\.md.*bash scripts/run\.sh"):
        publish_docs({str(tmp_path / "table.md"): str(tmp_path / "docs" / "t.md"), str(tmp_path / "summary.md"): "x"})
    assert not (tmp_path / "docs").exists()


def test_every_file_a_concepts_page_links_to_is_in_the_repository():
    notes = sorted((ROOT / "docs" / "concepts").glob("*.md"))
    assert notes  # the pattern finds the notes
    for note in notes:
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", note.read_text())
        missing = [target for target in targets if "://" not in target and not (note.parent / target).exists()]
        assert missing == [], f"{note.name} links to files that are not in the repository: {missing}"


def test_the_method_page_names_files_that_exist_and_every_section_cited_is_on_it():
    method = (ROOT / "docs" / "concepts" / "method.md").read_text()
    paths = re.findall(r"`((?:rmrouter|configs)/[\w/.]+)`", method)
    assert "rmrouter/routers/bayesian.py" in paths  # the pattern finds the paths
    assert [path for path in paths if not (ROOT / path).exists()] == []
    sections = set(re.findall(r"^## (.+)$", method, flags=re.MULTILINE))
    cited = set()
    for path in [*ROOT.glob("rmrouter/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("configs/**/*.*")]:
        cited |= set(re.findall(r'docs/concepts/method\.md, "([^"]+)"', path.read_text()))
        cited |= set(re.findall(r'docs/concepts/method\.md, "[^"]+" and "([^"]+)"', path.read_text()))
    assert "Online stage: BayesianRouter" in cited
    assert cited - sections == set(), f"docstrings cite sections the method page does not have: {cited - sections}"


def test_the_documentation_site_builds_with_warnings_as_errors(tmp_path):
    """Every page of mkdocs.yml's nav exists, every link between pages resolves, and every docstring the API pages
    render parses (mkdocs --strict fails on any warning)."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "concepts" / "method" / "index.html").is_file()
    api = (tmp_path / "site" / "api" / "routers" / "index.html").read_text()
    assert "BayesianRouter" in api and "Thompson" in api  # the docstrings were rendered
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(entry) -> list[str]:
        if isinstance(entry, str):
            return [entry]
        if isinstance(entry, list):
            return [page for item in entry for page in pages(item)]
        return [page for value in entry.values() for page in pages(value)]

    listed = set(pages(nav))
    every = {str(path.relative_to(ROOT / "docs")) for path in (ROOT / "docs").rglob("*.md")}
    assert every - listed == set(), f"docs pages missing from mkdocs.yml's nav: {sorted(every - listed)}"
