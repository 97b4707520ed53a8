"""One line naming the machine a report was made on: results that depend on the CPU kind say where they come from."""

from __future__ import annotations

import os
import platform
import subprocess

import torch


def describe_machine() -> str:
    """E.g. `x86_64, 2 cores, CPU capability AVX2, no native bfloat16, torch 2.13.0+cpu`."""
    from rmrouter.reward_models._hf import native_bfloat16

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU capability {_cpu_capability()}"
    bfloat16 = "native bfloat16" if native_bfloat16() else "no native bfloat16"
    return f"{platform.machine()}, {os.cpu_count()} cores, {device}, {bfloat16}, torch {torch.__version__}"


def _cpu_capability() -> str:
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get is not None else "unknown"


def current_commit(ignoring: tuple[str, ...] = ()) -> str:
    """The checkout's short commit, with `+changes` when tracked files differ from it (except paths starting with one
    of `ignoring`, e.g. the docs a command writes); says so outside a checkout."""
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit}+changes" if any(not path.startswith(ignoring) for path in changed) else commit


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.rstrip("\n")
