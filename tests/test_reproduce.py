"""`python cli.py reproduce`: stages in order, each once per commit and command, resumed after a failure, reported."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from rmrouter import reproduce as module
from rmrouter.cli import main

ROOT = Path(__file__).resolve().parents[1]


def stage(text: str) -> str:
    """A stage that appends `text` to runs.txt."""
    code = f"open('runs.txt', 'a').write({text!r} + chr(10))"
    return f"python -c {shlex.quote(code)}"


def runs(folder: Path) -> list[str]:
    return (folder / "runs.txt").read_text().splitlines()


@pytest.fixture
def at(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(module, "current_commit", lambda ignoring: "abc1234")
    return tmp_path


def test_stages_run_in_order_once_per_commit_and_the_report_names_each(at, monkeypatch):
    stages = {"first": stage("one"), "second": stage("two")}
    module.reproduce(stages, output=at / "reproduce.md")
    assert runs(at) == ["one", "two"]
    module.reproduce(stages, output=at / "reproduce.md")
    assert runs(at) == ["one", "two"]  # both done at this commit with the same command
    report = (at / "reproduce.md").read_text()
    assert "Every stage ran at commit `abc1234`" in report
    assert f"| first | `{stages['first']}` | `abc1234` |" in report and "| total | | |" in report

    stages["second"] = stage("two again")  # a changed command runs again
    module.reproduce(stages, output=at / "reproduce.md")
    assert runs(at) == ["one", "two", "two again"]
    monkeypatch.setattr(module, "current_commit", lambda ignoring: "def5678")  # another commit: every stage again
    module.reproduce(stages, output=at / "reproduce.md")
    assert runs(at) == ["one", "two", "two again", "one", "two again"]


def test_a_failed_stage_stops_the_run_and_the_next_run_resumes_there(at):
    stages = {"first": stage("one"), "broken": "python -c 'raise SystemExit(3)'", "last": stage("three")}
    with pytest.raises(SystemExit, match=r"failed with exit code 3; rerun to resume from this stage"):
        module.reproduce(stages, output=at / "reproduce.md")
    assert runs(at) == ["one"] and not (at / "reproduce.md").exists()
    stages["broken"] = stage("two")
    module.reproduce(stages, output=at / "reproduce.md")
    assert runs(at) == ["one", "two", "three"]


def test_only_reruns_the_named_stages_and_the_report_names_each_stages_commit(at, monkeypatch):
    stages = {"first": stage("one"), "second": stage("two")}
    module.reproduce(stages, only=["second"], output=at / "reproduce.md")
    assert runs(at) == ["two"]
    partial = (at / "reproduce.md").read_text()  # the first stage has not run: the report says so
    assert "1 of 2 stages have run, at commit `abc1234`" in partial
    assert f"| first | `{stages['first']}` | not run yet | |" in partial
    module.reproduce(stages, output=at / "reproduce.md")
    monkeypatch.setattr(module, "current_commit", lambda ignoring: "def5678")
    module.reproduce(stages, only=["second"], output=at / "reproduce.md")  # one figure redone at a later commit
    assert runs(at) == ["two", "one", "two"]
    report = (at / "reproduce.md").read_text()
    assert "Every stage ran at the commits of the table (abc1234, def5678)" in report
    assert f"| second | `{stages['second']}` | `def5678` |" in report
    with pytest.raises(SystemExit, match=r"--only names no stage of the config: \['third'\]"):
        module.reproduce(stages, only=["third"])


def test_changes_to_the_docs_a_run_writes_do_not_change_its_commit(tmp_path, monkeypatch):
    import subprocess

    from rmrouter.machine import current_commit

    monkeypatch.chdir(tmp_path)
    for command in (["init", "-q"], ["config", "user.email", "a@b"], ["config", "user.name", "a"]):
        subprocess.run(["git", *command], check=True)
    (tmp_path / "docs").mkdir()
    for name in ("docs/x.md", "README.md", "code.py"):
        (tmp_path / name).write_text("first\n")
    subprocess.run(["git", "add", "."], check=True)
    subprocess.run(["git", "commit", "-qm", "x"], check=True)
    commit = current_commit()
    (tmp_path / "docs" / "x.md").write_text("second\n")
    (tmp_path / "README.md").write_text("second\n")
    assert current_commit(ignoring=module.WRITTEN) == commit and current_commit() == f"{commit}+changes"
    (tmp_path / "code.py").write_text("second\n")
    assert current_commit(ignoring=module.WRITTEN) == f"{commit}+changes"


def test_the_shipped_config_names_every_published_doc():
    """Every doc at the top of docs/ is written by a stage (or copied by publish, or the report's); the hand-written
    pages are the site's home (index.md) and the folders concepts/, guides/ and api/."""
    stages = yaml.safe_load((ROOT / "configs" / "reproduce.yaml").read_text())["stages"]
    collected = [command.split("--config ")[1].split()[0] for command in stages.values() if " collect " in command]
    tables = [yaml.safe_load((ROOT / config).read_text()).get("table") or "" for config in collected]
    commands = " ".join([*stages.values(), *tables])  # a collection writes its config's table
    published = yaml.safe_load((ROOT / "configs" / "publish.yaml").read_text())["copies"].values()
    by_stages = {"docs/RESULTS.md", "docs/downstream.md", "docs/reproduce.md", "docs/gpu_check.md", *published}
    for doc in sorted((ROOT / "docs").glob("*.md")):
        name = f"docs/{doc.name}"
        if name == "docs/index.md":
            continue
        assert name in commands or name in by_stages, f"no stage of configs/reproduce.yaml writes {name}"


def test_the_cli_runs_reproduce_from_a_config(at):
    config = at / "reproduce.yaml"
    config.write_text(json.dumps({"stages": {"only": stage("one")}, "output": str(at / "r.md")}))
    main(["reproduce", "--config", str(config)])
    assert runs(at) == ["one"] and (at / "r.md").is_file()
