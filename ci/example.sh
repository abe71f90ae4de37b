#!/usr/bin/env bash
# Set up (.venv), write the example inbox and run bidsport on it (participant, then group).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh validator
rm -rf example
.venv/bin/python -m bidsport.example example/inbox
.venv/bin/bidsport example/inbox example/bids participant \
    --nameformat '(?P<subject_id>[^_]+)_(?P<session_name>.+)'
.venv/bin/bidsport example/inbox example/bids group
