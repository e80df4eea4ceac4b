#!/usr/bin/env bash
# The GPU check (issues 11 and 22, item 6), one task per call within 8 minutes on one GPU: each task's trainer
# a few epochs at the real size (benchmarks/gpu_training.py: iterations per second, peak GPU memory, the
# validation metric), then the cost per case of prediction (benchmarks/inference.py), each printing its table
# and writing JSON under OUT.
#
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--tasks N ...] [OUT]   (OUT: gpu_check_output)
#
# --device cpu --quick is the smoke run a test makes on machines without a GPU. PYTHON (default .venv/bin/python)
# names the interpreter: python3 on a lent machine, through benchmarks/with_gpu_bundle.sh.
# On a lent GPU, one call per task (--tasks 1, then 2, then 3) keeps each call within 8 minutes. On cuda it first
# checks that torch sees the GPU (a pip-resolved torch may need a newer NVIDIA driver than the machine has).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
out=gpu_check_output
options=()
tasks=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --quick) options+=(--quick); shift ;;
        --tasks) shift; while [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; do tasks+=("$1"); shift; done ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --*) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
[[ ${#tasks[@]} -gt 0 ]] && options+=(--tasks "${tasks[@]}")
python="${PYTHON:-.venv/bin/python}"
if ! command -v "$python" >/dev/null; then
    echo "gpu_check.sh: no interpreter $python; run bash scripts/setup_env.sh first or set PYTHON" >&2
    exit 2
fi
if [[ "$device" == cuda ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "gpu_check.sh: no nvidia-smi; torch names the GPU below"
    "$python" - <<'PY' || exit 2
import sys

import torch

found = f"torch {torch.__version__} (built for CUDA {torch.version.cuda})"
if not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: {found} sees no GPU: is the NVIDIA driver (nvidia-smi above) recent enough for it?")
print(f"gpu_check.sh: {found} on {torch.cuda.device_count()} x {torch.cuda.get_device_name()}")
PY
fi
started=$SECONDS
"$python" benchmarks/gpu_training.py --device "$device" "${options[@]}" --out "$out/training"
# on a GPU every configuration (5 folds x 8 mirrorings at most) is run, none derived
direct=()
[[ "$device" == cuda ]] && direct=(--max-direct-passes 40)
"$python" benchmarks/inference.py --device "$device" "${options[@]}" "${direct[@]}" --out "$out/inference"
echo "gpu_check.sh: done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s; JSON under $out/"
