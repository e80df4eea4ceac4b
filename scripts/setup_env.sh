#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv/ and install nnunet_ext into it.
# FRESH=1 removes an existing .venv first (what CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${FRESH:-0}" = 1 ]; then rm -rf .venv; fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
fi
# torch is left for pip to resolve as nnunetv2 asks (see README, "Installation").
.venv/bin/python -m pip install -q -e '.[test]'
