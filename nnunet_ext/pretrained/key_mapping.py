"""The explicit FOMO -> FomoUNet key table and the weight transfer that follows it.

The table is built level by level from the two naming schemes (``fomo_layout`` for the checkpoint, the path
helpers of ``networks.unet`` for our modules); shapes are only checked, never used to guess a match. The transfer
itself (``transfer``) is shared with the residual-encoder family (``resenc_mapping``), which
:func:`transfer_fomo_weights` hands its networks to.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from nnunet_ext.networks.resenc import FomoResEncUNet
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
from nnunet_ext.pretrained.report import TransferReport
from nnunet_ext.pretrained.resenc_mapping import transfer_resenc_weights
from nnunet_ext.pretrained.transfer import (
    CHANNEL_ADAPTATIONS,
    DEFAULT_CHANNEL_ADAPTATION,
    TransferTable,
    check_channel_adaptation,
    finish_transfer,
    plan_transfer,
    refusal_text,
)
from nnunet_ext.utils.files import PathLike

__all__ = ["CHANNEL_ADAPTATIONS", "DEFAULT_CHANNEL_ADAPTATION", "build_key_table", "to_fomo_names",
           "transfer_fomo_weights"]

#: Why the segmentation output conv starts fresh.
OUTPUT_CONV_NOTE = "output conv re-initialised: the pretrained one reconstructs 1 MAE channel"


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


def transfer_fomo_weights(network: nn.Module, state_dict: Mapping[str, torch.Tensor],
                          channel_adaptation: str = DEFAULT_CHANNEL_ADAPTATION, allow_partial: bool = False,
                          checkpoint: PathLike | None = None) -> TransferReport:
    """Copy a pretrained checkpoint's weights into ``network`` following the key table; returns the report.

    ``state_dict`` comes from :func:`load_fomo_state_dict` (FOMO keys, or our keys from an nnU-Net checkpoint).
    A ``FomoResEncUNet`` takes FOMO26 / nnssl residual-encoder checkpoints (``resenc_mapping``), a ``FomoUNet`` FOMO25
    ones. The stem is adapted to the network's input channels (``channel_adaptation``); the segmentation output conv
    is re-initialised; the pretrained decoder is reported unused for classification and regression.
    A checkpoint that does not fit (missing, unexpected or wrongly shaped tensors) is refused with a
    FomoInputError before anything is copied, unless ``allow_partial``; one that fits nowhere is always refused.
    ``checkpoint`` (the file the state dict came from) is recorded with its sha256.
    """
    check_channel_adaptation(channel_adaptation)
    if isinstance(network, FomoResEncUNet):
        return transfer_resenc_weights(network, state_dict, channel_adaptation, allow_partial, checkpoint)
    source, our_extras = to_fomo_names(state_dict)
    detected = fomo_layout.detect_layout(source)
    table = _transfer_table(network, detected)
    extras = {key: "nnU-Net checkpoint key without a FOMO counterpart" for key in our_extras}
    plan = plan_transfer(network, table, source, extras, channel_adaptation)

    def reinitialise() -> None:
        if network.task_type == SEGMENTATION:
            network.initialize(network.get_submodule(output_conv_path(network.n_stages)))

    return finish_transfer(
        network, plan, channel_adaptation=channel_adaptation, allow_partial=allow_partial, checkpoint=checkpoint,
        network_description=_describe_network(network),
        layout_description={} if detected is None else _describe_layout(detected),
        refusal_message=lambda report: refusal_text(_refusal_cause(network, detected), report),
        reinitialise=reinitialise)


def _transfer_table(network: FomoUNet, detected: fomo_layout.FomoLayout | None) -> TransferTable:
    """What ``network`` takes from a FOMO25 checkpoint of layout ``detected``."""
    with_decoder = _takes_decoder(network)
    loads = build_key_table(network.n_stages, network.decoder_convs, with_decoder=with_decoder)
    if network.task_type == PRETRAINING:  # continued pretraining: the reconstruction conv is the checkpoint's too
        loads.update(_output_conv_pairs(network.n_stages))
    reinitialised = _output_conv_pairs(network.n_stages) if network.task_type == SEGMENTATION else {}
    # An image-level network takes no decoder: the checkpoint's (whatever its layout) is known but unused.
    # A network with a decoder takes the whole decoder, so any decoder key outside the table is unexpected.
    source_decoder_convs = network.decoder_convs if detected is None else detected.decoder_convs
    unused = {} if with_decoder else {**build_key_table(network.n_stages, source_decoder_convs, with_decoder=True),
                                       **_output_conv_pairs(network.n_stages)}
    note = f"not used by a {network.task_type} network"
    return TransferTable(loads=loads, stem_key=fomo_layout.STEM_WEIGHT, reinitialised=reinitialised,
                         reinitialised_note=OUTPUT_CONV_NOTE, unused={key: note for key in unused})


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


def _refusal_cause(network: FomoUNet, detected: fomo_layout.FomoLayout | None) -> str:
    """The likely reason a FOMO25 checkpoint does not fit ``network``."""
    if detected is None:
        return "not a FOMO UNet checkpoint (no encoder.in_conv stem)"
    if detected.starting_filters != network.starting_filters:
        return (f"the checkpoint has starting filters {detected.starting_filters} "
                f"({fomo_layout.architecture_name(detected.starting_filters)}) but the network has "
                f"{network.starting_filters} ({fomo_layout.architecture_name(network.starting_filters)})")
    if _takes_decoder(network) and detected.decoder_convs != network.decoder_convs:
        return (f"the checkpoint's decoder layout is {fomo_layout.decoder_layout_name(detected.decoder_convs)} "
                f"but the network has decoder_convs={network.decoder_convs}")
    return "the checkpoint does not match the network's layout"
