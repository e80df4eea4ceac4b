"""``fomo_demo``: the whole workflow, end to end, on generated synthetic FOMO data, on the CPU.

First the encoder is pretrained: ``fomo_make_synthetic --task pretrain`` (an unlabelled pool of scans, subjects
apart from the tasks') -> ``fomo_convert --task pretrain`` -> ``fomo_plan_and_preprocess`` -> nnU-Net's training of
``FomoPretrainTrainer`` (masked image modelling) -> ``fomo_export_pretrained``, a checkpoint in the exact layout of
the real ``epoch=12.ckpt``, narrower so that a CPU trains it in minutes. Then, for each task: ``fomo_make_synthetic``
-> ``fomo_convert`` (with a held-out test set) -> ``fomo_plan_and_preprocess --pretrained`` (that checkpoint) ->
nnU-Net's training of every fold -> ``fomo_find_best_configuration`` -> ``fomo_evaluate`` (each fold and the
ensemble predict the test set; metrics with confidence intervals, pictures, ``report.md``). ``--init scratch``
trains the same folds from random weights instead (``benchmarks/pretraining.py`` compares the two).

Every step calls the same entry point as the command a user types, so the demo is also a smoke test of the
documented workflow. The console gets one line per step with its duration and a progress bar while folds train;
everything the step printed (nnU-Net's logs included) goes to a log file under ``--out/logs/``, named in that line,
and a failing step shows the end of its log. Everything it writes stays under ``--out``, nnU-Net's three folders
included. ``REPORT.md`` opens with each task's ensemble against its trivial reference.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from nnunet_ext.errors import FomoInputError, Terminated, cli_entry
from nnunet_ext.utils.arguments import fraction
from nnunet_ext.utils.files import require_output_folder

#: nnU-Net dataset ids of the demo datasets, one per FOMO task (9xx: out of the way of real datasets).
DEMO_DATASET_IDS = {1: 901, 2: 902, 3: 903}
#: nnU-Net dataset id of the unlabelled pretraining pool.
POOL_DATASET_ID = 900
TRAINERS = {1: "FomoClassificationTrainer", 2: "FomoFinetuneTrainer", 3: "FomoRegressionTrainer"}
PRETRAIN_TRAINER = "FomoPretrainTrainer"
#: Where the task models start (``--init``), and the trainer variant each trains: a short CPU schedule per task type
#: (see nnunet_ext/trainers/variants.py), from the demo's pretrained checkpoint or from random weights.
INIT_PRETRAINED, INIT_SCRATCH = "pretrained", "scratch"
DEMO_VARIANTS = {INIT_PRETRAINED: "_cpuDemo", INIT_SCRATCH: "_cpuDemoScratch"}
#: ``--smoke``: every training is ``_debug``-length (2 epochs x 4 steps): the machinery in a minute or two.
SMOKE_VARIANTS = {INIT_PRETRAINED: "_debug", INIT_SCRATCH: "_debugScratch"}
#: Subjects of the pretraining pool (about 3 scans each: every sequence of the tasks) and its planned spacing: the
#: image-level tasks are planned at 2 mm, segmentation at 1 mm; the encoder sees 1.5 mm, between the two.
POOL_SUBJECTS = 60
POOL_SPACING_MM = 1.5
CONFIGURATION = "3d_fullres"
FOLDS = (0, 1, 2, 3, 4)
#: The real UNet-B has 32 starting filters; 8 keeps the demo's training on a CPU within minutes.
DEMO_STARTING_FILTERS = 8
#: Heads at a third of adult size: small volumes at 1 mm (see fomo_make_synthetic --scale).
DEMO_HEAD_SCALE = 0.3
#: Bootstrap resamples per confidence interval: enough for a demo, quick on a CPU.
DEMO_BOOTSTRAP = 500
#: A file marking a folder as the demo's own, so that a re-run may replace it and nothing else.
MARKER = ".fomo_demo"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: Processes for fingerprinting and preprocessing: the two cores of the machines the demo is made for.
DEMO_PROCESSES = 2
#: Lines of a failed step's log shown on the console.
FAILED_LOG_TAIL = 30
#: Seconds between looks at the training folds (progress bar, failures).
FOLD_POLL_S = 0.5
#: Seconds a fold worker has to end after SIGTERM before it is killed.
PROCESS_EXIT_TIMEOUT_S = 10


@dataclass(frozen=True)
class TaskRecipe:
    """How the demo runs one task: subjects, held-out fraction, planned spacing and (image-level tasks) the head.

    The synthetic signal is fomo_make_synthetic's, unchanged; only the amount of data and the resolution the
    network sees are chosen here, for 2 CPU cores.
    """

    cases: int
    test_fraction: float
    #: Isotropic spacing (mm) of the plans. 2 mm for the image-level tasks: their label is a property of the whole
    #: brain, which then fits one small patch; segmentation stays at 1 mm, where the masks are scored.
    spacing_mm: float
    #: Encoder levels pooled by the image-level head and how (None for segmentation). Max pooling: see
    #: nnunet_ext.networks.heads.PoolingHead.
    head_pool_levels: Optional[Tuple[int, ...]] = None
    head_pooling: Optional[str] = None
    #: How the 1-channel pretrained stem takes the task's channels (``--channel-adaptation``); None: the default.
    channel_adaptation: Optional[str] = None

    def head_arguments(self) -> List[str]:
        """The ``fomo_plan_and_preprocess`` options of the head."""
        if self.head_pool_levels is None:
            return []
        return ["--head-pool-levels", *map(str, self.head_pool_levels), "--head-pooling", str(self.head_pooling)]

    def start_arguments(self, checkpoint: Optional[Path]) -> List[str]:
        """The ``fomo_plan_and_preprocess`` options of the starting weights (none from scratch)."""
        if checkpoint is None:
            return []
        adaptation = [] if self.channel_adaptation is None else ["--channel-adaptation", self.channel_adaptation]
        return ["--pretrained", str(checkpoint), *adaptation]


#: 40 subjects hold out 8 for the test set (at least 8 test cases: second sessions add some), and leave 32 for
#: the 5 folds. Brain age, a subtle whole-brain signal, gets 160 (training steps, not subjects, set the cost: with
#: 80 the same steps gave an MAE of 0.53 of the mean predictor's, with 160 0.44); its head pools the average as
#: well as the maximum, since its signal is an amount (of CSF), not a presence. Meningioma is bright in every
#: sequence of Task 2 (DWI, FLAIR and SWI / T2* alike), so its stem gets the pretrained kernel on every channel
#: ("copy"), where the default puts it on DWI alone: ensemble Dice 0.809 against 0.757 in one demo each.
DEMO_RECIPES: Dict[int, TaskRecipe] = {
    1: TaskRecipe(cases=40, test_fraction=0.2, spacing_mm=2.0, head_pool_levels=(1, 2, 3, 4), head_pooling="max"),
    2: TaskRecipe(cases=40, test_fraction=0.2, spacing_mm=1.0, channel_adaptation="copy"),
    3: TaskRecipe(cases=160, test_fraction=0.2, spacing_mm=2.0, head_pool_levels=(1, 2, 3, 4), head_pooling="avgmax"),
}


@dataclass(frozen=True)
class DemoSettings:
    out: Path
    tasks: Sequence[int]
    folds: Sequence[int]
    cases: Optional[int]  # None: each recipe's
    seed: int
    init: str = INIT_PRETRAINED
    smoke: bool = False
    train_fraction: float = 1.0  # share of each task's non-test subjects trained on (fomo_convert --train-fraction)

    @property
    def pretrain_trainer(self) -> str:
        return PRETRAIN_TRAINER + (SMOKE_VARIANTS if self.smoke else DEMO_VARIANTS)[INIT_PRETRAINED]

    @property
    def variant(self) -> str:
        """The task trainers' variant suffix."""
        return (SMOKE_VARIANTS if self.smoke else DEMO_VARIANTS)[self.init]

    def task_trainer(self, task: int) -> str:
        return TRAINERS[task] + self.variant

    def task_data(self, task: int) -> Path:
        return self.out / "fomo_data" / f"fomo-task{task}"

    @property
    def pool_data(self) -> Path:
        return self.out / "fomo_data" / "pretraining-pool"

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / f"pretrained_unet_f{DEMO_STARTING_FILTERS}_lw_dec.ckpt"

    def report_dir(self, task: int) -> Path:
        return self.out / "reports" / f"task{task}"

    def log(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.log"

    def cases_of(self, task: int) -> int:
        return self.cases if self.cases is not None else DEMO_RECIPES[task].cases


class StepFailed(Exception):
    """A step of the demo failed; its log holds the details."""


class Console:
    """The terminal the demo reports to while the steps' own output goes to log files."""

    def __init__(self, out: Path):
        self.out = out
        # a duplicate of the original stdout: file descriptor 1 itself is redirected to each step's log
        self.stream: TextIO = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        self.commands: List[str] = []

    def print(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def step_line(self, title: str, seconds: float, log: Path) -> None:
        self.print(f"{title:<56} {seconds:6.0f} s   log: {log.relative_to(self.out)}")


@contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send this process's stdout and stderr to ``log``, at the file-descriptor level, so that nnU-Net's prints,
    its worker processes and C libraries land there too, and at Python's (where ``sys.stdout`` is no file
    descriptor 1: a notebook, pytest's capture)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", buffering=1) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with redirect_stdout(sink), redirect_stderr(sink):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def run_step(console: Console, title: str, log: Path, action: Callable[[], None]) -> None:
    """Run ``action`` with its output in ``log``; one console line with the duration, or the log's end on failure."""
    started = time.monotonic()
    try:
        with output_to(log):
            try:
                action()
            except Terminated:
                raise  # SIGTERM ends the demo as Ctrl-C does (cli_entry's exit status), not as a failed step
            except SystemExit as e:
                if e.code not in (0, None):
                    raise StepFailed(f"exit status {e.code}") from None
            except Exception:
                traceback.print_exc()
                raise StepFailed("an error (traceback in the log)") from None
    except StepFailed as failure:
        lines = log.read_text(errors="replace").splitlines()[-FAILED_LOG_TAIL:]
        console.print(f"{title}: FAILED after {time.monotonic() - started:.0f} s with {failure}. "
                      f"Last lines of {log}:")
        console.print("\n".join(f"    {line}" for line in lines))
        raise
    console.step_line(title, time.monotonic() - started, log)


def command_step(console: Console, title: str, log: Path, command: Sequence[str],
                 entry: Callable[[List[str]], int]) -> None:
    """Run one documented command in this process; the command line heads its log and the demo's report."""
    line = " ".join(command)
    console.commands.append(line)

    def action() -> None:
        print(f"$ {line}", flush=True)
        status = entry(list(command[1:]))
        if status:
            raise SystemExit(status)

    run_step(console, title, log, action)


def prepare_output(out: Path) -> None:
    """Start from an empty ``out``: a previous demo's output is replaced, any other non-empty folder refused."""
    if out.exists():
        require_output_folder(out)
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


def seed_everything(seed: int) -> None:
    """Seed the generators nnU-Net's sampling, augmentation (in-process, see train_folds) and initialisation use."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


#: Fold workers of train_folds: each is a process of its own, set up once (pickling hands them these).
_fold_progress = None  # a queue: one item per finished epoch, for the progress bar
_folds_running = None  # a shared counter: how many folds are training right now


def _init_fold_worker(progress, running) -> None:
    global _fold_progress, _folds_running
    _fold_progress, _folds_running = progress, running


def _end_processes(processes) -> None:
    """SIGTERM each of ``processes`` still running (spawned interpreters: SIGTERM's default action ends them at
    once), and SIGKILL any that has not ended :data:`PROCESS_EXIT_TIMEOUT_S` later."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(PROCESS_EXIT_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()


def _share_cores() -> None:
    """Give this fold its share of the cores among the folds training right now (all of them once it is alone)."""
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, _folds_running.value)))


def _train_fold(dataset_id: int, trainer_name: str, fold: int, seed: int, command: str, log: Path) -> None:
    """One fold, as ``nnUNetv2_train`` trains it, in a fold worker; its output goes to ``log``."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    with _folds_running.get_lock():
        _folds_running.value += 1
    try:
        with output_to(log):
            print(f"$ {command}", flush=True)
            # Data augmentation in this process: the folds already keep every core busy (and it keeps the seeded
            # run reproducible). The worker's own environment, so that the user's stays as it was.
            os.environ["nnUNet_n_proc_DA"] = "0"
            _share_cores()
            seed_everything(seed + (fold if isinstance(fold, int) else 0))  # fold 'all' of pretraining
            try:
                trainer = get_trainer_from_args(str(dataset_id), CONFIGURATION, fold, trainer_name,
                                                device=torch.device("cpu"))
                epoch_end = trainer.on_epoch_end

                def on_epoch_end() -> None:
                    epoch_end()
                    _fold_progress.put(1)
                    _share_cores()  # a fold left alone takes the cores the others no longer use

                trainer.on_epoch_end = on_epoch_end
                trainer.run_training()
                trainer.perform_actual_validation()
            except BaseException:
                traceback.print_exc()
                raise
    finally:
        with _folds_running.get_lock():
            _folds_running.value -= 1


def _count_epochs(progress, bar) -> None:
    """Advance ``bar`` by the epochs the fold workers reported since the last look."""
    from queue import Empty

    try:
        while True:
            progress.get_nowait()
            bar.update(1)
    except Empty:
        pass


def train_folds(console: Console, dataset_id: int, trainer_name: str, settings: DemoSettings, title: str,
                log: Path, folds: Optional[Sequence] = None) -> None:
    """``nnUNetv2_train ID 3d_fullres FOLD -tr TRAINER -device cpu`` for every fold, through nnU-Net's own API, with
    a progress bar over all folds' epochs on the console.

    The folds train side by side, one process per core (at most one per fold), each on its share of the cores: the
    demo's small networks keep one core busy far better than two (data augmentation and the many small kernels of
    an 8-filter network run on one thread), so two folds at once train faster than one fold on both cores. Each
    fold's output goes to a log of its own beside ``log``."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from tqdm import tqdm

    from nnunet_ext.trainers.variants import DEBUG_EPOCHS, DEMO_SCHEDULES

    folds = list(settings.folds if folds is None else folds)
    epochs = DEBUG_EPOCHS if settings.smoke else DEMO_SCHEDULES[_task_type(dataset_id)].epochs
    commands = {fold: f"nnUNetv2_train {dataset_id} {CONFIGURATION} {fold} -tr {trainer_name} -device cpu"
                for fold in folds}
    console.commands += commands.values()
    fold_logs = {fold: log.with_name(f"{log.stem}_fold{fold}{log.suffix}") for fold in folds}
    workers = min(len(folds), len(os.sched_getaffinity(0)))
    bar = tqdm(total=epochs * len(folds), desc=f"{title} ({len(folds)} fold{'s' * (len(folds) > 1)})",
               unit="epoch", file=console.stream, leave=False, dynamic_ncols=True)

    def action() -> None:
        print(f"{len(folds)} folds in {workers} processes; each fold's log: "
              + ", ".join(str(path) for path in fold_logs.values()), flush=True)
        context = multiprocessing.get_context("spawn")  # nnU-Net's own choice; fork would copy this process's threads
        progress, running = context.Queue(), context.Value("i", 0)
        # The pool's workers are this process's only children born from here on: ProcessPoolExecutor keeps its
        # processes private, but multiprocessing lists every child it started (also one still starting up).
        children_before = set(multiprocessing.active_children())
        try:
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_fold_worker,
                                     initargs=(progress, running)) as pool:
                try:
                    pending = {pool.submit(_train_fold, dataset_id, trainer_name, fold, settings.seed,
                                           commands[fold], fold_logs[fold]): fold for fold in folds}
                    while pending:
                        done, _ = wait(pending, timeout=FOLD_POLL_S, return_when=FIRST_COMPLETED)
                        _count_epochs(progress, bar)
                        for future in done:
                            fold = pending.pop(future)
                            if future.exception() is not None:
                                tail = fold_logs[fold].read_text(errors="replace").splitlines()[-FAILED_LOG_TAIL:]
                                print("\n".join(tail), flush=True)
                                raise RuntimeError(f"fold {fold} failed; its log: {fold_logs[fold]}") from None
                except BaseException:
                    # A failed fold, Ctrl-C or SIGTERM: end the other folds now. The pool's own exit would wait for
                    # the running folds to train to their end, and then train the queued ones.
                    pool.shutdown(wait=False, cancel_futures=True)
                    _end_processes(set(multiprocessing.active_children()) - children_before)
                    raise
            bar.update(bar.total - bar.n)  # early stopping skips epochs
        finally:
            bar.close()  # before run_step prints the step's line, which the bar would otherwise share

    run_step(console, title, log, action)


def _task_type(dataset_id: int) -> str:
    """The task type the converter recorded in the raw dataset.json."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    from nnunet_ext.dataset_conversion.tasks import FOMO_KEY

    dataset_json = Path(nnUNet_raw, convert_id_to_dataset_name(dataset_id), "dataset.json")
    return json.loads(dataset_json.read_text())[FOMO_KEY]["task_type"]


def pretrain(console: Console, settings: DemoSettings) -> dict:
    """Pretrain the encoder on an unlabelled synthetic pool and export it; returns the held-out reconstruction
    summary (``validation/summary.json``) with the pool's size."""
    from nnunet_ext.dataset_conversion import convert, synthetic
    from nnunet_ext.preprocessing import plan_and_preprocess
    from nnunet_ext.pretrained import export

    dataset = str(POOL_DATASET_ID)
    command_step(console, f"pretraining: unlabelled synthetic pool ({POOL_SUBJECTS} subjects)",
                 settings.log("pretraining_1_synthetic"),
                 ["fomo_make_synthetic", "--task", "pretrain", "--out", str(settings.pool_data), "--cases",
                  str(POOL_SUBJECTS), "--seed", str(settings.seed), "--scale", str(DEMO_HEAD_SCALE)], synthetic.main)
    command_step(console, "pretraining: conversion to nnU-Net raw", settings.log("pretraining_2_convert"),
                 ["fomo_convert", "--task", "pretrain", "-i", str(settings.pool_data), "-d", dataset,
                  "--seed", str(settings.seed)], convert.main)
    command_step(console, f"pretraining: FOMO plans and preprocessing ({POOL_SPACING_MM:g} mm)",
                 settings.log("pretraining_3_plan_and_preprocess"),
                 ["fomo_plan_and_preprocess", "-d", dataset, "--starting-filters", str(DEMO_STARTING_FILTERS),
                  "--spacing", f"{POOL_SPACING_MM:g}", "-np", str(DEMO_PROCESSES)], plan_and_preprocess.main)
    train_folds(console, POOL_DATASET_ID, settings.pretrain_trainer, settings, "pretraining: masked image modelling",
                settings.log("pretraining_4_training"), folds=["all"])
    settings.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    command_step(console, "pretraining: export as a FOMO checkpoint", settings.log("pretraining_5_export"),
                 ["fomo_export_pretrained", "-d", dataset, "-tr", settings.pretrain_trainer, "-o",
                  str(settings.checkpoint)],
                 export.main)
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    fold = Path(get_output_folder(dataset, settings.pretrain_trainer, "nnUNetPlans", CONFIGURATION, "all"))
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    raw = Path(os.environ["nnUNet_raw"]) / fold.parent.parent.name / "dataset.json"
    return {**summary, "n_scans": json.loads(raw.read_text())["numTraining"], "n_subjects": POOL_SUBJECTS}


def run_task(console: Console, task: int, settings: DemoSettings) -> Path:
    """The whole workflow for one FOMO task; returns the folder of its report."""
    from nnunet_ext.dataset_conversion import convert, synthetic
    from nnunet_ext.evaluation import evaluate, model_selection
    from nnunet_ext.preprocessing import plan_and_preprocess

    recipe = DEMO_RECIPES[task]
    dataset = str(DEMO_DATASET_IDS[task])
    trainer = settings.task_trainer(task)
    start = recipe.start_arguments(settings.checkpoint if settings.init == INIT_PRETRAINED else None)
    folds = [str(f) for f in settings.folds]
    data = settings.task_data(task)
    name = f"task{task}"
    command_step(console, f"task {task}: synthetic FOMO data ({settings.cases_of(task)} subjects)",
                 settings.log(f"{name}_1_synthetic"),
                 ["fomo_make_synthetic", "--task", str(task), "--out", str(data), "--cases",
                  str(settings.cases_of(task)), "--seed", str(settings.seed), "--scale", str(DEMO_HEAD_SCALE)],
                 synthetic.main)
    command_step(console, f"task {task}: conversion to nnU-Net raw", settings.log(f"{name}_2_convert"),
                 ["fomo_convert", "--task", str(task), "-i", str(data), "-d", dataset,
                  "--test-fraction", str(recipe.test_fraction), "--seed", str(settings.seed),
                  *(["--train-fraction", f"{settings.train_fraction:g}"] if settings.train_fraction < 1 else [])],
                 convert.main)
    command_step(console, f"task {task}: FOMO plans and preprocessing ({recipe.spacing_mm:g} mm)",
                 settings.log(f"{name}_3_plan_and_preprocess"),
                 ["fomo_plan_and_preprocess", "-d", dataset, *start,
                  "--starting-filters", str(DEMO_STARTING_FILTERS), "--spacing", f"{recipe.spacing_mm:g}",
                  *recipe.head_arguments(),
                  "-np", str(DEMO_PROCESSES)], plan_and_preprocess.main)
    train_folds(console, int(dataset), trainer, settings, f"task {task}: training", settings.log(f"{name}_4_training"))
    command_step(console, f"task {task}: model selection", settings.log(f"{name}_5_model_selection"),
                 ["fomo_find_best_configuration", "-d", dataset, "-tr", trainer, "-f", *folds], model_selection.main)
    report = settings.report_dir(task)
    command_step(console, f"task {task}: test set, every fold and the ensemble", settings.log(f"{name}_6_evaluate"),
                 ["fomo_evaluate", "-d", dataset, "-tr", trainer, "-f", *folds, "-o", str(report), "-device", "cpu",
                  "--n-bootstrap", str(DEMO_BOOTSTRAP), "--seed", str(settings.seed)], evaluate.main)
    return report


def _format_estimate(value: Optional[float]) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def headline_rows(reports: Dict[int, Path]) -> List[str]:
    """The opening table of REPORT.md: each task's ensemble against its trivial references."""
    from nnunet_ext.dataset_conversion.tasks import get_task
    from nnunet_ext.evaluation.evaluate import SUMMARY_JSON
    from nnunet_ext.evaluation.report import METRIC_LABELS

    rows = ["| Task | Ensemble on the test set [95% CI] | Test cases | Trivial reference (same cases) | Beaten |",
            "|---|---|---|---|---|"]
    for task, report in reports.items():
        summary = json.loads((report / SUMMARY_JSON).read_text())
        head = summary["headline"]
        spec = get_task(task)
        label = METRIC_LABELS.get(head["metric"], head["metric"])
        estimate = (f"{label} {_format_estimate(head['value'])} [{_format_estimate(head['ci_low'])}, "
                    f"{_format_estimate(head['ci_high'])}]")
        references = "; ".join(f"{name}: {_format_estimate(r['value'])}" for name, r in head["references"].items())
        beaten = "; ".join(r["beaten"] for r in head["references"].values())
        rows.append(f"| {task} ({spec.target_name}) | {estimate} | {summary['n_cases']} | {references} | {beaten} |")
    return rows


def weights_paragraph(settings: DemoSettings, pretraining: Optional[dict]) -> str:
    """What REPORT.md says about where the task models' weights came from."""
    if pretraining is None:
        return (f"**The task models were trained from random weights** (`--init scratch`, the `{settings.variant}` "
                "trainers): the comparison for the pretrained run (`benchmarks/pretraining.py`).")
    return (f"**The weights come from the demo's own pretraining**: {settings.pretrain_trainer} (masked image "
            f"modelling, 60% of 4-voxel cubes masked, MSE reconstruction) on {pretraining['n_scans']} unlabelled "
            f"synthetic scans of {pretraining['n_subjects']} subjects, none of them a task's, at {POOL_SPACING_MM:g} mm; held-out "
            f"reconstruction MSE {pretraining['metrics']['reconstruction_mse']:.4f} on {pretraining['n_cases']} scans "
            f"of held-out subjects. It was exported as `{settings.checkpoint.relative_to(settings.out).as_posix()}` "
            "(the layout of the real `epoch=12.ckpt`, 8 instead of 32 starting filters), and every task starts from "
            "it. No real FOMO checkpoint can be shipped: the numbers show that the pipeline pretrains and learns; "
            "they say nothing about what the real checkpoint achieves on the real data.")


def write_index(settings: DemoSettings, console: Console, reports: Dict[int, Path], seconds: float,
                pretraining: Optional[dict] = None) -> Path:
    """``REPORT.md`` at the top of ``--out``: the headline table, what the numbers mean, links, commands."""
    from nnunet_ext.utils.files import atomic_write_text

    lines = ["# fomo_demo: synthetic FOMO data, end to end on the CPU", "",
             *headline_rows(reports), "",
             "Beaten: *yes* when the whole 95% interval of the ensemble is better than the reference, *point "
             "estimate only* when only its value is. References: a constant score (AUROC 0.5), an all-background "
             "mask and the whole brain as the mask (Dice), the training cases' mean age (MAE).", "",
             f"Synthetic subjects per task: {', '.join(f'task {t}: {settings.cases_of(t)}' for t in reports)} "
             f"(seed {settings.seed}), folds {', '.join(map(str, settings.folds))}, the UNet-B layout with "
             f"{DEMO_STARTING_FILTERS} starting filters; {seconds / 60:.1f} min in all.", "",
             *([f"**Trained on {settings.train_fraction:g} of each task's training subjects** (`--train-fraction`, "
                "a label-efficiency run): the test sets are those of the full run with this seed.", ""]
               if settings.train_fraction < 1 else []),
             weights_paragraph(settings, pretraining), "",
             *([f"**Smoke run** (`--smoke`, the `{settings.variant}` trainers: 2 epochs x 4 steps): it shows that "
                "every step runs; its numbers mean nothing.", ""] if settings.smoke else []),
             "## Reports", ""]
    for task, report in reports.items():
        relative = report.relative_to(settings.out).as_posix()
        lines.append(f"- Task {task}: [{relative}/report.md]({relative}/report.md)")
    lines += ["", "## Commands run", "", "```", *console.commands, "```", ""]
    index = settings.out / "REPORT.md"
    atomic_write_text(index, "\n".join(lines))
    return index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"),
                        help="output folder (data, nnU-Net folders, logs, reports); a previous demo output there is "
                             "replaced, any other non-empty folder refused")
    parser.add_argument("--tasks", type=int, nargs="+", default=sorted(DEMO_DATASET_IDS),
                        choices=sorted(DEMO_DATASET_IDS), help="FOMO tasks to run")
    parser.add_argument("--folds", type=int, nargs="+", default=list(FOLDS), choices=list(FOLDS),
                        help="cross-validation folds to train (the ensemble averages them)")
    parser.add_argument("--cases", type=_at_least(10), default=None,
                        help="synthetic subjects per task (default: each task's recipe, 40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the splits, training and the bootstrap")
    parser.add_argument("--init", choices=sorted(DEMO_VARIANTS), default=INIT_PRETRAINED,
                        help="where the task models start: the demo's own pretrained checkpoint, or random weights")
    parser.add_argument("--train-fraction", type=fraction, default=1.0,
                        help="share of each task's subjects outside the test set that the folds train on (fomo_convert "
                             "--train-fraction; the test set stays the same): label-efficiency runs")
    parser.add_argument("--smoke", action="store_true",
                        help="train every model with the _debug-length variants (2 epochs x 4 steps): checks that "
                             "every step runs, in a minute or two per task; the numbers mean nothing")
    return parser


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (5 folds and a test set), got {value}")
        return value

    return parse


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = DemoSettings(args.out.resolve(), args.tasks, args.folds, args.cases, args.seed, args.init, args.smoke,
                            args.train_fraction)
    started = time.monotonic()
    prepare_output(settings.out)
    configure_environment(settings.out)
    console = Console(settings.out)
    console.print(f"fomo_demo: tasks {', '.join(map(str, settings.tasks))}, folds "
                  f"{', '.join(map(str, settings.folds))}; output in {settings.out}")
    try:
        pretraining = pretrain(console, settings) if settings.init == INIT_PRETRAINED else None
        reports = {task: run_task(console, task, settings) for task in settings.tasks}
    except StepFailed:
        return 1
    index = write_index(settings, console, reports, time.monotonic() - started, pretraining)
    console.print()
    console.print("\n".join(headline_rows(reports)))
    console.print(f"\nDone in {(time.monotonic() - started) / 60:.1f} min. Report: {index}")
    for task, report in reports.items():
        console.print(f"  task {task}: {report / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
