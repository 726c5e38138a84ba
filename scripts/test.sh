#!/usr/bin/env bash
# Set up a fresh machine and run the lint, the test suite and the benchmarks' smoke runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check anomalib_anogen tests benchmarks
.venv/bin/lint-imports  # the layering contracts in pyproject.toml
.venv/bin/python -m pytest "$@"
# Benchmarks never run in the test suite; --smoke only checks, in seconds, that each still works.
# startup and precision need no data; the others read ../shared/data.
for bench in startup precision; do
    .venv/bin/python "benchmarks/bench_$bench.py" --smoke
done
if [ -d ../shared/data/support/bottle ]; then
    for bench in bank generate foreground writers paste train infer deploy accuracy defaults bank_quality; do
        .venv/bin/python "benchmarks/bench_$bench.py" --smoke
    done
fi
