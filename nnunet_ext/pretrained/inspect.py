"""``fomo_inspect_checkpoint``: what a checkpoint holds, which family and size it is, and which FOMO tasks it can
initialise (FOMO25's UNet-B / XL; FOMO26's and nnssl's residual-encoder U-Net)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnunet_ext.dataset_conversion.tasks import SEGMENTATION, TASKS
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.networks.resenc import FomoResEncUNet
from nnunet_ext.networks.unet import FOMO_N_STAGES, FomoUNet
from nnunet_ext.pretrained import fomo_layout, resenc_layout
from nnunet_ext.pretrained.checkpoint_io import load_fomo_state_dict, sha256_of_file
from nnunet_ext.pretrained.key_mapping import to_fomo_names, transfer_fomo_weights
from nnunet_ext.pretrained.report import ADAPTED
from nnunet_ext.pretrained.resenc_mapping import split_extras
from nnunet_ext.utils.files import PathLike

#: Hyper-parameters worth showing (FOMO's Lightning module saves these among others).
HPARAMS_OF_INTEREST = ("model_name", "patch_size", "epochs", "warmup_epochs", "learning_rate", "optimizer",
                       "input_channels", "num_classes", "mask_ratio", "mask_patch_size")
#: Exit status when the checkpoint was read but is unfit as it is (layout differs, NaN/Inf weights), like
#: ``diff``'s 1 for "differences found"; 2 (refused input) is for files that cannot be read at all.
EXIT_CHECKPOINT_UNFIT = 1
#: How many differing keys the human-readable output lists per kind.
_SHOWN_KEYS = 5
#: The linear layer of the image-level head that our classification and regression networks have instead of a
#: decoder (``networks.heads.PoolingHead`` as ``FomoUNet.head``).
HEAD_LINEAR_WEIGHT = "head.linear.weight"
#: The FOMO names of the encoder's tensors start so; an image-level network has no others.
ENCODER_PREFIX = "encoder."
#: What an image-level head with this many outputs predicts (each task's ``num_classes``).
HEAD_TASK_TYPES = {task.num_classes: task.task_type for task in TASKS.values() if task.task_type != SEGMENTATION}
#: ``decoder_layout`` of a network that has an image-level head instead of a decoder.
NO_DECODER = "none (image-level head)"
#: The checkpoint families, as ``family`` names them.
UNET_FAMILY = "unet"
RESENC_FAMILY = "resenc"


def inspect_checkpoint(path: PathLike, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Describe a checkpoint: format, architecture, layout match, hyper-parameters, task compatibility."""
    state_dict, metadata = load_fomo_state_dict(path, trust_checkpoint)
    source, our_extras = to_fomo_names(state_dict)
    layout = fomo_layout.detect_layout(source)
    resenc = None if layout is not None else resenc_layout.detect_layout(state_dict)
    if resenc is not None:
        source, our_extras = _resenc_source(state_dict, resenc)
    hyper_parameters = metadata["hyper_parameters"]
    info: dict[str, Any] = {
        "checkpoint": str(path),
        "sha256": sha256_of_file(path),
        "format": metadata["format"],
        "epoch": metadata["epoch"],
        "tensors": len(source),
        "parameters": sum(tensor.numel() for tensor in source.values()),
        "keys_without_fomo_counterpart": our_extras,
        "nonfinite_tensors": sorted(key for key, tensor in source.items()
                                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())),
        "hyper_parameters": {key: hyper_parameters[key] for key in HPARAMS_OF_INTEREST if key in hyper_parameters},
        "family": UNET_FAMILY if layout is not None else RESENC_FAMILY if resenc is not None else fomo_layout.UNKNOWN,
    }
    if "adaptation_plan" in metadata:
        info["nnssl_architecture"] = metadata["adaptation_plan"]["architecture_plans"]["arch_class_name"]
    if resenc is not None:
        info.update(_inspect_resenc(state_dict, source, *resenc))
        return info
    if layout is None:
        info.update(architecture=fomo_layout.UNKNOWN, decoder_layout=fomo_layout.UNKNOWN, head=None,
                    starting_filters=None, input_channels=None, matches_fomo_layout=False, layout_differences={},
                    tasks={})
        return info
    head = image_level_head(state_dict, source)
    differences = fomo_layout.layout_mismatches(source, layout)
    if head is not None:
        # fine-tuned by our classification or regression trainers: the pretrained decoder was never built
        differences["missing"] = [key for key in differences["missing"] if key.startswith(ENCODER_PREFIX)]
    info.update(
        architecture=fomo_layout.architecture_name(layout.starting_filters),
        decoder_layout=NO_DECODER if head else fomo_layout.decoder_layout_name(layout.decoder_convs),
        head=head,
        starting_filters=layout.starting_filters,
        input_channels=layout.input_channels,
        matches_fomo_layout=not any(differences.values()),
        layout_differences={kind: keys for kind, keys in differences.items() if keys},
        tasks={task_id: _task_compatibility(task_id, state_dict, _unet_builder(layout)) for task_id in TASKS},
    )
    return info


def _resenc_source(state_dict: Mapping[str, torch.Tensor], detected: tuple[str, resenc_layout.ResEncLayout]
                   ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The canonical tensors of a residual-encoder checkpoint (second names dropped) and our own extra keys."""
    naming, layout = detected
    source, _ = resenc_layout.split_aliases(state_dict, layout, naming)
    source, extras = split_extras(source, naming)
    return source, list(extras)


def _inspect_resenc(state_dict: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], naming: str,
                    layout: resenc_layout.ResEncLayout) -> dict[str, Any]:
    """The fields of :func:`inspect_checkpoint` for a FOMO26 / nnssl residual-encoder checkpoint."""
    head = image_level_head(state_dict, source)
    # a network our classification or regression trainers fine-tuned has no decoder
    differences = resenc_layout.layout_mismatches(source, layout, naming, optional=("decoder.",) if head else ())
    description = resenc_layout.describe(layout, naming)
    return {
        "architecture": description["architecture"],
        "naming": naming,
        "nnssl_name": description["nnssl_name"],
        "features_per_stage": description["features_per_stage"],
        "blocks_per_stage": description["blocks_per_stage"],
        "decoder_layout": NO_DECODER if head else f"{layout.decoder_convs} conv(s) per decoder stage",
        "head": head,
        "starting_filters": layout.features[0],
        "input_channels": layout.input_channels,
        "matches_fomo_layout": not any(differences.values()),
        "layout_differences": {kind: keys for kind, keys in differences.items() if keys},
        "tasks": {task_id: _task_compatibility(task_id, state_dict, _resenc_builder(layout)) for task_id in TASKS},
    }


#: Builds the network of a task (input channels, outputs, task type) and says how it was built.
NetworkBuilder = tuple[Callable[[int, int, str], nn.Module], Callable[[bool], str]]


def _unet_builder(layout: fomo_layout.FomoLayout) -> NetworkBuilder:
    def build(channels: int, outputs: int, task_type: str) -> nn.Module:
        return FomoUNet(channels, outputs, starting_filters=layout.starting_filters,
                        decoder_convs=layout.decoder_convs, task_type=task_type, n_stages=FOMO_N_STAGES)

    def text(segmentation: bool) -> str:
        return f"FomoUNet starting_filters={layout.starting_filters}" + (
            f", decoder_convs={layout.decoder_convs}" if segmentation else "")

    return build, text


def _resenc_builder(layout: resenc_layout.ResEncLayout) -> NetworkBuilder:
    def build(channels: int, outputs: int, task_type: str) -> nn.Module:
        return FomoResEncUNet(channels, outputs, layout.features, layout.blocks, layout.decoder_convs,
                              task_type=task_type)

    def text(segmentation: bool) -> str:
        size = layout.model_name or f"features={list(layout.features)}, blocks={list(layout.blocks)}"
        return f"FomoResEncUNet {size}" + (f", decoder_convs={layout.decoder_convs}" if segmentation else "")

    return build, text


def image_level_head(state_dict: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
                     ) -> dict[str, Any] | None:
    """The image-level head of a network our classification or regression trainers fine-tuned (an nnU-Net
    ``checkpoint_*.pth`` of ``FomoClassificationTrainer`` / ``FomoRegressionTrainer``): what it predicts, its outputs
    and pooled features; None for a network with a decoder (FOMO's pretrained one, or our segmentation network)."""
    weight = state_dict.get(HEAD_LINEAR_WEIGHT)
    if weight is None or weight.ndim != 2 or any(not key.startswith(ENCODER_PREFIX) for key in source):
        return None
    outputs, features = weight.shape
    return {"task_type": HEAD_TASK_TYPES.get(outputs, fomo_layout.UNKNOWN), "outputs": outputs,
            "pooled_features": features}


def _task_compatibility(task_id: int, state_dict: Mapping[str, torch.Tensor], builder: NetworkBuilder
                        ) -> dict[str, Any]:
    """Try the real transfer into the network task ``task_id`` would use; report whether and how it works."""
    task = TASKS[task_id]
    build, text = builder
    network = build(len(task.channels), task.num_classes, task.task_type)
    segmentation = task.task_type == SEGMENTATION
    result = {"task_type": task.task_type, "input_channels": len(task.channels), "network": text(segmentation)}
    try:
        report = transfer_fomo_weights(network, state_dict)
    except FomoInputError as e:
        return {**result, "can_initialise": False, "how": str(e).splitlines()[0]}
    parts = "encoder and decoder" if segmentation else "encoder (decoder unused)"
    how = (f"{parts}: {report.transferred}/{report.transferable} tensors"
           + (f", stem adapted {report.layout.get('input_channels')} -> {len(task.channels)} channels"
              if report.keys_with(ADAPTED) else "")
           + (", output conv re-initialised" if segmentation else ", new head")
           + f" ({text(segmentation)})")
    return {**result, "can_initialise": True, "how": how}


def checkpoint_problems(info: dict[str, Any]) -> list[str]:
    """What makes a checkpoint unfit to start fine-tuning from as it is (empty: nothing)."""
    problems = []
    if not info["matches_fomo_layout"]:
        kinds = ", ".join(f"{len(keys)} {kind}" for kind, keys in info["layout_differences"].items())
        family = "FOMO26 / nnssl resenc" if info["family"] == RESENC_FAMILY else "FOMO UNet"
        problems.append(f"not in the {family} layout" + (f" ({kinds})" if kinds else " (an unknown architecture)"))
    if info["nonfinite_tensors"]:
        problems.append(f"{len(info['nonfinite_tensors'])} tensor(s) hold NaN/Inf weights, e.g. "
                        f"{info['nonfinite_tensors'][:3]}")
    return problems


def format_inspection(info: dict[str, Any]) -> str:
    """Human-readable lines for :func:`inspect_checkpoint`'s result."""
    lines = [
        f"checkpoint:       {info['checkpoint']}",
        f"sha256:           {info['sha256']}",
        f"format:           {info['format']}" + (f" (epoch {info['epoch']})" if info["epoch"] is not None else ""),
        f"family:           {_family_text(info)}",
        f"architecture:     {info['architecture']}, decoder layout {info['decoder_layout']}",
        *([f"stages:           features {info['features_per_stage']}, residual blocks {info['blocks_per_stage']}"]
          if info["family"] == RESENC_FAMILY else []),
        f"starting filters: {info['starting_filters']}",
        f"input channels:   {info['input_channels']}",
        f"tensors:          {info['tensors']} ({info['parameters']:,} parameters)"
        + (f", plus {len(info['keys_without_fomo_counterpart'])} of our own heads"
           if info["keys_without_fomo_counterpart"] else ""),
        *([f"head:             {info['head']['task_type']}: {info['head']['outputs']} output(s) from "
           f"{info['head']['pooled_features']} pooled encoder features (a network fine-tuned by our "
           f"{info['head']['task_type']} trainer: encoder and head, no decoder)"] if info["head"] else []),
        f"FOMO layout:      {'exact match' if info['matches_fomo_layout'] else 'DIFFERS'}"
        + (" (encoder)" if info["head"] and info["matches_fomo_layout"] else ""),
        f"finite weights:   " + ("yes" if not info["nonfinite_tensors"] else
                                 f"NO: {len(info['nonfinite_tensors'])} tensor(s) hold NaN/Inf"),
    ]
    for kind, keys in info["layout_differences"].items():
        more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
        lines.append(f"  {kind}: {', '.join(keys[:_SHOWN_KEYS])}{more}")
    lines.append("hyper-parameters:" + ("" if info["hyper_parameters"] else " none recorded"))
    lines += [f"  {key}: {value}" for key, value in info["hyper_parameters"].items()]
    lines.append("tasks:" + ("" if info["tasks"] else " none (not a FOMO UNet checkpoint)"))
    for task_id, task in info["tasks"].items():
        verdict = "yes" if task["can_initialise"] else "no"
        lines.append(f"  Task {task_id} ({task['task_type']}, {task['input_channels']} channels): "
                     f"{verdict}: {task['how']}")
    return "\n".join(lines)


def _family_text(info: dict[str, Any]) -> str:
    """Which family (and for nnssl, which of its architectures) the checkpoint belongs to."""
    if info["family"] == UNET_FAMILY:
        return "FOMO25 UNet (PlainConvEncoder, max-pooling)"
    if info["family"] != RESENC_FAMILY:
        return fomo_layout.UNKNOWN
    names = {resenc_layout.FOMO26: "FOMO26 residual-encoder U-Net (gardening-tools names)",
             resenc_layout.NNSSL: "residual-encoder U-Net in nnssl / nnU-Net names"}
    also = f"; nnssl calls this size {info['nnssl_name']}" if info.get("nnssl_name") else ""
    plan = f"; nnssl adaptation plan: {info['nnssl_architecture']}" if info.get("nnssl_architecture") else ""
    return names[info["naming"]] + also + plan


def _parser() -> argparse.ArgumentParser:
    """The command line of ``fomo_inspect_checkpoint``."""
    parser = argparse.ArgumentParser(
        prog="fomo_inspect_checkpoint",
        description="Show what a FOMO25 / FOMO26 / nnssl / nnU-Net checkpoint holds, which family and size it is, "
                    "and which FOMO tasks it can initialise. "
                    "Exit status: 0 when it is in its family's layout (the encoder, for a classification or "
                    f"regression network fine-tuned by our trainers) with finite weights, {EXIT_CHECKPOINT_UNFIT} "
                    "when the layout differs or weights are NaN/Inf (the report is printed all the same), 2 when "
                    "it cannot be read.")
    parser.add_argument("checkpoint", type=Path,
                        help="Lightning .ckpt, bare state dict, nnssl checkpoint, or nnU-Net checkpoint_*.pth")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load with weights_only=False (can run code: only for files you trust; "
                             "same as FOMO_TRUST_CHECKPOINT=1)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> int:
    """Console script ``fomo_inspect_checkpoint``."""
    args = _parser().parse_args(argv)
    info = inspect_checkpoint(args.checkpoint, args.trust_checkpoint)
    # Hyper-parameters may hold tuples or numpy scalars: str() keeps them readable instead of failing.
    print(json.dumps(info, indent=2, default=str) if args.json else format_inspection(info))
    problems = checkpoint_problems(info)
    for problem in problems:
        print(f"error: {args.checkpoint}: {problem}", file=sys.stderr)
    return EXIT_CHECKPOINT_UNFIT if problems else 0
