"""What ``fomo_convert`` costs over plain I/O: conversion of a synthetic FOMO task against nibabel load + save.

Both sides handle the same files on the same machine in the same run, alternated (ours, plain, ours, ...), and
the figure is the ratio of their median wall times over ``--repeats`` rounds (absolute times on shared 2-core
machines are noise; a ratio measured side by side is not). "Plain" reads every NIfTI of the task folder with
nibabel (the voxels, not only the header) and writes it back as ``.nii.gz``: the floor any converter pays. Ours
adds the checks, the reorientation to RAS, the dataset.json and the stratified splits.

Target (issue 11): ratio <= 1.3. Writes ``conversion.json`` under ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_out_folder, write_report  # noqa: E402  (beside this script)

from nnunet_ext.errors import cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import int_at_least  # noqa: E402

#: nnU-Net dataset id of the benchmark's conversions (7xx: out of the way of real and demo datasets).
DATASET_ID = 732
RESULT_STEM = "conversion"
TARGET_RATIO = 1.3
DEFAULT_TASK = 2
DEFAULT_CASES = 10
DEFAULT_SHAPE = (160, 192, 160)
DEFAULT_REPEATS = 5
#: ``--quick``: a smoke run of a few seconds that only shows the benchmark works.
QUICK_CASES = 5
QUICK_SHAPE = (48, 48, 40)
QUICK_REPEATS = 2
NIFTI_SUFFIX = ".nii.gz"


def plain_copy(source: Path, target: Path) -> None:
    """Every NIfTI under ``source`` loaded with nibabel (voxels included) and saved under ``target``."""
    import nibabel as nib
    import numpy as np

    for path in sorted(source.rglob(f"*{NIFTI_SUFFIX}")):
        image = nib.load(path)
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header), out)


def our_conversion(task: int, source: Path, raw: Path) -> None:
    """``fomo_convert`` (its Python API) of ``source`` into the nnU-Net raw folder ``raw``."""
    from nnunet_ext.dataset_conversion.convert import RAW_ENV, convert_fomo_dataset

    os.environ[RAW_ENV] = str(raw)
    convert_fomo_dataset(task, source, DATASET_ID)


def timed(action: Callable[[Path], None], work: Path) -> float:
    """Seconds ``action`` takes to write into a new empty folder under ``work`` (removed afterwards)."""
    target = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    action(target)
    elapsed = time.perf_counter() - started
    shutil.rmtree(target)
    return elapsed


def run_benchmark(task: int, n_cases: int, shape: Sequence[int], repeats: int, work: Path) -> Dict[str, Any]:
    from nnunet_ext.dataset_conversion.synthetic import make_synthetic_dataset

    source = make_synthetic_dataset(task, work / "fomo", n_cases=n_cases, seed=0, shape=tuple(shape))
    files = sorted(source.rglob(f"*{NIFTI_SUFFIX}"))
    times: Dict[str, List[float]] = {"fomo_convert": [], "nibabel_load_save": []}
    for _ in range(repeats):
        times["fomo_convert"].append(timed(lambda raw: our_conversion(task, source, raw), work))
        times["nibabel_load_save"].append(timed(lambda target: plain_copy(source, target), work))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["fomo_convert"] / medians["nibabel_load_save"]
    return {"task": task, "n_cases": n_cases, "shape": list(shape), "n_files": len(files),
            "megabytes_read": round(sum(f.stat().st_size for f in files) / 2 ** 20, 1), "repeats": repeats,
            "seconds": times, "median_seconds": medians, "ratio": ratio, "target_ratio": TARGET_RATIO,
            "target_met": ratio <= TARGET_RATIO, "cpu_count": len(os.sched_getaffinity(0))}


def format_table(report: Dict[str, Any]) -> str:
    medians = report["median_seconds"]
    rows = [f"| {name} | {seconds:.2f} | {seconds / report['n_files'] * 1000:.0f} |" for name, seconds in medians.items()]
    return "\n".join([
        f"Task {report['task']}: {report['n_cases']} synthetic cases of {'x'.join(map(str, report['shape']))} voxels, "
        f"{report['n_files']} files ({report['megabytes_read']} MB), median of {report['repeats']} alternated rounds",
        "| method | median s | ms per file |", "|---|---|---|", *rows,
        f"ratio fomo_convert / nibabel: {report['ratio']:.2f} (target <= {TARGET_RATIO}: "
        f"{'met' if report['target_met'] else 'NOT met'})"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for conversion.json (created if missing)")
    parser.add_argument("--task", type=int, choices=(1, 2, 3), default=DEFAULT_TASK,
                        help=f"FOMO task whose synthetic layout is converted (default {DEFAULT_TASK})")
    parser.add_argument("--cases", type=int_at_least(5), default=DEFAULT_CASES,
                        help=f"synthetic subjects, at least one per fold of the 5 (default {DEFAULT_CASES})")
    parser.add_argument("--shape", type=int_at_least(8), nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"),
                        help="voxels per image (default %(default)s, a brain at 1 mm)")
    parser.add_argument("--repeats", type=int_at_least(1), default=DEFAULT_REPEATS,
                        help=f"alternated rounds of both methods; medians are reported (default {DEFAULT_REPEATS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_CASES} cases of {QUICK_SHAPE}, {QUICK_REPEATS} rounds")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    if args.quick:
        args.cases, args.shape, args.repeats = QUICK_CASES, QUICK_SHAPE, QUICK_REPEATS
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as work:
        report = run_benchmark(args.task, args.cases, args.shape, args.repeats, Path(work))
    write_report(args.out, RESULT_STEM, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
