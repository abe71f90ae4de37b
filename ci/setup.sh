#!/usr/bin/env bash
# Create .venv (if missing) and install bidsport with the given extras into it.
# Usage: bash ci/setup.sh [EXTRAS]   e.g. bash ci/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "$extras" ]; then
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
else
    .venv/bin/python -m pip install --quiet -e .
fi
