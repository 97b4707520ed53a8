#!/usr/bin/env bash
# The GPU paths on one CUDA device, written to docs/gpu_check.md (benchmarks/gpu_check.py says what runs); on a
# machine without CUDA it says so in one line and exits 0. About 10 minutes on one H100.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec "$PYTHON" benchmarks/gpu_check.py --output docs/gpu_check.md "$@"
