#!/usr/bin/env bash
# Issue 21's GPU run, under 8 minutes on one GPU: pretrain the real-width UNet-B (32 starting filters) at 1 mm on the
# unlabelled pool and the IXI images, then fine-tune one IXI brain-age fold from that checkpoint and from scratch
# (benchmarks/ixi_pretraining.py with --device cuda; its table and JSON under OUT).
#
#   benchmarks/gpu_pretraining.sh [--device cuda|cpu] [--quick] [--pool DIR] [--ixi DIR] [OUT]   (OUT: gpu_pretraining_output)
#
# PYTHON (default .venv/bin/python) names the interpreter, e.g. python3 on a machine whose packages travel as wheels.
# --device cpu --quick is a smoke run for machines without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

# Sized (not yet measured on a GPU) for about 6 minutes on an H100: 10 x 60 pretraining steps on 96^3-voxel patches
# (the FOMO pretraining's), then 6 x 40 whole-head fine-tuning steps per arm; no linear probes (the CPU run has them).
device=cuda
out=gpu_pretraining_output
options=(--spacing 1 --starting-filters 32 --sources pool_ixi --folds 0 --no-probes
         --pretrain-patch-size 96 96 96 --pretrain-epochs 10 --pretrain-iterations 60 --epochs 6 --iterations 40
         --finetune-trainers FomoRegressionTrainer)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --quick) options+=(--quick); shift ;;
        --pool|--ixi) options+=("$1" "$2"); shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --*) echo "gpu_pretraining.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
python="${PYTHON:-.venv/bin/python}"
if ! command -v "$python" >/dev/null; then
    echo "gpu_pretraining.sh: no interpreter $python; run bash scripts/setup_env.sh first or set PYTHON" >&2
    exit 2
fi
if [[ "$device" == cuda ]]; then
    "$python" -c "import torch, sys; ok = torch.cuda.is_available(); print('GPU:', torch.cuda.get_device_name(0) if ok \
else 'none visible to torch ' + torch.__version__); sys.exit(0 if ok else 3)"
fi
started=$SECONDS
"$python" benchmarks/ixi_pretraining.py --device "$device" "${options[@]}" --out "$out"
echo "gpu_pretraining.sh: done in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s; JSON under $out/"
