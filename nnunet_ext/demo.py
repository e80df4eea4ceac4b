"""``fomo_demo``: the whole workflow, end to end, on generated synthetic FOMO data, on the CPU.

For each task: ``fomo_make_synthetic`` -> ``fomo_convert`` (with a held-out test set) -> ``fomo_plan_and_preprocess``
(with a checkpoint in the exact layout of the real ``epoch=12.ckpt``, narrower so that a CPU trains it in minutes)
-> nnU-Net's training of every fold -> ``fomo_find_best_configuration`` -> ``fomo_evaluate`` (each fold and the
ensemble predict the test set; metrics with confidence intervals, pictures, ``report.md``).

Every step calls the same entry point as the command a user types, so the demo is also a smoke test of the
documented workflow. Everything it writes stays under ``--out``, nnU-Net's three folders included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_ext.errors import FomoInputError, cli_entry

#: nnU-Net dataset ids of the demo datasets, one per FOMO task (9xx: out of the way of real datasets).
DEMO_DATASET_IDS = {1: 901, 2: 902, 3: 903}
TRAINERS = {1: "FomoClassificationTrainer", 2: "FomoFinetuneTrainer", 3: "FomoRegressionTrainer"}
#: The trainer variant the demo trains: a few short epochs (see nnunet_ext/trainers/variants.py).
DEMO_VARIANT = "_cpuDemo"
CONFIGURATION = "3d_fullres"
FOLDS = (0, 1, 2, 3, 4)
#: The real UNet-B has 32 starting filters; 8 keeps the demo's training on a CPU within minutes.
DEMO_STARTING_FILTERS = 8
DEMO_CASES = 20
DEMO_TEST_FRACTION = 0.2
#: Heads at a third of adult size: small volumes at the FOMO plans' 1 mm (see fomo_make_synthetic --scale).
DEMO_HEAD_SCALE = 0.3
#: Bootstrap resamples per confidence interval: enough for a demo, quick on a CPU.
DEMO_BOOTSTRAP = 200
#: A file marking a folder as the demo's own, so that a re-run may replace it and nothing else.
MARKER = ".fomo_demo"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    tasks: Sequence[int]
    folds: Sequence[int]
    cases: int
    seed: int

    def task_data(self, task: int) -> Path:
        return self.out / "fomo_data" / f"fomo-task{task}"

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / f"synthetic_unet_b_f{DEMO_STARTING_FILTERS}.ckpt"

    def report_dir(self, task: int) -> Path:
        return self.out / "reports" / f"task{task}"


def prepare_output(out: Path) -> None:
    """Start from an empty ``out``: a previous demo's output is replaced, any other non-empty folder refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FomoInputError("the folder is not empty and is no fomo_demo output; choose another --out", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by fomo_demo; a re-run replaces this folder\n")


def configure_environment(out: Path) -> None:
    """nnU-Net's folders under ``out`` and its CPU settings, set before anything imports nnunetv2.

    nnunetv2.paths reads the folders once, at import: hence the imports of the pipeline inside the functions below.
    """
    for name in NNUNET_FOLDERS:
        (out / name).mkdir(exist_ok=True)
        os.environ[name] = str(out / name)
    # One worker process: on a few CPU cores nnU-Net's default of 8 workers only adds start-up time and memory.
    os.environ["nnUNet_def_n_proc"] = "1"
    from nnunet_ext.env import EXT_TRAINER_VAR, ext_trainer_value

    os.environ[EXT_TRAINER_VAR] = ext_trainer_value(os.environ.get(EXT_TRAINER_VAR))


def step(title: str, command: Sequence[str], entry: Callable[[List[str]], int]) -> None:
    """Run one documented command in this process, printing it as the user would type it."""
    print(f"\n=== {title}\n$ {' '.join(command)}", flush=True)
    started = time.monotonic()
    status = entry(list(command[1:]))
    if status:
        raise SystemExit(status)
    print(f"--- {title}: {time.monotonic() - started:.0f} s", flush=True)


def train_folds(dataset_id: int, trainer: str, folds: Sequence[int]) -> None:
    """``nnUNetv2_train ID 3d_fullres FOLD -tr TRAINER -device cpu`` for every fold, through nnU-Net's own API."""
    import torch
    from nnunetv2.run.run_training import run_training

    # Data augmentation in the main process: worker processes gain nothing on a couple of cores. Set for training
    # only: during planning nnU-Net would derive torch.set_num_threads(0) from it.
    os.environ["nnUNet_n_proc_DA"] = "0"
    try:
        for fold in folds:
            command = f"nnUNetv2_train {dataset_id} {CONFIGURATION} {fold} -tr {trainer} -device cpu"
            print(f"\n=== training fold {fold}\n$ {command}", flush=True)
            run_training(str(dataset_id), CONFIGURATION, fold, trainer, device=torch.device("cpu"))
    finally:
        del os.environ["nnUNet_n_proc_DA"]


def run_task(task: int, settings: DemoSettings) -> Path:
    """The whole workflow for one FOMO task; returns the folder of its report."""
    from nnunet_ext.dataset_conversion import convert, synthetic
    from nnunet_ext.evaluation import evaluate, model_selection
    from nnunet_ext.preprocessing import plan_and_preprocess

    dataset = str(DEMO_DATASET_IDS[task])
    trainer = TRAINERS[task] + DEMO_VARIANT
    folds = [str(f) for f in settings.folds]
    data = settings.task_data(task)
    step(f"task {task}: synthetic FOMO data",
         ["fomo_make_synthetic", "--task", str(task), "--out", str(data), "--cases", str(settings.cases),
          "--seed", str(settings.seed), "--scale", str(DEMO_HEAD_SCALE)], synthetic.main)
    step(f"task {task}: conversion to nnU-Net raw",
         ["fomo_convert", "--task", str(task), "-i", str(data), "-d", dataset,
          "--test-fraction", str(DEMO_TEST_FRACTION), "--seed", str(settings.seed)], convert.main)
    step(f"task {task}: FOMO plans and preprocessing",
         ["fomo_plan_and_preprocess", "-d", dataset, "--pretrained", str(settings.checkpoint),
          "--starting-filters", str(DEMO_STARTING_FILTERS), "-np", "1"], plan_and_preprocess.main)
    train_folds(int(dataset), trainer, settings.folds)
    step(f"task {task}: model selection",
         ["fomo_find_best_configuration", "-d", dataset, "-tr", trainer, "-f", *folds], model_selection.main)
    report = settings.report_dir(task)
    step(f"task {task}: test-set evaluation of every fold and the ensemble",
         ["fomo_evaluate", "-d", dataset, "-tr", trainer, "-f", *folds, "-o", str(report), "-device", "cpu",
          "--n-bootstrap", str(DEMO_BOOTSTRAP), "--seed", str(settings.seed)], evaluate.main)
    return report


def write_index(settings: DemoSettings, reports: Dict[int, Path], seconds: float) -> Path:
    """``REPORT.md`` at the top of ``--out``: one line per task linking its report."""
    from nnunet_ext.dataset_conversion.tasks import get_task
    from nnunet_ext.utils.files import atomic_write_text

    lines = ["# fomo_demo: synthetic FOMO data, end to end on the CPU", "",
             f"{settings.cases} synthetic subjects per task (seed {settings.seed}), folds "
             f"{', '.join(map(str, settings.folds))}, UNet-B layout with {DEMO_STARTING_FILTERS} starting filters, "
             f"{seconds / 60:.1f} min in all. The numbers show that the pipeline works, not what the real "
             "checkpoint achieves on the real data.", ""]
    for task, report in reports.items():
        spec = get_task(task)
        lines.append(f"- Task {task} ({spec.target_name}, {spec.task_type}): "
                     f"[{report.relative_to(settings.out)}/report.md]({report.relative_to(settings.out)}/report.md)")
    index = settings.out / "REPORT.md"
    atomic_write_text(index, "\n".join(lines) + "\n")
    return index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"),
                        help="output folder (data, nnU-Net folders, reports); a previous demo output there is "
                             "replaced, any other non-empty folder refused")
    parser.add_argument("--tasks", type=int, nargs="+", default=sorted(DEMO_DATASET_IDS),
                        choices=sorted(DEMO_DATASET_IDS), help="FOMO tasks to run")
    parser.add_argument("--folds", type=int, nargs="+", default=list(FOLDS), choices=list(FOLDS),
                        help="cross-validation folds to train (the ensemble averages them)")
    parser.add_argument("--cases", type=int, default=DEMO_CASES, help="synthetic subjects per task")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the splits and the bootstrap")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = DemoSettings(args.out.resolve(), args.tasks, args.folds, args.cases, args.seed)
    started = time.monotonic()
    prepare_output(settings.out)
    configure_environment(settings.out)
    from nnunet_ext.pretrained.testing import make_fomo_checkpoint

    make_fomo_checkpoint(settings.checkpoint, starting_filters=DEMO_STARTING_FILTERS)
    reports = {task: run_task(task, settings) for task in settings.tasks}
    index = write_index(settings, reports, time.monotonic() - started)
    print(f"\nDone in {(time.monotonic() - started) / 60:.1f} min. Reports: {index}")
    for task, report in reports.items():
        print(f"  task {task}: {report / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
