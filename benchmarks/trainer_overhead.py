"""What a training step of each of our trainers costs against nnU-Net's stock ``nnUNetTrainer``.

One synthetic FOMO dataset per task type (``make_synthetic_dataset`` -> ``fomo_convert`` -> ``fomo_plan_and_preprocess``
with a checkpoint in the exact layout of the real one), prepared one after the other. On each, our trainer
(``FomoFinetuneTrainer``, ``FomoClassificationTrainer``, ``FomoRegressionTrainer``) and ``nnUNetTrainer`` are built
from the same plans, configuration (3d_fullres), fold 0 and preprocessed data, hence the same patch, batch and
FomoUNet of the plans. Both are started as nnU-Net's loop starts them (``on_train_start``: network, optimiser, data
loaders, our pretrained weights; ``on_train_epoch_start``), then time ``train_step(next(dataloader_train))``: data
loading and augmentation, forward, loss, backward, gradient clipping, optimiser step. One warm-up step each, then
``--rounds`` rounds of ``--steps`` steps of each, in alternated order (ours, stock, stock, ours, ...: a drift
favours neither). The figure is the median over the rounds of each round's ratio ours / stock of the two median
steps. On shared machines absolute times are noise, and a paired ratio is what survives it: a step on 2 cores takes
up to 5 times as long while another process holds a core, for tens of seconds at a time, so that ratios of
medians over the whole run move with the moments such episodes happen to hit one trainer.

How the comparison is kept fair:

- The stock trainer's deep supervision is off, as ours is: with it FomoUNet would also compute its outputs at three
  lower resolutions, nnU-Net downsample every target to them and add a loss per output. Both then train the same
  network: the benchmark checks that their state dicts have the same shapes (the encoder's, for the case-level
  tasks) and refuses to time otherwise.
- Segmentation: everything else is each trainer's own (stock: SGD; ours: AdamW, the same augmentation and loss).
- Classification and regression: nnU-Net's loss needs voxel outputs, so the stock trainer cannot train a per-case
  target. It trains what nnU-Net itself would on these datasets, their label map (the brain mask), with the plans'
  FomoUNet in its segmentation form: the same encoder (shapes checked), a decoder in place of our pooling head, the
  same preprocessed images, patch and batch. The ratio is then that of two whole steps, not an overhead; where it
  goes is shown by the split of every step into data loading (``next``), forward + loss (up to the loss's return,
  our lookup of the case targets included) and backward + step (the rest), timed with ``perf_counter`` (after a
  CUDA synchronisation on a GPU).
- The per-epoch whole-case validation of the case-level trainers is timed apart, per case: ``on_validation_epoch_end``
  (every validation case of fold 0 whole through the network, the loss and the task metric), beside one stock
  patch-validation step (``validation_step(next(dataloader_val))``, loading included; nnU-Net runs 50 per epoch).

Data loading runs in the main process (``nnUNet_n_proc_DA=0``) unless ``--workers N`` gives nnU-Net N augmentation
workers (the data phase then measures the wait for a batch). ``torch.compile`` stays off (``nnUNet_compile=f``)
unless the environment sets it: compiling would dominate a run this short. Torch threads are set as
``nnUNetv2_train`` sets them for the device.

Target (issue 11): ratio <= 1.05 for the segmentation trainer; the case-level ratios are reported. Writes
``trainer_overhead.json`` and nnU-Net's output (``trainer_overhead.log``) under ``--out`` and prints tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_device, check_out_folder, write_report  # noqa: E402  (beside this script)

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, REGRESSION, SEGMENTATION  # noqa: E402
from nnunet_ext.errors import cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import float_in, int_at_least  # noqa: E402

#: FOMO task of each task type and the nnU-Net dataset id of its benchmark dataset (7xx: out of the way of real
#: and demo datasets).
FOMO_TASKS = {CLASSIFICATION: 1, SEGMENTATION: 2, REGRESSION: 3}
DATASET_IDS = {CLASSIFICATION: 741, SEGMENTATION: 742, REGRESSION: 743}
TASK_TYPES = (SEGMENTATION, CLASSIFICATION, REGRESSION)
RESULT_STEM = "trainer_overhead"
TARGET_RATIO = 1.05
CONFIGURATION = "3d_fullres"
FOLD = 0
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
#: The architecture options of the pooling head in the plans (``FomoPlanner._architecture``), which FomoUNet refuses
#: in its segmentation form.
HEAD_ARCH_KWARGS = ("head_dropout", "head_pool_levels", "head_pooling")
#: The phases of a step: ``next(dataloader_train)``, up to the loss's return, the rest of ``train_step``.
PHASES = ("data", "forward_loss", "backward_step")
PHASE_LABELS = {"data": "data", "forward_loss": "forward+loss", "backward_step": "backward+step"}
#: Steps each trainer takes before the rounds: the first one allocates its buffers.
WARMUP_STEPS = 1
SEED = 0
#: The published UNet-B width; a 48^3 patch keeps a segmentation step on 2 CPU cores near a second (the plans'
#: default, 160 x 192 x 160, is for GPUs).
DEFAULT_STARTING_FILTERS = 32
DEFAULT_PATCH = (48, 48, 48)
DEFAULT_CASES = 10
#: Synthetic heads at this fraction of adult size: brains of about 54 x 67 x 46 mm, a little larger than the patch
#: (at the plans' 1 mm), so that patches are random crops as in real training.
DEFAULT_HEAD_SCALE = 0.4
#: Smaller heads give brains of under 14 mm, well below the smallest patch (32 voxels of 1 mm).
MIN_HEAD_SCALE = 0.1
#: Rounds x steps of the full run. Single rounds' ratios spread over 0.8-1.2 on an idle 2-core machine: 8 x 2
#: once gave a median of 1.106 where 24 x 3, in the same session, gave 1.002 (interquartile 0.94-1.06).
DEFAULT_ROUNDS = 24
DEFAULT_STEPS = 3
#: ``--quick``: a smoke run of well under a minute that only shows the benchmark works.
QUICK_STARTING_FILTERS = 4
QUICK_PATCH = (32, 32, 32)
QUICK_CASES = 6
QUICK_HEAD_SCALE = 0.25
QUICK_ROUNDS = 2
QUICK_STEPS = 2


@dataclass(frozen=True)
class Settings:
    tasks: Tuple[str, ...]
    device: str
    starting_filters: int
    patch_size: Tuple[int, int, int]
    cases: int
    head_scale: float
    rounds: int
    steps: int
    workers: int


def now(device) -> float:
    """``perf_counter`` once the device has finished its queued work (CUDA runs asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def configure_environment(work: Path) -> None:
    """nnU-Net's folders under ``work`` and its settings, before anything imports nnunetv2 (its paths module
    reads the folders once, at import)."""
    for name in NNUNET_FOLDERS:
        (work / name).mkdir()
        os.environ[name] = str(work / name)
    # One worker process for planning: on a few cores nnU-Net's default of 8 only adds start-up time and memory.
    os.environ["nnUNet_def_n_proc"] = "1"
    os.environ.setdefault("nnUNet_compile", "f")


def configure_torch(device: str) -> None:
    """Torch threads and cuDNN as ``nnUNetv2_train`` sets them for ``-device``."""
    import multiprocessing

    import torch
    from torch.backends import cudnn

    if device == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        cudnn.deterministic, cudnn.benchmark = False, True
    else:
        torch.set_num_threads(multiprocessing.cpu_count())


def prepare_dataset(task_type: str, settings: Settings, work: Path, checkpoint: Path) -> float:
    """Synthetic data -> ``fomo_convert`` -> ``fomo_plan_and_preprocess`` for one task type; returns the seconds."""
    from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset
    from nnunet_ext.dataset_conversion.synthetic import make_synthetic_dataset
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings

    started = time.perf_counter()
    task = FOMO_TASKS[task_type]
    source = make_synthetic_dataset(task, work / "fomo" / f"task{task}", n_cases=settings.cases, seed=SEED,
                                    scale=settings.head_scale)
    convert_fomo_dataset(task, source, DATASET_IDS[task_type], seed=SEED)
    plan = FomoPlanSettings(starting_filters=settings.starting_filters, patch_size=settings.patch_size,
                            pretrained=checkpoint)
    fomo_plan_and_preprocess(DATASET_IDS[task_type], plan, num_processes=1)
    return time.perf_counter() - started


def prepare_datasets(settings: Settings, work: Path) -> Dict[str, float]:
    """Every task's dataset, one after the other: ``{task type: seconds}``."""
    from nnunet_ext.pretrained.testing import make_fomo_checkpoint

    checkpoint = make_fomo_checkpoint(work / "checkpoint.ckpt", starting_filters=settings.starting_filters)
    return {task: prepare_dataset(task, settings, work, checkpoint) for task in settings.tasks}


def our_trainer_classes() -> Dict[str, type]:
    from nnunet_ext.trainers import FomoClassificationTrainer, FomoFinetuneTrainer, FomoRegressionTrainer

    return {SEGMENTATION: FomoFinetuneTrainer, CLASSIFICATION: FomoClassificationTrainer,
            REGRESSION: FomoRegressionTrainer}


def segmentation_form(plans: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``plans`` whose FomoUNet is built for segmentation (decoder, no head): what the stock trainer's
    voxel loss can train. Plans of a segmentation task come back unchanged."""
    plans = copy.deepcopy(plans)
    arch_kwargs = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]
    for key in HEAD_ARCH_KWARGS:
        arch_kwargs.pop(key, None)
    arch_kwargs["task_type"] = SEGMENTATION
    return plans


def start_trainer(trainer_class: type, plans: Dict[str, Any], dataset_json: Dict[str, Any], device):
    """``trainer_class`` built as ``nnUNetv2_train`` builds it and started as its training loop starts it."""
    trainer = trainer_class(plans={**copy.deepcopy(plans), "continue_training": False}, configuration=CONFIGURATION,
                            fold=FOLD, dataset_json=dataset_json, device=device)
    trainer.enable_deep_supervision = False  # ours already; the stock trainer's adds lower-resolution outputs
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    return trainer


def close_trainer(trainer) -> None:
    """Stop the augmentation workers of ``--workers`` (the main-process loader has none)."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()


def weight_shapes(trainer, prefix: str = "") -> Dict[str, Tuple[int, ...]]:
    from nnunet_ext.trainers.base import unwrap_network

    return {key: tuple(value.shape) for key, value in unwrap_network(trainer.network).state_dict().items()
            if key.startswith(prefix)}


def network_summary(trainer) -> Dict[str, Any]:
    from nnunet_ext.trainers.base import unwrap_network

    network = unwrap_network(trainer.network)
    return {"class": f"{type(network).__module__}.{type(network).__name__}", "task_type": network.task_type,
            "parameters": sum(p.numel() for p in network.parameters()),
            "encoder_parameters": sum(p.numel() for p in network.encoder.parameters())}


class StepTimer:
    """Times one trainer's ``train_step(next(dataloader_train))`` in :data:`PHASES`.

    The end of forward + loss is the moment the trainer's loss returns: ``trainer.loss`` is wrapped to record it.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.loss_returned = 0.0
        loss = trainer.loss

        def timed_loss(*args, **kwargs):
            value = loss(*args, **kwargs)
            self.loss_returned = now(trainer.device)
            return value

        trainer.loss = timed_loss

    def step(self) -> Dict[str, float]:
        device = self.trainer.device
        started = now(device)
        batch = next(self.trainer.dataloader_train)
        loaded = now(device)
        self.trainer.train_step(batch)
        done = now(device)
        return {"data": loaded - started, "forward_loss": self.loss_returned - loaded,
                "backward_step": done - self.loss_returned}


def time_rounds(timers: Dict[str, StepTimer], rounds: int, steps: int) -> Dict[str, List[List[Dict[str, float]]]]:
    """Warm-up steps, then ``rounds`` rounds of ``steps`` steps of each timer, the order reversed every other round:
    role -> round -> step."""
    for timer in timers.values():
        for _ in range(WARMUP_STEPS):
            timer.step()
    records: Dict[str, List[List[Dict[str, float]]]] = {role: [] for role in timers}
    roles = list(timers)
    for index in range(rounds):
        for role in roles if index % 2 == 0 else roles[::-1]:
            records[role].append([timers[role].step() for _ in range(steps)])
    return records


def summarise_rounds(rounds: List[List[Dict[str, float]]]) -> Dict[str, Any]:
    """Each round's median step (and phase); their medians over the rounds."""
    round_medians = [statistics.median(sum(step.values()) for step in steps) for steps in rounds]
    phases = {phase: statistics.median(statistics.median(step[phase] for step in steps) for steps in rounds)
              for phase in PHASES}
    return {"round_median_s": round_medians, "median_step_s": statistics.median(round_medians),
            "median_phase_s": phases, "steps_s": rounds}


def timed(device, action: Callable[[], Any]) -> float:
    started = now(device)
    action()
    return now(device) - started


def time_validation(ours, stock, repeats: int) -> Dict[str, Any]:
    """Our per-epoch whole-case validation against one stock patch-validation step, alternated ``repeats`` times."""
    import torch

    epochs, batches = [], []
    with torch.no_grad():
        ours.on_validation_epoch_start()
        stock.on_validation_epoch_start()
        for _ in range(repeats):
            epochs.append(timed(ours.device, lambda: ours.on_validation_epoch_end([])))
            batches.append(timed(stock.device, lambda: stock.validation_step(next(stock.dataloader_val))))
    n_cases = len(ours.validation_volumes)
    epoch_s, batch_s = statistics.median(epochs), statistics.median(batches)
    return {"n_cases": n_cases, "epoch_s": epochs, "median_epoch_s": epoch_s, "seconds_per_case": epoch_s / n_cases,
            "stock_batch_s": batches, "stock_seconds_per_batch": batch_s,
            "stock_batches_per_epoch": stock.num_val_iterations_per_epoch,
            "stock_epoch_s": batch_s * stock.num_val_iterations_per_epoch}


def benchmark_task(task_type: str, settings: Settings) -> Dict[str, Any]:
    """Our trainer against the stock one on this task's dataset (see the module docstring)."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    dataset = convert_id_to_dataset_name(DATASET_IDS[task_type])
    folder = Path(nnUNet_preprocessed) / dataset
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((folder / "dataset.json").read_text())
    device = torch.device(settings.device)
    trainers = {"ours": start_trainer(our_trainer_classes()[task_type], plans, dataset_json, device),
                "stock": start_trainer(nnUNetTrainer, segmentation_form(plans), dataset_json, device)}
    try:
        compared = "" if task_type == SEGMENTATION else "encoder."
        if weight_shapes(trainers["ours"], compared) != weight_shapes(trainers["stock"], compared):
            raise RuntimeError(f"{task_type}: the two trainers built networks of different {compared or 'weight'} "
                               "shapes; the comparison would not be fair")
        records = time_rounds({role: StepTimer(trainer) for role, trainer in trainers.items()}, settings.rounds,
                              settings.steps)
        summaries = {role: {"trainer": type(trainers[role]).__name__, "network": network_summary(trainers[role]),
                            **summarise_rounds(rounds)} for role, rounds in records.items()}
        validation = (None if task_type == SEGMENTATION else
                      time_validation(trainers["ours"], trainers["stock"], settings.rounds))
        patch, batch = trainers["ours"].configuration_manager.patch_size, trainers["ours"].batch_size
    finally:
        for trainer in trainers.values():
            close_trainer(trainer)
    ours, stock = summaries["ours"], summaries["stock"]
    round_ratios = [mine / theirs for mine, theirs in zip(ours["round_median_s"], stock["round_median_s"])]
    ratio = statistics.median(round_ratios)
    target = TARGET_RATIO if task_type == SEGMENTATION else None
    return {"dataset": dataset, "patch_size": list(patch), "batch_size": batch,
            "stock_trains": "the task's segmentation" if task_type == SEGMENTATION else "brain-mask segmentation",
            "compared_weight_shapes": "all" if task_type == SEGMENTATION else "encoder", "trainers": summaries,
            "round_ratios": round_ratios, "ratio": ratio, "target_ratio": target,
            "target_met": None if target is None else ratio <= target,
            "difference_s": {phase: ours["median_phase_s"][phase] - stock["median_phase_s"][phase]
                             for phase in PHASES},
            "validation": validation}


def run_benchmark(settings: Settings, work: Path, log: Path) -> Dict[str, Any]:
    from nnunet_ext.demo import output_to, seed_everything

    started = time.perf_counter()
    configure_environment(work)
    configure_torch(settings.device)
    seed_everything(SEED)
    with output_to(log):
        prepare_s = prepare_datasets(settings, work)
    # Training's augmentation workers, set only now: during planning nnU-Net derives torch threads from this count.
    os.environ["nnUNet_n_proc_DA"] = str(settings.workers)
    print(f"prepared {len(settings.tasks)} dataset(s) in {time.perf_counter() - started:.0f} s", flush=True)
    tasks = {}
    for task_type in settings.tasks:
        task_started = time.perf_counter()
        with output_to(log):
            tasks[task_type] = benchmark_task(task_type, settings)
        print(f"{task_type}: timed in {time.perf_counter() - task_started:.0f} s", flush=True)
    return {"settings": {"device": settings.device, "starting_filters": settings.starting_filters,
                         "patch_size": list(settings.patch_size), "cases": settings.cases,
                         "head_scale": settings.head_scale, "rounds": settings.rounds, "steps": settings.steps,
                         "warmup_steps": WARMUP_STEPS, "augmentation_workers": settings.workers, "fold": FOLD,
                         "configuration": CONFIGURATION, "seed": SEED},
            "prepare_seconds": prepare_s, "tasks": tasks, "cpu_count": len(os.sched_getaffinity(0)),
            "minutes": (time.perf_counter() - started) / 60}


def format_table(report: Dict[str, Any]) -> str:
    s = report["settings"]
    loading = (f"{s['augmentation_workers']} augmentation worker(s)" if s["augmentation_workers"]
               else "data loading in the main process")
    lines = [f"FomoUNet with {s['starting_filters']} starting filters, patch {'x'.join(map(str, s['patch_size']))}, "
             f"{s['device']}, {loading}; medians of {s['rounds']} alternated rounds of {s['steps']} steps (ratio: "
             "median of the rounds' ratios)",
             "| task | trainer | step s | " + " | ".join(f"{PHASE_LABELS[p]} s" for p in PHASES) + " |",
             "|---|---|---|---|---|---|"]
    for task_type, task in report["tasks"].items():
        for role, summary in task["trainers"].items():
            name = summary["trainer"] if role == "ours" else f"{summary['trainer']} (stock: {task['stock_trains']})"
            lines.append(f"| {task_type} | {name} | {summary['median_step_s']:.3f} | "
                         + " | ".join(f"{summary['median_phase_s'][p]:.3f}" for p in PHASES) + " |")
    lines += ["", "| task | ratio ours / stock | target | ours - stock s: "
              + " / ".join(PHASE_LABELS[p] for p in PHASES) + " |", "|---|---|---|---|"]
    for task_type, task in report["tasks"].items():
        target = ("report only" if task["target_ratio"] is None else
                  f"<= {task['target_ratio']}: {'met' if task['target_met'] else 'NOT met'}")
        difference = " / ".join(f"{task['difference_s'][p]:+.3f}" for p in PHASES)
        lines.append(f"| {task_type} | {task['ratio']:.3f} | {target} | {difference} |")
    validated = {task_type: task["validation"] for task_type, task in report["tasks"].items() if task["validation"]}
    if validated:
        lines += ["", "Per-epoch validation (fold 0): ours on whole cases, stock on patch batches",
                  "| task | cases | ours s per case | ours s per epoch | stock s per batch | stock s per epoch |",
                  "|---|---|---|---|---|---|"]
        for task_type, v in validated.items():
            lines.append(f"| {task_type} | {v['n_cases']} | {v['seconds_per_case']:.3f} | {v['median_epoch_s']:.3f} | "
                         f"{v['stock_seconds_per_batch']:.3f} | {v['stock_epoch_s']:.2f} "
                         f"({v['stock_batches_per_epoch']} batches) |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True,
                        help=f"folder for {RESULT_STEM}.json and {RESULT_STEM}.log (created if missing)")
    parser.add_argument("--tasks", nargs="+", choices=TASK_TYPES, default=list(TASK_TYPES),
                        help="task types to compare (default: all three)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="training device (default: cpu)")
    parser.add_argument("--starting-filters", type=int_at_least(1), default=DEFAULT_STARTING_FILTERS,
                        help=f"network width (default {DEFAULT_STARTING_FILTERS}, UNet-B's)")
    parser.add_argument("--patch-size", type=int_at_least(32), nargs=3, default=DEFAULT_PATCH, metavar=("X", "Y", "Z"),
                        help="training patch, multiples of 16 (default %(default)s; a GPU takes 160 192 160 with "
                             "--head-scale 1)")
    parser.add_argument("--head-scale", type=float_in(MIN_HEAD_SCALE, 1.0), default=DEFAULT_HEAD_SCALE,
                        help=f"size of the synthetic heads relative to an adult's, {MIN_HEAD_SCALE}-1 (default "
                             f"{DEFAULT_HEAD_SCALE}: brains a little larger than the default patch)")
    parser.add_argument("--cases", type=int_at_least(5), default=DEFAULT_CASES,
                        help=f"synthetic subjects per task, at least one per fold of the 5 (default {DEFAULT_CASES})")
    parser.add_argument("--rounds", type=int_at_least(1), default=DEFAULT_ROUNDS,
                        help=f"rounds of both trainers in alternated order; the median of their ratios is "
                             f"reported (default {DEFAULT_ROUNDS})")
    parser.add_argument("--steps", type=int_at_least(1), default=DEFAULT_STEPS,
                        help=f"training steps per trainer and round (default {DEFAULT_STEPS})")
    parser.add_argument("--workers", type=int_at_least(0), default=0,
                        help="nnU-Net's augmentation workers (nnUNet_n_proc_DA; default 0: the main process)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run of about a minute: {QUICK_CASES} cases, {QUICK_STARTING_FILTERS} starting "
                             f"filters, patch {QUICK_PATCH}, {QUICK_ROUNDS} rounds of {QUICK_STEPS} steps")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    check_device(args.device)
    settings = Settings(tuple(args.tasks), args.device, args.starting_filters, tuple(args.patch_size), args.cases,
                        args.head_scale, args.rounds, args.steps, args.workers)
    if args.quick:
        settings = replace(settings, starting_filters=QUICK_STARTING_FILTERS, patch_size=QUICK_PATCH,
                           cases=QUICK_CASES, head_scale=QUICK_HEAD_SCALE, rounds=QUICK_ROUNDS, steps=QUICK_STEPS)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f"{RESULT_STEM}.log"
    log.unlink(missing_ok=True)  # output_to appends: the log of this run only
    with tempfile.TemporaryDirectory(dir=args.out) as work:
        report = run_benchmark(settings, Path(work), log)
    write_report(args.out, RESULT_STEM, report, f"{format_table(report)}\n({report['minutes']:.1f} min; nnU-Net's "
                 f"output: {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
