#!/usr/bin/env bash
# Set up .venv/ if needed, then run the whole workflow on freshly generated synthetic FOMO data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/fomo_demo --out "${1:-demo_output}"
