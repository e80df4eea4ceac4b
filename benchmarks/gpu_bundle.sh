#!/usr/bin/env bash
# What a lent GPU machine needs beside the working tree, cut into parts that the device tool carries one per call
# (it sends at most 64 MiB a call, tree included): the Python packages its image lacks, at the versions of this
# .venv/ and built for the machine's Python, and with --data the real MRI of ../shared/data (pool and IXI) that
# gpu_pretraining.sh reads. There, benchmarks/with_gpu_bundle.sh unpacks them and runs a GPU script (the calls:
# benchmarks/README.md, "On a lent GPU").
#
#   benchmarks/gpu_bundle.sh [--data] [--python-version X.Y] [OUT]   (OUT: .gpu_bundle, git-ignored)
#
# Needs .venv/ (scripts/setup_env.sh) and PyPI. --python-version: the machine's Python (default 3.12, the image's).
set -euo pipefail
cd "$(dirname "$0")/.."

# Read off the device image's package list (the device tool's KINDS.md, 2026-11-17): what it lacks of what
# nnunetv2, its libraries and ours import. nnunetv2's imagecodecs (26 MB) is left out: nothing imports it here.
MISSING=(acvl_utils batchgenerators batchgeneratorsv2 blosc2 connected-components-3d dynamic_network_architectures
         future graphviz ndindex nibabel nnunetv2 simpleitk yacs unittest2 linecache2 traceback2
         pydantic pydantic_core annotated-types typing-inspection)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
# Under the device tool's 64 MiB a call, with room for the working tree.
PART_SIZE=60M

python_version=3.12
data=false
out=.gpu_bundle
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) data=true; shift ;;
        --python-version) python_version="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --*) echo "gpu_bundle.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
python=.venv/bin/python
if [[ ! -x "$python" ]]; then
    echo "gpu_bundle.sh: no .venv/ here; run bash scripts/setup_env.sh first" >&2
    exit 2
fi
shared=../shared/data
if $data && [[ ! -d "$shared/ixi_brain_age" || ! -d "$shared/unlabelled_mri" ]]; then
    echo "gpu_bundle.sh: --data needs $shared/ixi_brain_age and $shared/unlabelled_mri" >&2
    exit 2
fi
if ! git check-ignore -q "$out/part_aa"; then
    echo "gpu_bundle.sh: $out is not ignored by git: every call would send all its parts" >&2
    exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
installed=$("$python" -m pip freeze 2>/dev/null)
pins=()
for name in "${MISSING[@]}"; do
    key=$(echo "$name" | tr 'A-Z_' 'a-z-')
    pin=$(awk -F== -v key="$key" '{n = tolower($1); gsub("_", "-", n)} n == key {print $0}' <<< "$installed")
    if [[ -z "$pin" ]]; then
        echo "gpu_bundle.sh: $name is not installed in .venv/" >&2
        exit 2
    fi
    pins+=("$pin")
done
target=(--python-version "$python_version" --implementation cp "${PLATFORMS[@]}" --only-binary=:all:)
for pin in "${pins[@]}"; do  # a package published as source only (acvl_utils) is built here: pure Python
    "$python" -m pip download -q --no-deps "${target[@]}" -d "$work/wheels" "$pin" 2>/dev/null \
        || "$python" -m pip wheel -q --no-deps -w "$work/wheels" "$pin"
done
"$python" -m pip install -q --no-deps --no-compile --no-index "${target[@]}" --target "$work/gpu_bundle/site" \
    "$work"/wheels/*.whl
if $data; then
    mkdir "$work/gpu_bundle/data"
    cp -rL "$shared/ixi_brain_age" "$shared/unlabelled_mri" "$work/gpu_bundle/data/"
    # xz packs the images a fifth smaller than their gzip does: one part fewer; with_gpu_bundle.sh gzips them again
    find "$work/gpu_bundle/data" -name '*.nii.gz' -exec gunzip {} +
fi
mkdir "$work/parts"
tar -C "$work" -cf - gpu_bundle | xz -6 -T0 | split -b "$PART_SIZE" - "$work/parts/part_"
# the parts replace an earlier bundle's only when all are made: an interrupted run leaves no partial set behind
mkdir -p "$out"
rm -f "$out"/part_*
mv "$work"/parts/part_* "$out/"
parts=("$out"/part_*)
contents="Python $python_version packages"
$data && contents+=" and ../shared/data"
echo "gpu_bundle.sh: ${#parts[@]} part(s) in $out ($(du -sh "$out" | cut -f1)): $contents"
echo "Carry one part per device call, the calls close together (a machine stays warm 30 s after a call), and run"
echo "the GPU script in the call that carries the last part, through benchmarks/with_gpu_bundle.sh:"
for part in "${parts[@]}"; do
    echo "  carry [\"$part\"]"
done
