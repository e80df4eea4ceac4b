"""The three trainers for a few epochs at the real size, with nnU-Net's defaults for the device.

For each FOMO task: synthetic brain-sized data at 1 mm (``--cases`` subjects) -> ``fomo_convert`` ->
``fomo_plan_and_preprocess`` (a checkpoint of ``--starting-filters``, 32 as the real UNet-B; the planned patch and
batch), then fold 0 of the task's trainer (``FomoClassificationTrainer``, ``FomoFinetuneTrainer``,
``FomoRegressionTrainer``) built as ``nnUNetv2_train`` builds it and trained by nnU-Net's own loop for ``--epochs``
x ``--iterations`` steps. On a GPU that is nnU-Net's default: mixed precision and ``torch.compile`` (unless
``nnUNet_compile`` says otherwise), its data-augmentation workers, and what ``nnUNetv2_train`` sets for the device
on a GPU (:func:`use_nnunet_train_settings`: cuDNN autotuning, one CPU thread). Printed per trainer: training iterations per
second (the training phase of each epoch after the first, which holds start-up and compilation), the first
epoch's seconds, the validation phase's seconds per epoch, the peak GPU memory (on the CPU: the process's peak
resident memory), and the last validation metric (pseudo Dice, or the task metric on whole cases). The weights
are the synthetic checkpoint's (random): the metric shows that validation runs, not what pretraining gives.

Run by ``benchmarks/gpu_check.sh`` together with ``benchmarks/inference.py``. Writes ``gpu_training.json`` and
nnU-Net's output (``gpu_training.log``) under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "benchmarks"):  # run as a script from a clone without installing
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from inference import BRAIN_SHAPE, CONFIGURATION, TRAINERS, configure_environment, plan_task  # noqa: E402
from reporting import check_device, check_out_folder, quiet_work_folder, write_report  # noqa: E402

from nnunet_ext.errors import cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import int_at_least  # noqa: E402

#: nnU-Net dataset ids, per task (7xx: out of the way of real, demo and the other benchmarks' datasets).
DATASET_IDS = {1: 751, 2: 752, 3: 753}
FOLD = 0
RESULT_STEM = "gpu_training"
DEFAULT_STARTING_FILTERS = 32
DEFAULT_CASES = 10
DEFAULT_EPOCHS = 3
DEFAULT_ITERATIONS = 40
DEFAULT_VAL_ITERATIONS = 10
BYTES_PER_GIB = 2 ** 30
KIB_PER_GIB = 2 ** 20
#: ``--quick``: a smoke run of a few seconds per task on a CPU.
QUICK_STARTING_FILTERS = 4
QUICK_SCALE = 0.3
QUICK_CASES = 10
QUICK_EPOCHS = 2
QUICK_ITERATIONS = 3
QUICK_VAL_ITERATIONS = 1


class PhaseClock:
    """Timestamps of each epoch's training and validation phases, taken at nnU-Net's hooks (after a CUDA
    synchronisation, so that queued kernels count where they ran)."""

    def __init__(self, trainer):
        import torch

        self.synchronise = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        self.train_start: List[float] = []
        self.validation_start: List[float] = []
        self.epoch_end: List[float] = []
        for hook, stamps in (("on_train_epoch_start", self.train_start),
                             ("on_validation_epoch_start", self.validation_start), ("on_epoch_end", self.epoch_end)):
            setattr(trainer, hook, self._stamped(getattr(trainer, hook), stamps, before=hook != "on_epoch_end"))

    def _stamped(self, method, stamps: List[float], before: bool):
        def stamped(*args, **kwargs):
            if before:
                self.synchronise()
                stamps.append(time.perf_counter())
            result = method(*args, **kwargs)
            if not before:
                self.synchronise()
                stamps.append(time.perf_counter())
            return result
        return stamped


def use_nnunet_train_settings(device: str) -> None:
    """What ``nnUNetv2_train`` sets before training on a GPU (nnunetv2.run.run_training: run_training_entry and
    run_training): one CPU thread (more only compete with the augmentation workers) and cuDNN's autotuning
    (``benchmark``, non-deterministic). On the CPU the process keeps the threads its caller gave it (the tests
    share the cores between processes), where ``nnUNetv2_train -device cpu`` would take every core."""
    import torch
    from torch.backends import cudnn

    if device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        cudnn.deterministic = False
        cudnn.benchmark = True


def peak_memory_gib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / BYTES_PER_GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_GIB  # Linux reports KiB


def train_task(task: int, args: argparse.Namespace) -> Dict[str, Any]:
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_IDS[task]), CONFIGURATION, FOLD, TRAINERS[task],
                                    device=torch.device(args.device))
    trainer.num_epochs = args.epochs
    trainer.num_iterations_per_epoch = args.iterations
    trainer.num_val_iterations_per_epoch = args.val_iterations
    clock = PhaseClock(trainer)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.run_training()
    training = [v - t for t, v in zip(clock.train_start, clock.validation_start)]
    validation = [e - v for v, e in zip(clock.validation_start, clock.epoch_end)]
    metric = getattr(trainer, "selection_metric", "mean_fg_dice")
    configuration = trainer.configuration_manager
    return {"task": task, "trainer": TRAINERS[task], "patch_size": list(configuration.patch_size),
            "batch_size": configuration.batch_size, "compiled": bool(trainer._do_i_compile()),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cpu_threads": torch.get_num_threads(),
            "first_epoch_seconds": training[0] + validation[0],
            "iterations_per_second": statistics.median(args.iterations / t for t in training[1:]),
            "validation_seconds_per_epoch": statistics.median(validation[1:]),
            "peak_memory_gib": peak_memory_gib(args.device), "validation_metric": metric,
            "validation_value": trainer.logger.get_value(metric, step=None)[-1]}


def format_table(report: Dict[str, Any]) -> str:
    memory = "peak GPU memory GiB" if report["device"] == "cuda" else "peak process memory GiB"
    rows = [f"| {r['trainer']} | {'x'.join(map(str, r['patch_size']))} x {r['batch_size']} | {r['compiled']} | "
            f"{r['iterations_per_second']:.2f} | {r['first_epoch_seconds']:.1f} | "
            f"{r['validation_seconds_per_epoch']:.1f} | {r['peak_memory_gib']:.1f} | "
            f"{r['validation_metric']} {r['validation_value']:.3f} |" for r in report["tasks"].values()]
    return "\n".join([
        f"{report['device']} ({report['device_name']}), {report['starting_filters']} starting filters, "
        f"{report['epochs']} epochs x {report['iterations']} iterations",
        f"| trainer | patch x batch | compiled | it/s | first epoch s | validation s/epoch | {memory} | "
        "last validation |", "|---|---|---|---|---|---|---|---|", *rows])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_training.json (created if missing)")
    parser.add_argument("--tasks", type=int, nargs="+", choices=(1, 2, 3), default=(1, 2, 3),
                        help="FOMO tasks whose trainer is run (default: all three)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="training device")
    parser.add_argument("--starting-filters", type=int_at_least(1), default=DEFAULT_STARTING_FILTERS,
                        help=f"UNet-B width (default {DEFAULT_STARTING_FILTERS}, the real checkpoint's)")
    parser.add_argument("--cases", type=int_at_least(10), default=DEFAULT_CASES,
                        help=f"synthetic subjects per task, brain-sized (default {DEFAULT_CASES})")
    parser.add_argument("--epochs", type=int_at_least(2), default=DEFAULT_EPOCHS,
                        help=f"epochs; the first is reported apart (default {DEFAULT_EPOCHS})")
    parser.add_argument("--iterations", type=int_at_least(1), default=DEFAULT_ITERATIONS,
                        help=f"training iterations per epoch (default {DEFAULT_ITERATIONS})")
    parser.add_argument("--val-iterations", type=int_at_least(1), default=DEFAULT_VAL_ITERATIONS,
                        help=f"nnU-Net's validation iterations per epoch (default {DEFAULT_VAL_ITERATIONS})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_STARTING_FILTERS} starting filters, small heads (scale "
                             f"{QUICK_SCALE}), {QUICK_EPOCHS} x {QUICK_ITERATIONS} iterations")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    check_device(args.device)
    scale = 1.0
    if args.quick:
        args.starting_filters, args.cases, scale = QUICK_STARTING_FILTERS, QUICK_CASES, QUICK_SCALE
        args.epochs, args.iterations, args.val_iterations = QUICK_EPOCHS, QUICK_ITERATIONS, QUICK_VAL_ITERATIONS
    shape = tuple(round(edge * scale) for edge in BRAIN_SHAPE)
    use_nnunet_train_settings(args.device)
    with quiet_work_folder(args.out, RESULT_STEM) as work:
        import torch

        configure_environment(work)
        if args.device == "cpu":
            os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation workers gain nothing on a few cores
        tasks = {}
        for task in sorted(set(args.tasks)):
            plan_task(task, DATASET_IDS[task], args.starting_filters, work, None, n_cases=args.cases, shape=shape,
                      scale=scale)
            tasks[str(task)] = train_task(task, args)
        device_name = torch.cuda.get_device_name() if args.device == "cuda" else \
            f"{len(os.sched_getaffinity(0))} CPU cores"
    report = {"device": args.device, "device_name": device_name, "starting_filters": args.starting_filters,
              "cases": args.cases, "shape": list(shape), "epochs": args.epochs, "iterations": args.iterations,
              "val_iterations": args.val_iterations, "tasks": tasks}
    write_report(args.out, RESULT_STEM, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
