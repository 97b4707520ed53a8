#!/usr/bin/env bash
# Runs the main job on the embedded default, in the project's virtual environment (created on first use).
# Extra arguments go to the command, e.g. `bash scripts/run.sh --limit_per_domain 50`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PYTHON" cli.py pipeline --config configs/pipeline.yaml "$@"
