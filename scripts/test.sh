#!/usr/bin/env bash
# Runs the whole test suite in the project's virtual environment (created on first use).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PYTHON" -m pytest "$@"
