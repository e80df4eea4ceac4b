#!/usr/bin/env bash
# Set up .venv/ if needed, then run the test suite on the CPU: one pytest-xdist worker per core, each test file on
# one worker (its module fixtures are built once); pass -n 0 to run in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
