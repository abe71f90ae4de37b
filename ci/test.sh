#!/usr/bin/env bash
# Set up (.venv) and run the lint and the whole test suite: exactly what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/system.sh
bash ci/setup.sh test,dev
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/python -m pytest -q --doctest-modules src/bidsport tests "$@"
