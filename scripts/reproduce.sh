#!/usr/bin/env bash
# Regenerates every published figure under docs/ (and the README's blocks) from this commit on this machine, in the
# project's virtual environment (created on first use); resumable. Takes hours on 2 CPU cores: docs/reproduce.md
# names each stage's minutes. Extra arguments go to the command, e.g. `bash scripts/reproduce.sh --only '[report]'`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PYTHON" cli.py reproduce --config configs/reproduce.yaml "$@"
