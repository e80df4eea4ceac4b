"""``fomo_export_pretrained``: a network pretrained with ``FomoPretrainTrainer`` as a FOMO checkpoint.

The file has the layout of FOMO25's ``epoch=12.ckpt`` (fomo_reference.md, sections 1 and 6): a Lightning-style
dictionary whose ``state_dict`` holds the FOMO key names and shapes with the ``model.`` prefix, and whose
``hyper_parameters`` record the architecture and the masking recipe. So ``fomo_inspect_checkpoint``,
``fomo_plan_and_preprocess --pretrained`` and the FOMO baseline's own loader read it as they read the published
file. The optimiser state is not exported (``optimizer_states`` is empty): the file starts fine-tuning or continued
pretraining, which begin with a fresh optimiser.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from nnunet_ext.dataset_conversion.tasks import PRETRAINING
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.networks.unet import FOMO_N_STAGES
from nnunet_ext.pretrained import fomo_layout
from nnunet_ext.pretrained.checkpoint_io import FORMAT_NNUNET, load_fomo_state_dict, read_checkpoint, sha256_of_file
from nnunet_ext.pretrained.key_mapping import to_fomo_names
from nnunet_ext.pretrained.lightning_file import lightning_checkpoint
from nnunet_ext.utils.arguments import ALL_FOLDS, fold
from nnunet_ext.utils.files import atomic_write_bytes
from nnunet_ext.utils.nnunet_paths import (
    DEFAULT_CHECKPOINT,
    DEFAULT_CONFIGURATION,
    DEFAULT_PLANS,
    trained_model_folder,
)

DEFAULT_TRAINER = "FomoPretrainTrainer"
#: The plans block our planner writes (``preprocessing.fomo_plans.FOMO_PLANS_KEY``), read here as plain JSON so
#: that this low-level package needs nothing from the planner.
_FOMO_PLANS_KEY = "fomo"
#: File in the fold folder where the pretraining trainer records its recipe (the masking, the loss, the
#: optimisation), under the names of the baseline's ``hyper_parameters``.
PRETRAINING_RECIPE_FILENAME = "pretraining_recipe.json"
#: Suffix of FOMO's name for the one-conv decoder layout (``unet_b_lw_dec``, ``unet_xl_lw_dec``).
_LIGHT_DECODER_SUFFIX = "_lw_dec"


def model_name(starting_filters: int, decoder_convs: int) -> str:
    """FOMO's ``model_name``: ``unet_b`` / ``unet_xl``, with ``_lw_dec`` for the one-conv decoder; another width
    is named by its filters (``unet_f8_lw_dec``), which no published loader builds but every reader can tell."""
    architecture = fomo_layout.architecture_name(starting_filters)
    if architecture == fomo_layout.UNKNOWN:
        architecture = f"unet_f{starting_filters}"
    light = fomo_layout.decoder_layout_name(decoder_convs) == "unet_b_lw_dec"
    return architecture + (_LIGHT_DECODER_SUFFIX if light else "")


def pretraining_configuration(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The plans configuration an nnU-Net checkpoint was trained with, refusing one that did not pretrain."""
    init_args = checkpoint.get("init_args") or {}
    try:
        configuration = init_args["plans"]["configurations"][init_args["configuration"]]
    except (KeyError, TypeError):
        raise FomoInputError("not an nnU-Net training checkpoint (no init_args with plans)", path) from None
    task_type = (configuration.get(_FOMO_PLANS_KEY) or {}).get("task_type")
    if task_type != PRETRAINING:
        raise FomoInputError(f"trained by {checkpoint.get('trainer_name')} on a {task_type or 'non-FOMO'} task, not "
                             f"pretrained: fomo_export_pretrained exports {DEFAULT_TRAINER} models "
                             "(fine-tuned models go to the challenge with fomo_export_submission)", path)
    return configuration


def export_pretrained(checkpoint_path: Path, output: Path) -> dict[str, Any]:
    """Write ``output`` from an nnU-Net pretraining checkpoint; returns the ``hyper_parameters`` it recorded."""
    content = read_checkpoint(checkpoint_path)
    configuration = pretraining_configuration(content, checkpoint_path)
    state_dict, metadata = load_fomo_state_dict(checkpoint_path)
    if metadata["format"] != FORMAT_NNUNET:
        raise FomoInputError("not an nnU-Net checkpoint_*.pth", checkpoint_path)
    fomo_names, extras = to_fomo_names(state_dict)
    layout = fomo_layout.detect_layout(fomo_names)
    problems = {"not in the FOMO layout": extras}
    if layout is not None:
        problems.update(fomo_layout.layout_mismatches(fomo_names, layout))
    if layout is None or any(problems.values()):
        found = "; ".join(f"{kind}: {keys[:5]}" for kind, keys in problems.items() if keys)
        raise FomoInputError(f"the network does not have the FOMO UNet's layout ({found or 'no FOMO stem'})",
                             checkpoint_path)
    recipe_path = checkpoint_path.parent / PRETRAINING_RECIPE_FILENAME
    if not recipe_path.is_file():
        raise FomoInputError(f"{PRETRAINING_RECIPE_FILENAME} is missing beside the checkpoint: was this fold trained by "
                             f"{DEFAULT_TRAINER} (or a variant)?", checkpoint_path)
    fomo_block = configuration[_FOMO_PLANS_KEY]
    hyper_parameters = {
        "model_name": model_name(layout.starting_filters, layout.decoder_convs),
        "starting_filters": layout.starting_filters,
        "input_channels": layout.input_channels,
        "num_classes": layout.output_channels,
        "patch_size": list(configuration["patch_size"]),
        "spacing": list(configuration["spacing"]),
        "n_stages": FOMO_N_STAGES,
        "normalization": fomo_block.get("normalization"),
        **json.loads(recipe_path.read_text()),
        "should_compile": False,
        "config": {"trainer": content.get("trainer_name"), "source_checkpoint": str(checkpoint_path.resolve()),
                   "source_sha256": sha256_of_file(checkpoint_path), "fold": content["init_args"].get("fold"),
                   "dataset": content["init_args"].get("dataset_json", {}).get("name")},
    }
    epoch = int(content.get("current_epoch") or 0)
    # nnU-Net's gradient scaler (mixed precision on a GPU) keeps the state Lightning saves under this name
    scaler = content.get("grad_scaler_state")
    exported = lightning_checkpoint(fomo_names, hyper_parameters, epoch=epoch,
                                    global_step=epoch * int(hyper_parameters["steps_per_epoch"]),
                                    extra=None if scaler is None else {"MixedPrecision": scaler})
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    atomic_write_bytes(output, buffer.getvalue())
    return hyper_parameters


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_export_pretrained",
        description="Write a network pretrained with FomoPretrainTrainer as a checkpoint in the layout of FOMO25's "
                    "epoch=12.ckpt (Lightning dictionary, FOMO key names with the model. prefix).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id the network was pretrained on")
    parser.add_argument("-tr", "--trainer", default=DEFAULT_TRAINER, help="pretraining trainer class")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help="plans identifier")
    parser.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION, help="nnU-Net configuration")
    parser.add_argument("-f", "--fold", type=fold, default=ALL_FOLDS,
                        help="fold the network was trained on (pretraining trains fold 'all')")
    parser.add_argument("-chk", "--checkpoint", default=DEFAULT_CHECKPOINT,
                        help="checkpoint file of the fold folder (checkpoint_best.pth: the lowest held-out loss)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="checkpoint file to write (e.g. model.ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Console script ``fomo_export_pretrained``."""
    args = _parser().parse_args(argv)
    if args.output.is_dir():
        raise FomoInputError("--output is a folder; name the checkpoint file to write", args.output)
    if args.output.exists() and not args.overwrite:
        raise FomoInputError("--output exists; pass --overwrite to replace it", args.output)
    if not args.output.parent.is_dir():
        raise FomoInputError("--output's folder does not exist", args.output.parent)
    source = trained_model_folder(args.dataset, args.trainer, args.plans, args.configuration) / \
        f"fold_{args.fold}" / args.checkpoint
    if not source.is_file():
        raise FomoInputError(f"no {args.checkpoint} here: has fold {args.fold} finished training?", source)
    hyper_parameters = export_pretrained(source, args.output)
    print(f"wrote {args.output} ({hyper_parameters['model_name']}, {hyper_parameters['starting_filters']} starting "
          f"filters, from {source})")
    return 0
