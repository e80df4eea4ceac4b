#!/usr/bin/env bash
# On a lent GPU machine: unpack the parts that benchmarks/gpu_bundle.sh made (carried there one per call) into DIR,
# once (the data, if bundled, to DIR/gpu_bundle/data), check that the packages import, then run COMMAND with them
# importable (PYTHONPATH) and PYTHON set for the GPU scripts.
#
#   benchmarks/with_gpu_bundle.sh [--parts FOLDER] [--into DIR] COMMAND ...   (FOLDER: .gpu_bundle; DIR: /tmp)
#
# PYTHON (default python3, the image's: it holds PyTorch) names the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

parts=.gpu_bundle
into=/tmp
while [[ $# -gt 0 ]]; do
    case "$1" in
        --parts) parts="$2"; shift 2 ;;
        --into) into="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --*) echo "with_gpu_bundle.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
if [[ $# -eq 0 ]]; then
    echo "with_gpu_bundle.sh: no COMMAND to run (see --help)" >&2
    exit 2
fi
bundle="$into/gpu_bundle"
if [[ ! -f "$bundle/.unpacked" ]]; then  # an unpacking cut short (a call's time limit) starts again
    rm -rf "$bundle"
    if ! compgen -G "$parts/part_*" >/dev/null; then
        echo "with_gpu_bundle.sh: no parts in $parts: carry each part of benchmarks/gpu_bundle.sh's output" >&2
        exit 2
    fi
    # a part missing (a machine that went back between the calls) breaks the xz stream: say so, not tar's words
    if ! cat "$parts"/part_* | xz -dc | tar -x -C "$into"; then
        echo "with_gpu_bundle.sh: the parts in $parts ($(ls "$parts" | tr '\n' ' ')) do not make the whole bundle" >&2
        rm -rf "$bundle"
        exit 2
    fi
    if [[ -d "$bundle/data" ]]; then
        find "$bundle/data" -name '*.nii' -print0 | xargs -0 -r -P "$(nproc)" -n 8 gzip -1 -n
    fi
    touch "$bundle/.unpacked"
fi
export PYTHONPATH="$bundle/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import SimpleITK, nibabel, blosc2, nnunetv2, dynamic_network_architectures, batchgeneratorsv2
import nnunet_ext.trainers"; then
    echo "with_gpu_bundle.sh: the bundle's packages do not import with $PYTHON" >&2
    exit 2
fi
exec "$@"
