"""Data loading: samples per second of the case-level trainers' loader against nnU-Net's segmentation loader.

One synthetic FOMO task (3: ``FomoRegressionTrainer``; 1: ``FomoClassificationTrainer``) is converted and planned
with the project's own APIs (``fomo_convert``, ``fomo_plan_and_preprocess``). On its preprocessed images, the
case-level trainer and nnU-Net's own ``nnUNetTrainer`` (the same plans with the FOMO network's decoder instead of
the pooling head, so that its deep supervision and segmentation transforms run as in any nnU-Net training) are
built and ``initialize()``-d per patch size (the plans' patch overridden), and their ``get_dataloaders()`` called
with ``nnUNet_n_proc_DA`` = each of ``--workers``: augmentation in the main process (0) or in that many worker
processes. Where the pipelines differ: the regression trainer crops the patch itself (no rotation, no scaling,
left-right mirroring only), the classification trainer adds modality dropout and class-balanced sampling; neither
oversamples foreground or downsamples targets for deep supervision, as nnU-Net's does.

Each measurement first draws warm-up batches (the one ``get_dataloaders`` draws, then as many as the workers can
have ready, plus one, so that no batch prepared during start-up is counted), then times ``--batches`` batches:
samples/s = batch size x batches / seconds. The start-up (workers started, the first batch of both loaders
delivered) is reported on its own. Both trainers' worker processes are shut down after every measurement (the
JSON counts any left alive). Measurements alternate between the two trainers over ``--repeats`` rounds (the order
swapped every round); every figure is a median, and the ratio is case-level over nnU-Net at the same patch and
workers (absolute rates on shared machines are noise; a ratio measured side by side is not).

Is the loader ever the bottleneck? In the same run, each trainer's ``train_step`` (forward, backward and optimiser
step of its network at ``--starting-filters``, 32 = the real UNet-B, on ``--device``) is timed on a batch of each
patch size, one warm-up step excluded; "loader / network" is the loader's samples/s over the network's. Below 1
the network waits for data. With 0 workers loading and training take turns in one process, so that figure is
the cost of training over the cost of loading; with workers they overlap, but on a CPU they share its cores.

Writes ``data_loading.json`` under ``--out`` and prints a table; nnU-Net's output goes to ``data_loading.log``.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_device, check_out_folder, quiet_work_folder, write_report  # noqa: E402  (beside it)

from nnunet_ext.errors import cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import int_at_least, positive_float  # noqa: E402

#: nnU-Net dataset id of the benchmark's dataset (7xx: out of the way of real and demo datasets).
DATASET_ID = 733
RESULT_STEM = "data_loading"
CONFIGURATION = "3d_fullres"
FOLD = 0
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: nnU-Net's number of augmentation workers, read by ``get_dataloaders`` (``get_allowed_n_proc_DA``).
WORKERS_ENV = "nnUNet_n_proc_DA"
#: Case-level trainer of each FOMO task measured, and nnU-Net's segmentation trainer it is compared with.
#: The ``_Scratch`` variants: loading and step costs do not depend on the weights, and the plans name no checkpoint.
CASE_LEVEL_TRAINERS = {1: "FomoClassificationTrainer_Scratch", 3: "FomoRegressionTrainer_Scratch"}
SEGMENTATION_TRAINER = "nnUNetTrainer"
CASE_LEVEL, SEGMENTATION = "case_level", "segmentation"
#: What turns the plans' case-level network into a segmentation one: the decoder instead of the pooling head.
HEAD_ARCH_KWARGS = ("head_dropout", "head_pool_levels", "head_pooling")
#: Patch edges are multiples of this (the encoder's 4 poolings) and at least this long (see the planner).
PATCH_MULTIPLE = 16
MIN_PATCH_EDGE = 32
#: Steps of each network before the timed ones (allocation, and torch.compile on a GPU).
NETWORK_WARMUP_STEPS = 1

DEFAULT_TASK = 3
DEFAULT_CASES = 10
#: 2 mm (as the IXI benchmark on a CPU): brains of about 60 x 85 x 70 voxels once nnU-Net crops them.
DEFAULT_SPACING_MM = 2.0
#: Cubic patches: a crop of the 2 mm brain, and about the whole of it (as 160 x 192 x 160 is at 1 mm).
DEFAULT_PATCH_EDGES = (48, 80)
DEFAULT_WORKERS = (0, 1, 2)
DEFAULT_BATCHES = 10
DEFAULT_REPEATS = 3
DEFAULT_STARTING_FILTERS = 32
#: ``--quick``: a smoke run of under a minute that only shows the benchmark works; its numbers mean nothing.
QUICK_CASES = 5
QUICK_SPACING_MM = 4.0
QUICK_PATCH_EDGES = (32,)
#: No worker and several workers: one worker more only repeats the multi-process path, for seconds of CI time.
QUICK_WORKERS = (0, 2)
QUICK_BATCHES = 2
QUICK_REPEATS = 2
QUICK_STARTING_FILTERS = 8


def patch_edge(text: str) -> int:
    """A patch edge: a multiple of :data:`PATCH_MULTIPLE` of at least :data:`MIN_PATCH_EDGE`."""
    value = int_at_least(MIN_PATCH_EDGE)(text)
    if value % PATCH_MULTIPLE:
        raise argparse.ArgumentTypeError(f"must be a multiple of {PATCH_MULTIPLE}, got {value}")
    return value


# -- set-up -------------------------------------------------------------------------------------------------


def configure_environment(work: Path) -> None:
    """nnU-Net's folders under ``work``, set before anything imports nnunetv2 (its paths module reads them once)."""
    for name in NNUNET_FOLDERS:
        (work / name).mkdir()
        os.environ[name] = str(work / name)
    # One worker process for planning: on a few cores nnU-Net's default of 8 only adds start-up time and memory.
    os.environ["nnUNet_def_n_proc"] = "1"


def prepare_dataset(task: int, n_cases: int, spacing: float, starting_filters: int, work: Path
                    ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Synthetic FOMO data -> ``fomo_convert`` -> ``fomo_plan_and_preprocess``; returns (plans, dataset.json)."""
    from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset
    from nnunet_ext.dataset_conversion.synthetic import make_synthetic_dataset
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings

    source = make_synthetic_dataset(task, work / "fomo", n_cases=n_cases, seed=0)
    convert_fomo_dataset(task, source, DATASET_ID)
    plans_file = fomo_plan_and_preprocess(
        DATASET_ID, FomoPlanSettings(spacing=(spacing,) * 3, starting_filters=starting_filters), num_processes=1)
    return json.loads(plans_file.read_text()), json.loads((plans_file.parent / "dataset.json").read_text())


def with_patch(plans: Dict[str, Any], patch: Sequence[int]) -> Dict[str, Any]:
    """A copy of ``plans`` training on ``patch``."""
    plans = copy.deepcopy(plans)
    plans["configurations"][CONFIGURATION]["patch_size"] = list(patch)
    return plans


def as_segmentation(plans: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of case-level ``plans`` whose network is the FOMO UNet with its decoder (nnUNetTrainer segments the
    label map, the brain mask, on the same preprocessed images)."""
    from nnunet_ext.networks import SEGMENTATION as SEGMENTATION_TASK

    plans = copy.deepcopy(plans)
    arch_kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    for key in HEAD_ARCH_KWARGS:
        arch_kwargs.pop(key, None)
    arch_kwargs["task_type"] = SEGMENTATION_TASK
    return plans


def build_trainers(task: int, plans: Dict[str, Any], dataset_json: Dict[str, Any], patch: Sequence[int],
                   device: str) -> Dict[str, Any]:
    """The case-level trainer and nnU-Net's, initialised (network, optimiser, loss) on ``patch``."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    import nnunet_ext.trainers

    classes = {CASE_LEVEL: (getattr(nnunet_ext.trainers, CASE_LEVEL_TRAINERS[task]), plans),
               SEGMENTATION: (nnUNetTrainer, as_segmentation(plans))}
    trainers = {}
    for kind, (trainer_class, kind_plans) in classes.items():
        trainer = trainer_class(plans={**with_patch(kind_plans, patch), "continue_training": False},
                                configuration=CONFIGURATION, fold=FOLD, dataset_json=dataset_json,
                                device=torch.device(device))
        trainer.initialize()
        trainers[kind] = trainer
    return trainers


# -- measurements -------------------------------------------------------------------------------------------


@contextmanager
def augmentation_workers(workers: int) -> Iterator[None]:
    """``nnUNet_n_proc_DA`` = ``workers`` inside the block only (during planning 0 would break nnU-Net)."""
    saved = os.environ.get(WORKERS_ENV)
    os.environ[WORKERS_ENV] = str(workers)
    try:
        yield
    finally:
        if saved is None:
            del os.environ[WORKERS_ENV]
        else:
            os.environ[WORKERS_ENV] = saved


@contextmanager
def training_loader(trainer, workers: int) -> Iterator[Tuple[Any, float]]:
    """The trainer's training augmenter with ``workers`` processes, and the seconds ``get_dataloaders`` took
    (workers started, the first batch of both loaders delivered); both augmenters' workers stop on exit."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    with augmentation_workers(workers):
        started = time.perf_counter()
        loaders = trainer.get_dataloaders()
        startup = time.perf_counter() - started
    try:
        yield loaders[0], startup
    finally:
        for augmenter in loaders:
            if isinstance(augmenter, NonDetMultiThreadedAugmenter):  # the single-threaded one has nothing to stop
                augmenter._finish()


def prefetch_capacity(augmenter) -> Tuple[int, int]:
    """(worker processes, batches they can have ready before anyone asks): the augmenter's two queues of
    ``num_cached``, the batch its results thread holds and one per worker waiting to put its own; (0, 0) in-process."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter

    if not isinstance(augmenter, NonDetMultiThreadedAugmenter):
        return 0, 0
    return augmenter.num_processes, 2 * augmenter.num_cached + 1 + augmenter.num_processes


def measure_loader(trainer, workers: int, batches: int) -> Dict[str, Any]:
    """Samples/s of ``batches`` training batches after the warm-up; start-up seconds; processes used."""
    with training_loader(trainer, workers) as (augmenter, startup):
        processes, prefetched = prefetch_capacity(augmenter)
        # batches prepared during start-up would inflate the rate: draw every one the augmenter can hold, and one more
        warmup = prefetched + 1
        for _ in range(warmup):
            next(augmenter)
        started = time.perf_counter()
        for _ in range(batches):
            next(augmenter)
        seconds = time.perf_counter() - started
    return {"samples_per_s": trainer.batch_size * batches / seconds, "startup_s": startup,
            "warmup_batches": warmup, "worker_processes": processes,
            "processes_left": len(multiprocessing.active_children())}


def network_batch(trainer) -> dict:
    """One training batch of ``trainer`` (drawn in this process), for timing its network."""
    with training_loader(trainer, 0) as (augmenter, _):
        return next(augmenter)


def time_step(trainer, batch: dict) -> float:
    """Seconds of one ``train_step`` (forward, backward, optimiser step; its loss read back, so a GPU synchronises)."""
    started = time.perf_counter()
    trainer.train_step(batch)
    return time.perf_counter() - started


def measure_patch(task: int, plans: Dict[str, Any], dataset_json: Dict[str, Any], patch: Sequence[int],
                  workers: Sequence[int], batches: int, repeats: int, device: str) -> Dict[str, Any]:
    """Both loaders at every worker count and both networks' steps on ``patch``, alternated over ``repeats``."""
    trainers = build_trainers(task, plans, dataset_json, patch, device)
    batch_of = {kind: network_batch(trainer) for kind, trainer in trainers.items()}
    for kind, trainer in trainers.items():
        trainer.network.train()
        for _ in range(NETWORK_WARMUP_STEPS):
            time_step(trainer, batch_of[kind])
    loads: Dict[int, Dict[str, List[Dict[str, Any]]]] = {w: {kind: [] for kind in trainers} for w in workers}
    steps: Dict[str, List[float]] = {kind: [] for kind in trainers}
    for repeat in range(repeats):
        order = list(trainers) if repeat % 2 == 0 else list(reversed(trainers))
        for n_workers in workers:
            for kind in order:
                loads[n_workers][kind].append(measure_loader(trainers[kind], n_workers, batches))
        for kind in order:
            steps[kind].append(time_step(trainers[kind], batch_of[kind]))
    batch_size = trainers[CASE_LEVEL].batch_size
    network = {kind: {"step_s": times, "median_step_s": statistics.median(times),
                      "samples_per_s": batch_size / statistics.median(times)} for kind, times in steps.items()}
    rows = []
    for n_workers, by_kind in loads.items():
        row: Dict[str, Any] = {"workers": n_workers, **{kind: summarise_loader(runs, network[kind]["samples_per_s"])
                                                        for kind, runs in by_kind.items()}}
        row["ratio"] = row[CASE_LEVEL]["median_samples_per_s"] / row[SEGMENTATION]["median_samples_per_s"]
        row["processes_left"] = max(r["processes_left"] for runs in by_kind.values() for r in runs)
        rows.append(row)
    return {"patch_size": list(patch), "batch_size": batch_size, "network": network, "loaders": rows}


def summarise_loader(runs: List[Dict[str, Any]], network_rate: float) -> Dict[str, Any]:
    """One loader's repeats at one worker count: every rate and start-up, their medians, the rate over its
    network's."""
    rate = statistics.median(r["samples_per_s"] for r in runs)
    return {"samples_per_s": [r["samples_per_s"] for r in runs], "median_samples_per_s": rate,
            "startup_s": [r["startup_s"] for r in runs],
            "median_startup_s": statistics.median(r["startup_s"] for r in runs),
            "warmup_batches": runs[0]["warmup_batches"], "worker_processes": runs[0]["worker_processes"],
            "loader_over_network": rate / network_rate}


def run_benchmark(task: int, n_cases: int, spacing: float, patch_edges: Sequence[int], workers: Sequence[int],
                  batches: int, repeats: int, starting_filters: int, device: str, work: Path) -> Dict[str, Any]:
    configure_environment(work)
    plans, dataset_json = prepare_dataset(task, n_cases, spacing, starting_filters, work)
    patches = [measure_patch(task, plans, dataset_json, (edge,) * 3, workers, batches, repeats, device)
               for edge in patch_edges]
    bottlenecks = [{"patch_size": p["patch_size"], "workers": row["workers"], "loader": kind}
                   for p in patches for row in p["loaders"] for kind in (CASE_LEVEL, SEGMENTATION)
                   if row[kind]["loader_over_network"] < 1]
    configuration = plans["configurations"][CONFIGURATION]
    return {"task": task, "trainers": {CASE_LEVEL: CASE_LEVEL_TRAINERS[task], SEGMENTATION: SEGMENTATION_TRAINER},
            "n_cases": n_cases, "spacing_mm": spacing,
            "median_image_size": configuration["median_image_size_in_voxels"],
            "planned_patch_size": configuration["patch_size"], "starting_filters": starting_filters,
            "device": device, "batches": batches, "repeats": repeats, "workers": list(workers),
            "cpu_count": len(os.sched_getaffinity(0)), "patches": patches, "loader_bottlenecks": bottlenecks,
            "processes_left": len(multiprocessing.active_children())}


def format_table(report: Dict[str, Any]) -> str:
    shape = "x".join(f"{edge:g}" for edge in report["median_image_size"])
    lines = [
        f"Task {report['task']}: {report['trainers'][CASE_LEVEL]} (case-level) vs nnU-Net's "
        f"{report['trainers'][SEGMENTATION]} on {report['n_cases']} synthetic subjects at {report['spacing_mm']:g} mm "
        f"(median image {shape}), {report['starting_filters']} starting filters on {report['device']}; medians of "
        f"{report['repeats']} alternated rounds of {report['batches']} batches",
        "| patch | batch | workers | case-level samples/s | nnU-Net samples/s | ratio | start-up s (case / nnU-Net) "
        "| loader / network (case / nnU-Net) |",
        "|---|---|---|---|---|---|---|---|"]
    for patch in report["patches"]:
        edges = "x".join(map(str, patch["patch_size"]))
        for row in patch["loaders"]:
            case, seg = row[CASE_LEVEL], row[SEGMENTATION]
            lines.append(f"| {edges} | {patch['batch_size']} | {row['workers']} | {case['median_samples_per_s']:.1f} | "
                         f"{seg['median_samples_per_s']:.1f} | {row['ratio']:.2f} | {case['median_startup_s']:.2f} / "
                         f"{seg['median_startup_s']:.2f} | {case['loader_over_network']:.1f} / "
                         f"{seg['loader_over_network']:.1f} |")
    lines += ["", "| patch | network samples/s: case-level (encoder + head) | nnU-Net (encoder + decoder) |",
              "|---|---|---|"]
    for patch in report["patches"]:
        network = patch["network"]
        lines.append(f"| {'x'.join(map(str, patch['patch_size']))} | {network[CASE_LEVEL]['samples_per_s']:.2f} | "
                     f"{network[SEGMENTATION]['samples_per_s']:.2f} |")
    slow = report["loader_bottlenecks"]
    lines.append("Loader slower than its network (the bottleneck): " + (
        "; ".join(f"{b['loader']} at {'x'.join(map(str, b['patch_size']))}, {b['workers']} workers" for b in slow)
        if slow else "never"))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for data_loading.json and data_loading.log (created if missing)")
    parser.add_argument("--task", type=int, choices=sorted(CASE_LEVEL_TRAINERS), default=DEFAULT_TASK,
                        help=f"FOMO task whose case-level trainer is measured: 3 (regression) or 1 (classification) "
                             f"(default {DEFAULT_TASK})")
    parser.add_argument("--cases", type=int_at_least(5), default=DEFAULT_CASES,
                        help=f"synthetic subjects, at least one per fold of the 5 (default {DEFAULT_CASES})")
    parser.add_argument("--spacing", type=positive_float, default=DEFAULT_SPACING_MM, metavar="MM",
                        help=f"isotropic planning spacing in mm (default {DEFAULT_SPACING_MM:g})")
    parser.add_argument("--patch-edges", type=patch_edge, nargs="+", default=DEFAULT_PATCH_EDGES, metavar="EDGE",
                        help=f"cubic training patches, edges in voxels, multiples of {PATCH_MULTIPLE} "
                             "(default %(default)s)")
    parser.add_argument("--workers", type=int_at_least(0), nargs="+", default=DEFAULT_WORKERS, metavar="N",
                        help="nnUNet_n_proc_DA values: 0 augments in the main process; nnU-Net caps them at the "
                             "CPU count (default %(default)s)")
    parser.add_argument("--batches", type=int_at_least(1), default=DEFAULT_BATCHES,
                        help=f"timed batches per measurement, after the warm-up (default {DEFAULT_BATCHES})")
    parser.add_argument("--repeats", type=int_at_least(1), default=DEFAULT_REPEATS,
                        help="alternated rounds of every measurement; medians are reported "
                             f"(default {DEFAULT_REPEATS})")
    parser.add_argument("--starting-filters", type=int_at_least(1), default=DEFAULT_STARTING_FILTERS,
                        help=f"network width of the timed training steps (default {DEFAULT_STARTING_FILTERS}, UNet-B)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device of the timed training steps (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run of under a minute: {QUICK_CASES} subjects at {QUICK_SPACING_MM:g} mm, patches "
                             f"{QUICK_PATCH_EDGES}, workers {QUICK_WORKERS}, {QUICK_STARTING_FILTERS} filters, "
                             f"{QUICK_REPEATS} rounds of {QUICK_BATCHES} batches")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    check_device(args.device)
    if args.quick:
        args.cases, args.spacing, args.patch_edges = QUICK_CASES, QUICK_SPACING_MM, QUICK_PATCH_EDGES
        args.workers = QUICK_WORKERS
        args.batches, args.repeats, args.starting_filters = QUICK_BATCHES, QUICK_REPEATS, QUICK_STARTING_FILTERS
    with quiet_work_folder(args.out, RESULT_STEM) as work:
        report = run_benchmark(args.task, args.cases, args.spacing, args.patch_edges, args.workers, args.batches,
                               args.repeats, args.starting_filters, args.device, work)
    write_report(args.out, RESULT_STEM, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
