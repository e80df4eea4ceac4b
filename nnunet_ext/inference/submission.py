"""``fomo_export_submission``: gather exactly what the challenge container needs of one trained model.

``MODEL_DIR/task<N>/`` receives the model's ``dataset.json`` and ``plans.json`` and the chosen checkpoint of each
fold (``fold_X/<checkpoint>``) with only what nnU-Net's predictor reads of it (:data:`PREDICTION_CHECKPOINT_KEYS`:
no optimizer state, which is most of a training checkpoint's size and loading time), nothing else (no logs, no
validation outputs), and a ``manifest.json`` naming the
trainer, plans, configuration, folds and checkpoint with the sha256 of every file, the package version and the date.
Running it once per task fills one ``MODEL_DIR`` for one image (``container/fomo25.def`` copies it to
``/app/models``); the container then predicts with the manifest's folds and checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import pickle
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Union

import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_ext import __version__
from nnunet_ext.dataset_conversion.tasks import TASKS
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.inference.calibration import CALIBRATION_JSON
from nnunet_ext.inference.inputs import task_of
from nnunet_ext.inference.predict import add_model_arguments, parse_folds
from nnunet_ext.inference.time_budget import rank_folds
from nnunet_ext.preprocessing.fomo_plans import FOMO_PLANS_KEY, FomoPlansBlock
from nnunet_ext.pretrained.checkpoint_io import sha256_of_file
from nnunet_ext.utils.arguments import positive_float
from nnunet_ext.utils.files import atomic_directory, atomic_write_json, require_output_folder
from nnunet_ext.utils.nnunet_paths import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIGURATION,
    DEFAULT_FOLDS,
    DEFAULT_PLANS,
    trained_model_folder,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: The manifest's record of every exported file's sha256 (path relative to the model folder -> hex digest).
SHA256_KEY = "sha256"
#: What the container reads of a manifest.
MANIFEST_KEYS_READ = ("folds", "checkpoint", SHA256_KEY)
#: The files of a trained model folder that prediction reads, besides each fold's checkpoint.
MODEL_FILES = ("dataset.json", "plans.json")
#: The files of a trained model folder that prediction reads when they are there: the calibration that
#: fomo_find_best_configuration fits.
OPTIONAL_MODEL_FILES = (CALIBRATION_JSON,)
BYTES_PER_MB = 1024 ** 2
#: Whose container rules a submission follows (``--challenge``): FOMO26's ask one pretrained checkpoint for every task.
FOMO25, FOMO26 = "fomo25", "fomo26"
CHALLENGES = (FOMO25, FOMO26)
#: Manifest keys: the pretrained checkpoint the model started from (``{"sha256", "path"}`` or null: from scratch),
#: the time budget per case the container applies, and the folds best first by their out-of-fold results.
PRETRAINED_KEY, TIME_BUDGET_KEY, FOLD_RANKING_KEY = "pretrained", "time_budget_s", "fold_ranking"
#: Exported files whose sha256 matched their manifest in this process (see :func:`verify_exported_files`).
_verified_files: Set[Path] = set()
#: What nnU-Net's predictor reads of a checkpoint (``initialize_from_trained_model_folder``), and the epoch for
#: provenance; the optimizer and grad-scaler state and the training log stay behind.
PREDICTION_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args", "inference_allowed_mirroring_axes",
                              "current_epoch")
#: Keys without which nnU-Net's predictor cannot use a checkpoint (it defaults the mirroring axes when absent).
REQUIRED_CHECKPOINT_KEYS = ("network_weights", "trainer_name", "init_args")


def task_folder(model_dir: Path, task_id: int) -> Path:
    """``MODEL_DIR/task<N>``: where the container looks for task N's model."""
    return model_dir / f"task{task_id}"


def read_manifest(folder: Path) -> Optional[dict]:
    """The manifest of an exported model folder, or None for a model folder copied by hand."""
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FomoInputError(f"not valid JSON ({e})", path) from None
    if not isinstance(manifest, dict) or not all(key in manifest for key in MANIFEST_KEYS_READ):
        raise FomoInputError(f"not a manifest written by fomo_export_submission: it needs {list(MANIFEST_KEYS_READ)}"
                             " (export the model again)", path)
    return manifest


def verify_exported_files(folder: Path, manifest: Mapping, names: Sequence[str]) -> None:
    """Refuse a file of an exported model folder (``names``, relative to it) whose sha256 is not the one its manifest
    recorded at export: a swapped or changed checkpoint would change every prediction without a word. Each file is
    hashed once per process (a container call predicts one session; hashing takes well under a second per model)."""
    recorded = manifest[SHA256_KEY]
    if not isinstance(recorded, Mapping):
        raise FomoInputError(f"'{SHA256_KEY}' is not a mapping of file to digest (export the model again)",
                             folder / MANIFEST)
    for name in names:
        path = folder / name
        if path.resolve() in _verified_files:
            continue
        if name not in recorded:
            log.warning("%s: not exported with this model (%s records no sha256 for it): loaded unverified", path,
                        MANIFEST)
            continue
        if not path.is_file():
            raise FomoInputError(f"missing: {MANIFEST} records it as part of the exported model", path)
        if sha256_of_file(path) != recorded[name]:
            raise FomoInputError(f"sha256 differs from the one {MANIFEST} recorded at export: the file was changed or "
                                 "replaced since (export the model again with fomo_export_submission)", path)
        _verified_files.add(path.resolve())


def optional_model_files(folder: Path, manifest: Optional[Mapping] = None) -> List[str]:
    """The :data:`OPTIONAL_MODEL_FILES` that ``folder`` holds or its ``manifest`` records (verified if recorded)."""
    recorded = manifest.get(SHA256_KEY, {}) if manifest else {}
    return [name for name in OPTIONAL_MODEL_FILES if (folder / name).is_file() or name in recorded]


def fold_checkpoint(fold: Union[int, str], checkpoint: str) -> str:
    """``fold_X/<checkpoint>``: a fold's checkpoint, relative to the model folder (as the manifest names it)."""
    return f"fold_{fold}/{checkpoint}"


def files_to_export(model_folder: Path, folds: Sequence[Union[int, str]], checkpoint: str) -> List[str]:
    """Paths (relative to the model folder) of what prediction needs, refusing a fold without its checkpoint."""
    missing = [f for f in folds if not (model_folder / f"fold_{f}" / checkpoint).is_file()]
    if missing:
        raise FomoInputError(f"fold(s) {missing} have no {checkpoint}: train them first, or export other folds (-f)",
                             model_folder)
    absent = [name for name in MODEL_FILES if not (model_folder / name).is_file()]
    if absent:
        raise FomoInputError(f"not a complete nnU-Net model folder: {absent} missing", model_folder)
    return [*MODEL_FILES, *optional_model_files(model_folder), *(fold_checkpoint(f, checkpoint) for f in folds)]


def refuse_overlap(model_dir: Path, source: Path) -> None:
    """Refuse a ``MODEL_DIR`` that is the source model folder, lies inside it or holds it: the export would write
    into the trained model it reads (or, through ``task<N>/``, replace it)."""
    output, model = model_dir.resolve(), source.resolve()  # symlinks resolved: two names of one folder overlap
    if output == model:
        relation = "is"
    elif model in output.parents:
        relation = "lies inside"
    elif output in model.parents:
        relation = "holds"
    else:
        return
    raise FomoInputError(f"the output folder {relation} the trained model folder {source} that is exported: choose a "
                         "folder outside it, which the export fills with task<N>/ only", model_dir)


def pretrained_record(model_folder: Path, configuration: str, challenge: str) -> Dict[str, Optional[Dict[str, str]]]:
    """``{PRETRAINED_KEY: {"sha256", "path"}}`` of the checkpoint the model's FOMO plans start from (None: from
    scratch). Plans without a FOMO block (nnU-Net's own) record nothing under FOMO25's rules; FOMO26's need the
    record, and refuse them."""
    plans = PlansManager(str(model_folder / "plans.json")).get_configuration(configuration).configuration
    if FOMO_PLANS_KEY not in plans and challenge == FOMO25:
        return {}
    spec = FomoPlansBlock.from_configuration(plans).pretrained
    return {PRETRAINED_KEY: None if spec is None else {"sha256": spec.sha256, "path": spec.path}}


def _checkpoint_name(pretrained: Optional[Mapping]) -> str:
    return "no pretrained checkpoint" if pretrained is None else \
        f"pretrained checkpoint {pretrained['path']} (sha256 {pretrained['sha256'][:12]}...)"


def refuse_other_pretrained(model_dir: Path, task_id: int, pretrained: Optional[Mapping]) -> None:
    """FOMO26's rule: refuse a model whose pretrained checkpoint (by sha256) is not the one every other task's model
    in ``model_dir`` was trained from."""
    for task in sorted(set(TASKS) - {task_id}):
        manifest = read_manifest(task_folder(model_dir, task))
        if manifest is None:
            continue
        if PRETRAINED_KEY not in manifest:
            raise FomoInputError(f"task{task}/ was exported without a record of its pretrained checkpoint, which "
                                 f"FOMO26's one-checkpoint rule needs: export task {task} again", model_dir)
        other = manifest[PRETRAINED_KEY]
        if (other or {}).get("sha256") != (pretrained or {}).get("sha256"):
            raise FomoInputError(f"the task {task_id} model starts from {_checkpoint_name(pretrained)}, task{task}/ "
                                 f"from {_checkpoint_name(other)}: FOMO26 asks one pretrained checkpoint for every "
                                 f"task (fine-tune both from the same one, or export with --challenge {FOMO25})",
                                 model_dir)


def exported_fold_ranking(model_folder: Path, folds: Sequence[Union[int, str]], task_type: str,
                          time_budget_s: Optional[float]) -> Optional[List[Union[int, str]]]:
    """The folds best first by their out-of-fold results, for the container's time budget; None (said) when a
    fold has no validation summary and no budget was asked for."""
    try:
        return rank_folds(model_folder, folds, task_type)
    except FomoInputError as e:
        if time_budget_s is not None:
            raise
        log.info("no out-of-fold ranking of the folds recorded (%s): the container will refuse --time-budget", e)
        return None


def export_checkpoint(source: Path, target: Path) -> None:
    """Write the prediction part of the training checkpoint ``source`` to ``target``."""
    # nnU-Net's checkpoints hold plain Python objects beside tensors; nnU-Net loads them the same way
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # torch's truncated-zip error is a RuntimeError
        raise FomoInputError(f"unreadable checkpoint ({e})", source) from None
    missing = [key for key in REQUIRED_CHECKPOINT_KEYS if key not in checkpoint]
    if missing:
        raise FomoInputError(f"not an nnU-Net training checkpoint: no {missing}", source)
    torch.save({key: checkpoint[key] for key in PREDICTION_CHECKPOINT_KEYS if key in checkpoint}, target)


def export_submission(task_id: int, dataset: str, trainer: str, model_dir: Path, plans: str = DEFAULT_PLANS,
                      configuration: str = DEFAULT_CONFIGURATION,
                      folds: Sequence[Union[int, str]] = tuple(parse_folds(DEFAULT_FOLDS)),
                      checkpoint: str = DEFAULT_CHECKPOINT, challenge: str = FOMO26,
                      time_budget_s: Optional[float] = None) -> Path:
    """Copy one trained model's prediction files into ``model_dir/task<task_id>/`` (replaced only once complete);
    under FOMO26's rules refuse a model from another pretrained checkpoint than the other tasks' in ``model_dir``.
    ``time_budget_s``: the container's budget per case (:mod:`~nnunet_ext.inference.time_budget`)."""
    if task_id not in TASKS:
        raise FomoInputError(f"unknown FOMO task {task_id}; expected one of {sorted(TASKS)}")
    model_folder = trained_model_folder(dataset, trainer, plans, configuration)
    dataset_json_path = model_folder / "dataset.json"
    if not dataset_json_path.is_file():
        raise FomoInputError("not a trained nnU-Net model folder: dataset.json missing", model_folder)
    task = task_of(json.loads(dataset_json_path.read_text()), dataset_json_path)
    if task.task_id != task_id:
        raise FomoInputError(f"holds a task {task.task_id} model, not task {task_id}", model_folder)
    files = files_to_export(model_folder, folds, checkpoint)
    refuse_overlap(model_dir, model_folder)
    pretrained = pretrained_record(model_folder, configuration, challenge)
    if challenge == FOMO26:
        refuse_other_pretrained(model_dir, task_id, pretrained[PRETRAINED_KEY])
    ranking = exported_fold_ranking(model_folder, folds, task.task_type, time_budget_s)
    target = task_folder(require_output_folder(model_dir), task_id)
    with atomic_directory(target, overwrite=True) as tmp:
        hashes: Dict[str, str] = {}
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            if name in MODEL_FILES or name in OPTIONAL_MODEL_FILES:
                shutil.copy2(model_folder / name, tmp / name)
            else:
                export_checkpoint(model_folder / name, tmp / name)
            hashes[name] = sha256_of_file(tmp / name)
        atomic_write_json(tmp / MANIFEST, {
            "task_id": task_id, "dataset": model_folder.parent.name, "trainer": trainer, "plans": plans,
            "configuration": configuration, "folds": list(folds), "checkpoint": checkpoint, SHA256_KEY: hashes,
            "source": str(model_folder), "nnunet_ext_version": __version__, **pretrained, "challenge": challenge,
            TIME_BUDGET_KEY: time_budget_s, FOLD_RANKING_KEY: ranking,
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
    return target


def folder_size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / BYTES_PER_MB


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_export_submission", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", type=int, choices=sorted(TASKS), required=True,
                        help="FOMO task the model was trained for (1 infarct, 2 meningioma, 3 brain age)")
    add_model_arguments(parser, "folds to export; the container averages them")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="MODEL_DIR: receives task<N>/ (replaced if present); one MODEL_DIR holds all three tasks")
    parser.add_argument("--challenge", choices=CHALLENGES, default=FOMO26,
                        help=f"whose rules the submission follows; {FOMO26}: refuse a model fine-tuned from another "
                             "pretrained checkpoint than the other tasks' in MODEL_DIR (one checkpoint for every task)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="SECONDS",
                        help="seconds per case the container keeps to: it predicts with the folds (best out-of-fold "
                             "first) and test-time mirroring that fit, measured at the start of each case "
                             "(default: no budget, every exported fold mirrored)")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    target = export_submission(args.task, args.dataset, args.trainer, args.output, args.plans, args.configuration,
                               args.folds, args.checkpoint, args.challenge, args.time_budget)
    print(f"exported task {args.task} ({len(args.folds)} fold(s), {args.checkpoint}) to {target} for "
          f"{args.challenge.upper()}'s rules: {folder_size_mb(target):.1f} MB")
    return 0
