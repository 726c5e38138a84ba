#!/usr/bin/env bash
# Create .venv (once) and install anomalib-anogen into it, editable, with the test extras.
# torch/torchvision come from the package registry as published (their CUDA build runs on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
.venv/bin/python -c "import anomalib_anogen.models" >/dev/null
