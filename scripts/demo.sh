#!/usr/bin/env bash
# Set up a fresh machine and run the end-to-end demo (offline, a few minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m anomalib_anogen.demo "$@"
