#!/usr/bin/env bash
# A longer, random fuzzing run of the DICOM header reader and the archive walker.
#
# Usage: bash ci/fuzz.sh [EXAMPLES_PER_TEST] [pytest options...]
#   EXAMPLES_PER_TEST defaults to 20000 (about 8 minutes on 2 cores).
#
# The normal test suite runs tests/test_fuzz.py as a short, derandomized pass (~20 s);
# this runs the same tests with BIDSPORT_FUZZ_EXAMPLES examples each, drawn at random.
# A failing example is printed and kept in .hypothesis/ (the example database), so the
# next run of tests/test_fuzz.py tries it first. See docs/robustness.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
if [ ! -x "$python" ]; then
    python=python3
fi
export BIDSPORT_FUZZ_EXAMPLES="${1:-20000}"
shift || true
echo "fuzzing with $BIDSPORT_FUZZ_EXAMPLES examples per test ($("$python" -c 'import hypothesis; print("hypothesis", hypothesis.__version__)'))"
start=$(date +%s)
"$python" -m pytest -q -p no:cacheprovider tests/test_fuzz.py --hypothesis-show-statistics "$@"
echo "fuzzing took $(( $(date +%s) - start )) s"
