#!/usr/bin/env bash
# Set up a fresh machine and run the lint and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check anomalib_anogen tests benchmarks
exec .venv/bin/python -m pytest "$@"
