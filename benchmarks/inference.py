"""Seconds per case of one challenge-container call, split into its parts, for each FOMO task, at the real width.

For each task a model in the layout the workflow trains (FOMO plans at 1 mm with a 32-starting-filter checkpoint,
5 folds of the task's trainer; weights untrained: only the time is measured, and one fold's checkpoint serves all
five) predicts one brain-sized synthetic session (160 x 192 x 160 voxels at 1 mm) through the code
``fomo_challenge_predict`` runs, each part timed on its own:

- process start + imports: a fresh ``python -c 'import nnunet_ext.inference.container'`` (the challenge starts a
  process per subject), beside a bare ``python -c pass``;
- model loading: nnU-Net's predictor built from the folder (``FoldEnsemble``), 1 fold and 5 folds, from the
  training checkpoints and from the ones ``fomo_export_submission`` writes (no optimizer state): before / after;
- reading the session (checks, alignment, RAS) and nnU-Net's preprocessing;
- the network: whole-volume classification / regression, sliding-window segmentation, 1 fold and 5 folds, with
  and without test-time mirroring. Configurations of more than ``--max-direct-passes`` network passes are not run
  but derived from the measured 1-fold time (folds are independent passes of one architecture) and marked so;
- writing: the mask back in the input's geometry (Task 2), the number (Tasks 1 and 3).

Each part is the median of ``--repeats`` runs (derived and single-run entries say so). Also measured side by
side: the case-level network without ``torch.inference_mode`` (how ``FoldEnsemble.case_level`` ran before) and
the per-fold weight swap inside it (``load_state_dict``, once per fold and case). The challenge allows 120 s per
case on one GPU; on a CPU these figures show where the time goes. Writes ``inference.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a clone without installing
    sys.path.insert(0, str(REPO))

from reporting import check_device, check_out_folder, quiet_work_folder, write_report  # noqa: E402  (beside it)

from nnunet_ext.errors import cli_entry  # noqa: E402
from nnunet_ext.utils.arguments import int_at_least  # noqa: E402  (light: no nnU-Net import)

#: nnU-Net dataset ids of the benchmark's models, per task (7xx: out of the way of real and demo datasets).
DATASET_IDS = {1: 741, 2: 742, 3: 743}
TRAINERS = {1: "FomoClassificationTrainer", 2: "FomoFinetuneTrainer", 3: "FomoRegressionTrainer"}
CONFIGURATION = "3d_fullres"
FOLDS = (0, 1, 2, 3, 4)
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
RESULT_STEM = "inference"
#: The challenge's limit per case (one GPU), for the reader's scale.
CHALLENGE_SECONDS_PER_CASE = 120
DEFAULT_STARTING_FILTERS = 32
#: A brain at 1 mm (the pretraining's default patch covers it in one window).
BRAIN_SHAPE = (160, 192, 160)
DEFAULT_REPEATS = 3
#: Network configurations above this many passes (folds x mirrorings) are derived, not run: at full size on a
#: CPU a pass takes 10-30 s, and 5 folds x 8 mirrorings would take many minutes per task.
DEFAULT_MAX_DIRECT_PASSES = 8
#: The planning data: small heads (scale 0.3 of an adult's) at 1 mm, so that planning takes seconds; the plans'
#: patch is then set to what a brain-sized dataset gets (``--quick``: what these small heads get).
PLANNING_CASES = 10
PLANNING_SCALE = 0.3
#: ``--quick``: a smoke run of about a minute that only shows the benchmark works.
QUICK_STARTING_FILTERS = 4
QUICK_SHAPE = tuple(round(edge * PLANNING_SCALE) for edge in BRAIN_SHAPE)
QUICK_REPEATS = 1
NIFTI_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class Settings:
    out: Path
    tasks: Sequence[int]
    starting_filters: int
    shape: Tuple[int, int, int]
    repeats: int
    max_direct_passes: int
    device: str
    #: False: the FOMO plans' default patch at 1 mm (a brain in one window), what brain-sized data get planned;
    #: True: the patch the small planning heads get (``--quick``).
    patch_from_planning_data: bool


def median_seconds(action: Callable[[], Any], repeats: int) -> Tuple[float, List[float]]:
    """The median wall time of ``repeats`` calls of ``action`` and every time."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times


def configure_environment(out: Path) -> None:
    """nnU-Net's folders under ``out``, set before anything imports nnunetv2 (its paths module reads them once)."""
    for name in NNUNET_FOLDERS:
        (out / name).mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(out / name)
    # One process: the container sets nnUNet_def_n_proc=1 too, and planning tiny data gains nothing from more.
    os.environ["nnUNet_def_n_proc"] = "1"
    from nnunet_ext.env import EXT_TRAINER_VAR, ext_trainer_value
    os.environ[EXT_TRAINER_VAR] = ext_trainer_value(os.environ.get(EXT_TRAINER_VAR))


# -- the model ----------------------------------------------------------------------------------------------


def plan_task(task: int, dataset_id: int, starting_filters: int, work: Path, patch: Optional[Sequence[int]],
              n_cases: int = PLANNING_CASES, shape: Sequence[int] = QUICK_SHAPE, scale: float = PLANNING_SCALE) -> None:
    """Synthetic data -> fomo_convert -> fomo_plan_and_preprocess at 1 mm with a checkpoint of the chosen width.

    ``patch`` None: the planner's default (the FOMO patch capped by the data's median shape); otherwise the plans'
    patch is set to it after planning (preprocessing does not depend on it): the small planning heads are far
    smaller than a brain-sized patch, which ``fomo_plan_and_preprocess`` rightly refuses for real data."""
    from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset
    from nnunet_ext.dataset_conversion.synthetic import make_synthetic_dataset
    from nnunet_ext.preprocessing.plan_and_preprocess import fomo_plan_and_preprocess
    from nnunet_ext.preprocessing.planner import FomoPlanSettings, validate_patch_size
    from nnunet_ext.pretrained.testing import make_fomo_checkpoint
    from nnunet_ext.utils.files import atomic_write_json

    checkpoint = make_fomo_checkpoint(work / f"unet_b_f{starting_filters}.ckpt", starting_filters=starting_filters)
    source = make_synthetic_dataset(task, work / f"planning_task{task}", n_cases=n_cases, seed=task,
                                    shape=tuple(shape), scale=scale)
    convert_fomo_dataset(task, source, dataset_id)
    plans_file = fomo_plan_and_preprocess(dataset_id, FomoPlanSettings(starting_filters=starting_filters,
                                                                       pretrained=checkpoint), num_processes=1)
    if patch is not None:
        plans = json.loads(plans_file.read_text())
        plans["configurations"][CONFIGURATION]["patch_size"] = [int(edge) for edge in validate_patch_size(patch)]
        atomic_write_json(plans_file, plans)


def make_model_folder(task: int) -> Path:
    """The task's trainer initialised as ``nnUNetv2_train`` does, its checkpoint saved as every fold's
    ``checkpoint_final.pth`` with the plans and dataset.json beside them: a model folder nnU-Net predicts with."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(str(DATASET_IDS[task]), CONFIGURATION, FOLDS[0], TRAINERS[task],
                                    device=torch.device("cpu"))
    trainer.initialize()
    # sets the test-time mirror axes the checkpoint carries (nnU-Net calls it when training starts)
    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    # One optimiser step on zero gradients fills the optimiser's state (momentum buffers) as training would, so
    # that the training checkpoint has its real size; the weights stay as they are up to weight decay.
    for parameter in trainer.network.parameters():
        parameter.grad = torch.zeros_like(parameter)
    trainer.optimizer.step()
    folder = Path(trainer.output_folder_base)
    save_json(trainer.plans_manager.plans, str(folder / "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, str(folder / "dataset.json"), sort_keys=False)
    trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    for fold in FOLDS[1:]:
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        shutil.copy2(Path(trainer.output_folder) / "checkpoint_final.pth", folder / f"fold_{fold}")
    return folder


def brain_session(task: int, shape: Sequence[int], work: Path) -> Dict[str, Path]:
    """One synthetic session of the task at about 1 mm, ``shape`` voxels (a head scaled to fit, adult-sized at
    :data:`BRAIN_SHAPE`): ``{sequence flag: file}``."""
    from nnunet_ext.dataset_conversion.synthetic import make_synthetic_dataset
    from nnunet_ext.inference.container import SEQUENCE_FLAGS

    scale = min(1.0, *(edge / brain for edge, brain in zip(shape, BRAIN_SHAPE)))
    root = make_synthetic_dataset(task, work / f"subject_task{task}", n_cases=1, seed=task, shape=tuple(shape),
                                  scale=scale)
    session = next(path.parent for path in sorted(root.rglob(f"*{NIFTI_SUFFIX}")) if "preprocessed" in path.parts)
    files = {path.name[: -len(NIFTI_SUFFIX)]: path for path in sorted(session.glob(f"*{NIFTI_SUFFIX}"))}
    return {flag: path for flag, path in files.items() if flag in SEQUENCE_FLAGS}


# -- the measurements ---------------------------------------------------------------------------------------


def process_start(repeats: int) -> Dict[str, float]:
    """A fresh interpreter, bare and importing the container's module (torch, nnU-Net, ours)."""
    def python(code: str) -> Callable[[], None]:
        return lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    bare, _ = median_seconds(python("pass"), repeats)
    imports, _ = median_seconds(python("import nnunet_ext.inference.container"), repeats)
    return {"python_start": bare, "start_and_imports": imports}


def network_seconds(ensemble, data, task_type: str, repeats: int) -> float:
    """Median seconds of the network part of one case with ``ensemble``'s folds and mirroring setting."""
    from nnunet_ext.dataset_conversion.tasks import SEGMENTATION

    action = (lambda: ensemble.segmentation_logits(data)) if task_type == SEGMENTATION else \
        (lambda: ensemble.case_level(data))
    return median_seconds(action, repeats)[0]


def folds_label(n_folds: int) -> str:
    return f"{n_folds}_fold{'s' if n_folds > 1 else ''}"


def configuration_key(n_folds: int, mirroring: bool) -> str:
    """``1_fold_no_mirroring``, ``5_folds_mirroring``, ...: the key of one network configuration."""
    return f"{folds_label(n_folds)}_{'mirroring' if mirroring else 'no_mirroring'}"


def mirror_passes(ensemble) -> int:
    """Network passes per fold with test-time mirroring: every combination of the allowed axes."""
    return 2 ** len(ensemble.predictor.allowed_mirroring_axes or ())


def measure_network(ensembles: Mapping[int, Any], data, task_type: str,
                    settings: Settings) -> Dict[str, Dict[str, Any]]:
    """Seconds of the network for 1 and 5 folds, with and without mirroring; large ones derived from 1 fold."""
    passes = mirror_passes(ensembles[1])
    results: Dict[str, Dict[str, Any]] = {}
    for mirroring in (False, True):
        for n_folds, ensemble in ensembles.items():
            key = configuration_key(n_folds, mirroring)
            n_passes = n_folds * (passes if mirroring else 1)
            one_fold = results[configuration_key(1, mirroring)] if n_folds > 1 else None
            if one_fold is not None and n_passes > settings.max_direct_passes:
                results[key] = {"seconds": one_fold["seconds"] * n_folds, "passes": n_passes, "how": "derived"}
                continue
            ensemble.predictor.use_mirroring = mirroring
            repeats = settings.repeats if n_passes == 1 else 1
            results[key] = {"seconds": network_seconds(ensemble, data, task_type, repeats),
                            "passes": n_passes, "how": f"median of {repeats}" if repeats > 1 else "one run"}
    for ensemble in ensembles.values():
        ensemble.predictor.use_mirroring = True  # the container's setting
    return results


def case_level_extras(ensemble, data, repeats: int) -> Dict[str, float]:
    """The case-level network of one fold, no mirroring, with autograd on (before ``torch.inference_mode``) beside
    the current code, and the per-fold weight swap of ``case_level``."""
    import torch

    from nnunet_ext.inference.predict import FoldEnsemble

    ensemble.predictor.use_mirroring = False
    with torch.enable_grad():  # the undecorated method ran with autograd recording, as before
        with_autograd, _ = median_seconds(lambda: FoldEnsemble.case_level.__wrapped__(ensemble, data), repeats)
    inference_mode, _ = median_seconds(lambda: ensemble.case_level(data), repeats)
    network, parameters = ensemble.predictor.network, ensemble.predictor.list_of_parameters[0]
    swap, _ = median_seconds(lambda: network.load_state_dict(parameters), repeats)
    ensemble.predictor.use_mirroring = True
    return {"network_with_autograd": with_autograd, "network_inference_mode": inference_mode,
            "weights_swap_per_fold": swap}


def measure_task(task: int, settings: Settings, work: Path) -> Dict[str, Any]:
    import torch

    from nnunet_ext.dataset_conversion.tasks import SEGMENTATION, get_task
    from nnunet_ext.inference.inputs import session_from_files
    from nnunet_ext.inference.predict import FoldEnsemble
    from nnunet_ext.inference.submission import export_submission, folder_size_mb
    from nnunet_ext.preprocessing.planner import DEFAULT_PATCH_SIZE
    from nnunet_ext.utils.files import atomic_write_text

    plan_task(task, DATASET_IDS[task], settings.starting_filters, work,
              None if settings.patch_from_planning_data else DEFAULT_PATCH_SIZE)
    trained = make_model_folder(task)
    exported = export_submission(task, str(DATASET_IDS[task]), TRAINERS[task], work / "models")
    files = brain_session(task, settings.shape, work)
    device = torch.device(settings.device)
    task_type = get_task(task).task_type

    loading: Dict[str, float] = {}
    ensembles = {}
    for name, folder in (("training_checkpoints", trained), ("exported_checkpoints", exported)):
        for n_folds in (1, len(FOLDS)):
            def load() -> None:
                ensembles[n_folds] = FoldEnsemble(folder, FOLDS[:n_folds], device=device)
            loading[f"{name}_{folds_label(n_folds)}"] = median_seconds(load, settings.repeats)[0]

    ensemble = ensembles[1]  # the exported model's, loaded last
    session = session_from_files("sub_1", files, ensemble.dataset_json)
    read, _ = median_seconds(lambda: ensemble.read(session), settings.repeats)
    images, properties = ensemble.read(session)
    preprocess, _ = median_seconds(lambda: ensemble.preprocess_images(images.copy(), dict(properties)),
                                   settings.repeats)
    data, properties = ensemble.preprocess_images(images, properties)
    network = measure_network(ensembles, data, task_type, settings)

    output = work / f"output_task{task}"
    output.mkdir()
    if task_type == SEGMENTATION:
        logits = ensemble.segmentation_logits(data)
        write, _ = median_seconds(lambda: ensemble.write_segmentation(logits, properties, output / "sub_1"),
                                  settings.repeats)
        extras: Dict[str, float] = {}
    else:
        write, _ = median_seconds(lambda: atomic_write_text(output / "sub_1.txt", "0.5\n"), settings.repeats)
        extras = case_level_extras(ensemble, data, settings.repeats)
    return {"task": task, "task_type": task_type, "trainer": TRAINERS[task], "input_files": sorted(files),
            "input_shape": list(settings.shape), "preprocessed_shape": list(data.shape[1:]),
            "model_size_mb": {"training_checkpoints": folder_size_mb(trained),
                              "exported_checkpoints": folder_size_mb(exported)},
            "seconds": {"model_loading": loading, "read": read, "preprocess": preprocess, "network": network,
                        "write": write, **extras}}


def call_total(report: Mapping[str, Any], process: Mapping[str, float], n_folds: int, mirroring: bool) -> float:
    """Seconds of one container call: process, exported model loading, read, preprocess, network, write."""
    seconds = report["seconds"]
    network = seconds["network"][configuration_key(n_folds, mirroring)]["seconds"]
    return (process["start_and_imports"] + seconds["model_loading"][f"exported_checkpoints_{folds_label(n_folds)}"]
            + seconds["read"] + seconds["preprocess"] + network + seconds["write"])


def run_benchmark(settings: Settings, work: Path) -> Dict[str, Any]:
    configure_environment(work)
    process = process_start(settings.repeats)
    tasks = {task: measure_task(task, settings, work) for task in settings.tasks}
    for report in tasks.values():
        report["per_call_seconds"] = {configuration_key(n, m): call_total(report, process, n, m)
                                      for n in (1, len(FOLDS)) for m in (False, True)}
    return {"starting_filters": settings.starting_filters, "shape": list(settings.shape), "device": settings.device,
            "repeats": settings.repeats, "max_direct_passes": settings.max_direct_passes,
            "cpu_count": len(os.sched_getaffinity(0)), "challenge_seconds_per_case": CHALLENGE_SECONDS_PER_CASE,
            "process": process, "tasks": {str(task): report for task, report in tasks.items()}}


# -- the table ----------------------------------------------------------------------------------------------


def network_cell(entry: Mapping[str, Any]) -> str:
    """``12.34 (8 passes, derived)``."""
    passes = entry["passes"]
    derived = ", derived" if entry["how"] == "derived" else ""
    return f"{entry['seconds']:.2f} ({passes} pass{'es' if passes > 1 else ''}{derived})"


def format_table(report: Mapping[str, Any]) -> str:
    tasks = list(report["tasks"].values())
    process = report["process"]

    def row(label: str, values: Sequence[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    def seconds(value: float) -> str:
        return f"{value:.2f}"

    network_keys = list(tasks[0]["seconds"]["network"])
    lines = [
        f"Seconds per case, {'x'.join(map(str, report['shape']))} voxels, {report['starting_filters']} starting "
        f"filters, {report['device']} ({report['cpu_count']} cores), median of {report['repeats']} unless marked",
        row("part", [f"task {t['task']} ({t['task_type']})" for t in tasks]),
        row("---", ["---"] * len(tasks)),
        row("python start (bare)", [seconds(process["python_start"])] * len(tasks)),
        row("process start + imports", [seconds(process["start_and_imports"])] * len(tasks)),
        *(row(f"model loading, {name.replace('_', ' ')}", [seconds(t["seconds"]["model_loading"][name]) for t in tasks])
          for name in tasks[0]["seconds"]["model_loading"]),
        row("model folder MB, training / exported", [
            f"{t['model_size_mb']['training_checkpoints']:.0f} / {t['model_size_mb']['exported_checkpoints']:.0f}"
            for t in tasks]),
        row("read the session", [seconds(t["seconds"]["read"]) for t in tasks]),
        row("nnU-Net preprocessing", [seconds(t["seconds"]["preprocess"]) for t in tasks]),
        *(row(f"network, {key.replace('_', ' ')}", [
            network_cell(t["seconds"]["network"][key]) for t in tasks])
          for key in network_keys),
        row("write the output", [seconds(t["seconds"]["write"]) for t in tasks]),
        *(row(f"**one call, {key.replace('_', ' ')}**", [seconds(t["per_call_seconds"][key]) for t in tasks])
          for key in tasks[0]["per_call_seconds"]),
    ]
    case_level = [t for t in tasks if "network_with_autograd" in t["seconds"]]
    for t in case_level:
        s = t["seconds"]
        lines.append(f"task {t['task']}: case-level network (1 fold, no mirroring) with autograd "
                     f"{s['network_with_autograd']:.2f} s, with torch.inference_mode {s['network_inference_mode']:.2f} s (ratio "
                     f"{s['network_with_autograd'] / s['network_inference_mode']:.2f}); weight swap per fold and case "
                     f"{s['weights_swap_per_fold'] * 1000:.0f} ms")
    lines.append(f"(the challenge allows {CHALLENGE_SECONDS_PER_CASE} s per case on one GPU)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for inference.json (created if missing)")
    parser.add_argument("--tasks", type=int, nargs="+", choices=(1, 2, 3), default=(1, 2, 3),
                        help="FOMO tasks to measure (default: all three)")
    parser.add_argument("--starting-filters", type=int_at_least(1), default=DEFAULT_STARTING_FILTERS,
                        help=f"UNet-B width (default {DEFAULT_STARTING_FILTERS}, the real checkpoint's)")
    parser.add_argument("--shape", type=int_at_least(16), nargs=3, default=BRAIN_SHAPE, metavar=("X", "Y", "Z"),
                        help="voxels of the predicted session at about 1 mm (default %(default)s, a brain)")
    parser.add_argument("--repeats", type=int_at_least(1), default=DEFAULT_REPEATS,
                        help=f"runs of each single-pass part; medians are reported (default {DEFAULT_REPEATS})")
    parser.add_argument("--max-direct-passes", type=int_at_least(1), default=DEFAULT_MAX_DIRECT_PASSES,
                        help="network configurations of more passes (folds x mirrorings) are derived from the "
                             f"1-fold time instead of run (default {DEFAULT_MAX_DIRECT_PASSES})")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device to predict on")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_STARTING_FILTERS} starting filters, {QUICK_SHAPE} voxels, "
                             f"{QUICK_REPEATS} repeats, every configuration run")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_out_folder(args.out)
    check_device(args.device)
    settings = Settings(out=args.out, tasks=sorted(set(args.tasks)), starting_filters=args.starting_filters,
                        shape=tuple(args.shape), repeats=args.repeats, max_direct_passes=args.max_direct_passes,
                        device=args.device, patch_from_planning_data=False)
    if args.quick:
        settings = Settings(out=args.out, tasks=settings.tasks, starting_filters=QUICK_STARTING_FILTERS,
                            shape=QUICK_SHAPE, repeats=QUICK_REPEATS, max_direct_passes=len(FOLDS) * 2 ** 3,
                            device=args.device, patch_from_planning_data=True)
    with quiet_work_folder(args.out, RESULT_STEM) as work:
        report = run_benchmark(settings, work)
    write_report(args.out, RESULT_STEM, report, format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
