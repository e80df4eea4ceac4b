#!/usr/bin/env bash
# Build the FOMO25 submission image: container/build.sh MODEL_DIR OUT.sif
# MODEL_DIR holds task1/ task2/ task3/ as fomo_export_submission writes them.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 MODEL_DIR OUT.sif" >&2
  exit 2
fi
model_dir=$1
out=$2
cd "$(dirname "$0")/.."
if ! command -v apptainer >/dev/null 2>&1; then
  echo "error: apptainer is not installed here: build on a machine that has it (https://apptainer.org)" >&2
  exit 2
fi
if ! ls "$model_dir"/task*/manifest.json >/dev/null 2>&1; then
  echo "error: $model_dir: no task<N>/manifest.json; fill it with fomo_export_submission first" >&2
  exit 2
fi
# %files paths are relative to the build's working directory: the model folder is given relative to the clone.
rel_model_dir=$(realpath --relative-to=. "$model_dir")
apptainer build --fakeroot --build-arg MODEL_DIR="$rel_model_dir" "$out" container/fomo25.def
echo "built $out ($(du -h "$out" | cut -f1))"
