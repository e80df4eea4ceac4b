"""The explicit FOMO -> FomoUNet key table and the weight transfer that follows it.

The table is built level by level from the two naming schemes (``fomo_layout`` for the checkpoint, the path
helpers of ``networks.unet`` for our modules); shapes are only checked, never used to guess a match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks.unet import (
    DECODER_LAYOUTS,
    DECODER_TASK_TYPES,
    ENCODER_CONVS,
    FOMO_N_STAGES,
    PRETRAINING,
    SEGMENTATION,
    FomoUNet,
    conv_layer_path,
    decoder_block_path,
    encoder_block_path,
    output_conv_path,
    upsample_path,
)
from nnunet_ext.pretrained import fomo_layout
from nnunet_ext.pretrained.checkpoint_io import sha256_of_file
from nnunet_ext.pretrained.report import (
    ADAPTED,
    LOADED,
    MISSING,
    REINITIALISED,
    SHAPE_MISMATCH,
    UNEXPECTED,
    UNUSED,
    TransferEntry,
    TransferReport,
)
from nnunet_ext.utils.files import PathLike

log = logging.getLogger("nnunet_ext")

#: Stem adaptation for C input channels from the 1-channel pretrained stem:
#: "average" copies the kernel to every channel and scales it by 1/C (C identical channels then give exactly
#: the pretrained response); "copy" copies it unscaled (C times the response); "first" puts it on channel 0
#: and zeros elsewhere (channel 0 alone reproduces the pretrained response).
CHANNEL_ADAPTATIONS = ("average", "copy", "first")
#: "first": channel 0 is an image like those of the pretraining (one sequence), while the mean of C sequences is
#: not one, and contrasts of opposite polarity (CSF dark in T1, bright in T2) cancel in it. On the demo's brain
#: age (T1 + T2, random checkpoint, 2 folds) "average" stayed at the training mean's MAE (14.7 and 13.4 years
#: against 12.7 and 13.8), "first" learned (11.3 and 10.1).
DEFAULT_CHANNEL_ADAPTATION = "first"
#: Axis of a conv weight [out, in, kx, ky, kz] that holds the input channels.
_IN_CHANNEL_AXIS = 1


def build_key_table(n_stages: int, decoder_convs: int, with_decoder: bool) -> dict[str, str]:
    """FOMO key -> our parameter name for every tensor a FomoUNet takes from a checkpoint.

    The output conv is not in the table: its pretrained counterpart (1 MAE channel) is never transferred.
    """
    table: dict[str, str] = {}
    for level in range(n_stages):
        table.update(_conv_block_pairs(fomo_layout.encoder_block(level), encoder_block_path(level), ENCODER_CONVS))
    if with_decoder:
        for stage in range(n_stages - 1):
            table.update(_weight_and_bias_pairs(fomo_layout.upsample(stage), upsample_path(stage)))
            table.update(_conv_block_pairs(fomo_layout.decoder_block(stage), decoder_block_path(stage),
                                           decoder_convs))
    return table


def _conv_block_pairs(fomo_block: str, our_block: str, n_convs: int) -> Iterator[tuple[str, str]]:
    """(FOMO key, our name) for each tensor of a block's ``n_convs`` conv layers."""
    for conv_index in range(n_convs):
        for tensor in fomo_layout.CONV_LAYER_TENSORS:
            yield (f"{fomo_layout.conv_layer(fomo_block, conv_index)}.{tensor}",
                   f"{conv_layer_path(our_block, conv_index)}.{tensor}")


def _weight_and_bias_pairs(fomo_module: str, our_module: str) -> Iterator[tuple[str, str]]:
    """(FOMO key, our name) for a module's weight and bias."""
    for tensor in fomo_layout.WEIGHT_AND_BIAS:
        yield f"{fomo_module}.{tensor}", f"{our_module}.{tensor}"


def _output_conv_pairs(n_stages: int) -> dict[str, str]:
    """FOMO output-conv key -> our output-conv parameter name."""
    return dict(_weight_and_bias_pairs(fomo_layout.OUTPUT_CONV, output_conv_path(n_stages)))


def _adapt_stem(weight: torch.Tensor, input_channels: int, strategy: str) -> torch.Tensor:
    """Turn the 1-channel pretrained stem kernel into one for ``input_channels`` (see CHANNEL_ADAPTATIONS)."""
    repeated = weight.repeat_interleave(input_channels, dim=_IN_CHANNEL_AXIS)
    if strategy == "average":
        return repeated / input_channels
    if strategy == "copy":
        return repeated
    first_only = torch.zeros_like(repeated)
    first_only[:, :1] = weight
    return first_only


def to_fomo_names(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a FomoUNet state dict (an nnU-Net checkpoint) to FOMO keys; FOMO-named input passes unchanged.

    Returns the renamed dict and our keys without a FOMO counterpart (deep-supervision and image-level heads).
    Module aliases (DNA registers some modules twice, e.g. ``decoder.encoder``) share storage with the first
    name and are dropped.
    """
    our_stem = f"{conv_layer_path(encoder_block_path(0), 0)}.conv.weight"
    if our_stem not in state_dict:
        return dict(state_dict), []
    unique = _drop_aliases(state_dict)
    second_decoder_conv = f"{conv_layer_path(decoder_block_path(0), 1)}.conv.weight"
    decoder_convs = DECODER_LAYOUTS["unet_b" if second_decoder_conv in unique else "unet_b_lw_dec"]
    table = {**build_key_table(FOMO_N_STAGES, decoder_convs, with_decoder=True), **_output_conv_pairs(FOMO_N_STAGES)}
    inverse = {ours: fomo for fomo, ours in table.items()}
    renamed = {inverse[key]: tensor for key, tensor in unique.items() if key in inverse}
    return renamed, [key for key in unique if key not in inverse]


def _drop_aliases(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep the first key of every group of keys that share one tensor's memory."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    unique = {}
    for key, tensor in state_dict.items():
        identity = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if identity not in seen:
            seen.add(identity)
            unique[key] = tensor
    return unique


class _TransferPlan:
    """Entries of the report plus the copies to make; built first so a refused transfer changes nothing."""

    def __init__(self) -> None:
        self.entries: list[TransferEntry] = []
        self.copies: list[tuple[nn.Parameter, torch.Tensor]] = []

    def add(self, status: str, source: str | None, target: str | None, source_tensor: torch.Tensor | None = None,
            target_param: nn.Parameter | None = None, note: str = "") -> None:
        """Record one entry (shapes taken from the tensors when given)."""
        self.entries.append(TransferEntry(
            status, source, target,
            None if source_tensor is None else list(source_tensor.shape),
            None if target_param is None else list(target_param.shape), note))


def transfer_fomo_weights(network: FomoUNet, state_dict: Mapping[str, torch.Tensor],
                          channel_adaptation: str = DEFAULT_CHANNEL_ADAPTATION, allow_partial: bool = False,
                          checkpoint: PathLike | None = None) -> TransferReport:
    """Copy a FOMO checkpoint's weights into ``network`` following the key table; returns the report.

    ``state_dict`` comes from :func:`load_fomo_state_dict` (FOMO keys, or our keys from an nnU-Net checkpoint).
    The stem is adapted to the network's input channels (``channel_adaptation``); the segmentation output conv
    is re-initialised; the pretrained decoder is reported unused for classification and regression.
    A checkpoint that does not fit (missing, unexpected or wrongly shaped tensors) is refused with a
    FomoInputError before anything is copied, unless ``allow_partial``; one that fits nowhere is always refused.
    ``checkpoint`` (the file the state dict came from) is recorded with its sha256.
    """
    if channel_adaptation not in CHANNEL_ADAPTATIONS:
        raise FomoInputError(f"channel adaptation must be one of {CHANNEL_ADAPTATIONS}, got {channel_adaptation!r}")
    source, our_extras = to_fomo_names(state_dict)
    detected = fomo_layout.detect_layout(source)
    plan = _plan_transfer(network, source, our_extras, detected, channel_adaptation)
    report = TransferReport(
        entries=plan.entries, channel_adaptation=channel_adaptation, network=_describe_network(network),
        checkpoint=None if checkpoint is None else str(checkpoint),
        sha256=None if checkpoint is None else sha256_of_file(checkpoint), allow_partial=allow_partial,
        layout={} if detected is None else _describe_layout(detected))
    if report.transferred == 0 or not (report.complete or allow_partial):
        raise FomoInputError(_refusal_message(network, detected, report), checkpoint)
    _apply(network, plan)
    log.debug("%s", report.summary())
    return report


def _plan_transfer(network: FomoUNet, source: Mapping[str, torch.Tensor], our_extras: list[str],
                   detected: fomo_layout.FomoLayout | None, channel_adaptation: str) -> _TransferPlan:
    """Decide the status of every checkpoint tensor and network parameter."""
    params = dict(network.named_parameters())
    with_decoder = _takes_decoder(network)
    table = build_key_table(network.n_stages, network.decoder_convs, with_decoder=with_decoder)
    if network.task_type == PRETRAINING:  # continued pretraining: the reconstruction conv is the checkpoint's too
        table.update(_output_conv_pairs(network.n_stages))
    plan = _TransferPlan()
    for fomo_key, our_name in table.items():
        _plan_tensor(plan, fomo_key, source.get(fomo_key), our_name, params[our_name], channel_adaptation)
    output_pairs = _output_conv_pairs(network.n_stages) if network.task_type == SEGMENTATION else {}
    for fomo_key, our_name in output_pairs.items():
        plan.add(REINITIALISED, fomo_key if fomo_key in source else None, our_name, source.get(fomo_key),
                 params[our_name], "output conv re-initialised: the pretrained one reconstructs 1 MAE channel")
    # An image-level network takes no decoder: the checkpoint's (whatever its layout) is known but unused.
    # A network with a decoder takes the whole decoder, so any decoder key outside the table is unexpected.
    source_decoder_convs = network.decoder_convs if detected is None else detected.decoder_convs
    unused = {} if with_decoder else {**build_key_table(network.n_stages, source_decoder_convs, with_decoder=True),
                                       **_output_conv_pairs(network.n_stages)}
    for fomo_key, tensor in source.items():
        if fomo_key in table or fomo_key in output_pairs:
            continue
        if fomo_key in unused:
            plan.add(UNUSED, fomo_key, None, tensor, note=f"not used by a {network.task_type} network")
        else:
            plan.add(UNEXPECTED, fomo_key, None, tensor)
    for key in our_extras:
        plan.add(UNUSED, key, None, note="nnU-Net checkpoint key without a FOMO counterpart")
    targeted = set(table.values()) | set(output_pairs.values())
    for our_name, param in params.items():
        if our_name not in targeted:
            plan.add(REINITIALISED, None, our_name, target_param=param, note="no pretrained counterpart")
    return plan


def _plan_tensor(plan: _TransferPlan, fomo_key: str, tensor: torch.Tensor | None, our_name: str,
                 param: nn.Parameter, channel_adaptation: str) -> None:
    """Plan one table entry: load it, adapt the stem, or record why it cannot be transferred."""
    if tensor is None:
        plan.add(MISSING, fomo_key, our_name, target_param=param)
    elif tensor.shape == param.shape:
        plan.add(LOADED, fomo_key, our_name, tensor, param)
        plan.copies.append((param, tensor))
    elif fomo_key == fomo_layout.STEM_WEIGHT and _stem_adaptable(tensor, param):
        plan.add(ADAPTED, fomo_key, our_name, tensor, param,
                 f"1 -> {param.shape[_IN_CHANNEL_AXIS]} input channels ({channel_adaptation})")
        plan.copies.append((param, _adapt_stem(tensor, param.shape[_IN_CHANNEL_AXIS], channel_adaptation)))
    else:
        plan.add(SHAPE_MISMATCH, fomo_key, our_name, tensor, param)


def _stem_adaptable(tensor: torch.Tensor, param: nn.Parameter) -> bool:
    """A 1-channel stem kernel that differs from ``param`` only in the input-channel axis."""
    return (tensor.shape[_IN_CHANNEL_AXIS] == fomo_layout.PRETRAINING_CHANNELS
            and tensor.ndim == param.ndim
            and all(a == b for axis, (a, b) in enumerate(zip(tensor.shape, param.shape)) if axis != _IN_CHANNEL_AXIS))


@torch.no_grad()
def _apply(network: FomoUNet, plan: _TransferPlan) -> None:
    """Make the planned copies, then re-initialise the segmentation output conv."""
    for param, tensor in plan.copies:
        param.copy_(tensor)
    if network.task_type == SEGMENTATION:
        network.initialize(network.get_submodule(output_conv_path(network.n_stages)))


def _describe_network(network: FomoUNet) -> dict[str, object]:
    """The network settings a report reader needs to judge the transfer."""
    return {"task_type": network.task_type, "starting_filters": network.starting_filters,
            "decoder_convs": network.decoder_convs, "input_channels": network.input_channels,
            "num_classes": network.num_classes, "n_stages": network.n_stages}


def _describe_layout(layout: fomo_layout.FomoLayout) -> dict[str, object]:
    """The checkpoint's detected architecture, in the names FOMO uses."""
    return {"architecture": fomo_layout.architecture_name(layout.starting_filters),
            "decoder_layout": fomo_layout.decoder_layout_name(layout.decoder_convs),
            "starting_filters": layout.starting_filters, "input_channels": layout.input_channels}


def _takes_decoder(network: FomoUNet) -> bool:
    """Whether ``network`` takes the checkpoint's decoder (segmentation and pretraining do)."""
    return network.task_type in DECODER_TASK_TYPES


def _refusal_message(network: FomoUNet, detected: fomo_layout.FomoLayout | None, report: TransferReport) -> str:
    """Why the checkpoint does not fit, naming the likely cause first, then the report's summary."""
    if detected is None:
        cause = "not a FOMO UNet checkpoint (no encoder.in_conv stem)"
    elif detected.starting_filters != network.starting_filters:
        cause = (f"the checkpoint has starting filters {detected.starting_filters} "
                 f"({fomo_layout.architecture_name(detected.starting_filters)}) but the network has "
                 f"{network.starting_filters} ({fomo_layout.architecture_name(network.starting_filters)})")
    elif _takes_decoder(network) and detected.decoder_convs != network.decoder_convs:
        cause = (f"the checkpoint's decoder layout is {fomo_layout.decoder_layout_name(detected.decoder_convs)} "
                 f"but the network has decoder_convs={network.decoder_convs}")
    else:
        cause = "the checkpoint does not match the network's layout"
    if report.transferred == 0:
        return f"refusing the checkpoint: {cause}; no tensor could be transferred\n{report.summary()}"
    # No command offers a partial transfer (only this function's allow_partial argument does): name the real way out.
    return (f"refusing the checkpoint: {cause}\n{report.summary()}\n"
            "no command transfers part of a checkpoint: plan a network that matches it (fomo_inspect_checkpoint shows "
            "its layout and which tasks it can start), or train without it (the _Scratch trainer variants)")
