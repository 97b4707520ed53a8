"""Every published figure from one commit on one machine: the commands that write `docs/`, run in order.

    bash scripts/reproduce.sh          # = python cli.py reproduce --config configs/reproduce.yaml

Each stage is one command of `configs/reproduce.yaml`, run in its own process with this interpreter; a line per stage
says where the run is, and `docs/reproduce.md` gets every stage's time, the machine and the commit (and which stages
have not run yet). Resumable: a
stage that finished at this commit with the same command is skipped (`checkpoints/reproduce/state.json`), so a stop
loses at most the stage it was in, and the long stages resume on their own (the main job, the seeds, the sweep).
Only what needs a GPU is left out (`bash scripts/gpu_check.sh`).

"This commit" ignores changes under `docs/` and to `README.md`: those are what the stages write.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rmrouter.machine import current_commit, describe_machine

log = logging.getLogger(__name__)

WRITTEN = ("docs/", "README.md")  # what the stages write: changes there do not change the commit they ran at


def reproduce(
    stages: dict[str, str],
    output: Path = Path("docs/reproduce.md"),
    state: Path = Path("checkpoints/reproduce/state.json"),
    only: list[str] | None = None,
) -> None:
    """Runs every stage in order, each skipped when it already finished at this commit with the same command.

    Args:
        stages: Stage name -> its command line (`python ...`: `python` is this interpreter).
        output: The report of stage times, machine and commit.
        state: Where finished stages are recorded (under `checkpoints/`, so a run leaves `git status` clean but for
            the docs it writes).
        only: Run these stages alone (by name), for redoing a figure. The report names each stage's commit, and the
            stages that have not run yet.
    """
    unknown = sorted(set(only or []) - set(stages))
    if unknown:
        raise SystemExit(f"--only names no stage of the config: {unknown}; its stages are {list(stages)}")
    commit = current_commit(ignoring=WRITTEN)
    state = Path(state)
    done: dict[str, dict] = json.loads(state.read_text()) if state.is_file() else {}
    selected = [name for name in stages if not only or name in only]
    for number, name in enumerate(selected, start=1):
        command = stages[name]
        record = done.get(name)
        where = f"[{number}/{len(selected)}] {name}"
        if record is not None and record["command"] == command and record["commit"] == commit:
            log.info("%s: done at this commit in %.0f s, skipped", where, record["seconds"])
            continue
        log.info("%s: %s", where, command)
        start = time.perf_counter()
        run_stage(command)
        done[name] = {"command": command, "commit": commit, "seconds": time.perf_counter() - start}
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(done, indent=1) + "\n")
        log.info("%s: finished in %.0f s", where, done[name]["seconds"])
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(report(stages, done), encoding="utf-8")
    missing = [name for name in stages if name not in done]
    log.info("stage times and commits in %s%s", output, f"; not run yet: {missing}" if missing else "")


def run_stage(command: str) -> None:
    """One stage's command, `python` being this interpreter; a failure stops the run with the stage's exit code."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
    finished = subprocess.run(argv)
    if finished.returncode != 0:
        raise SystemExit(f"`{command}` failed with exit code {finished.returncode}; rerun to resume from this stage")


def report(stages: dict[str, str], done: dict[str, dict]) -> str:
    ran = [name for name in stages if name in done]
    commits = sorted({done[name]["commit"] for name in ran})
    at = f"at commit `{commits[0]}`" if len(commits) == 1 else f"at the commits of the table ({', '.join(commits)})"
    rows = [
        f"| {name} | `{stages[name]}` | `{done[name]['commit']}` | {done[name]['seconds'] / 60:.1f} |"
        if name in done
        else f"| {name} | `{stages[name]}` | not run yet | |"
        for name in stages
    ]
    total = sum(done[name]["seconds"] for name in ran) / 60
    if len(ran) == len(stages):
        status = f"Every stage ran {at}"
    elif ran:
        status = (
            f"{len(ran)} of {len(stages)} stages have run, {at}; the others have not run yet, and their docs are older"
        )
    else:
        status = "No stage has run yet"
    return (
        "# Reproducing every published figure\n\n"
        "Written by `python cli.py reproduce --config configs/reproduce.yaml` (`bash scripts/reproduce.sh`); do not "
        f"edit by hand.\n\n{status}, on {describe_machine()}. The minutes are each stage's own run; a "
        "stage resumed after a stop counts only its last run. What needs a GPU is `bash scripts/gpu_check.sh` "
        "([gpu_check.md](gpu_check.md)).\n\n| stage | command | commit | minutes |\n|---|---|---|---:|\n"
        + "\n".join(rows)
        + f"\n| total | | | {total:.1f} |\n"
    )
