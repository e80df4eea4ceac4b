"""The key table from FOMO26 / nnssl residual-encoder checkpoints to ``FomoResEncUNet``, and the transfer.

The table pairs each tensor of the spec (``resenc_layout``) in the checkpoint's naming with the same tensor in
DNA's naming, which is our network's; second names of a tensor are set aside first (reported, never loaded twice).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nnunet_ext.networks.resenc import FomoResEncUNet
from nnunet_ext.dataset_conversion.tasks import PRETRAINING, SEGMENTATION
from nnunet_ext.networks.task_network import DECODER_TASK_TYPES
from nnunet_ext.pretrained import resenc_layout
from nnunet_ext.pretrained.report import TransferReport
from nnunet_ext.pretrained.resenc_layout import NNSSL, ResEncLayout
from nnunet_ext.pretrained.transfer import TransferTable, finish_transfer, plan_transfer, refusal_text
from nnunet_ext.utils.files import PathLike

#: Why the segmentation output conv starts fresh.
OUTPUT_CONV_NOTE = "output conv re-initialised: the pretrained one reconstructs the 1 masked-image channel"
#: Why DNA's other seg_layers of a pretrained checkpoint are not taken.
DEEP_SUPERVISION_NOTE = "deep-supervision head of the pretraining network (never trained: pretraining has none)"
#: Keys of our own fine-tuned networks outside the encoder and decoder (the image-level head and its codings).
_NETWORK_PREFIXES = (resenc_layout.ENCODER_PREFIX, "decoder.")


def network_layout(network: FomoResEncUNet) -> ResEncLayout:
    """The spec of ``network``'s encoder and decoder (its input channels, outputs and sizes)."""
    return ResEncLayout(network.features_per_stage, network.blocks_per_stage, network.decoder_convs,
                        network.input_channels, network.num_classes)


def build_resenc_table(network: FomoResEncUNet, naming: str, source_decoder_convs: int) -> TransferTable:
    """What ``network`` takes from a checkpoint named by ``naming`` whose decoder has ``source_decoder_convs`` convs
    per stage (the whole decoder is reported unused by an image-level network, whatever its layout)."""
    ours = network_layout(network)
    source = ResEncLayout(ours.features, ours.blocks, source_decoder_convs, ours.input_channels, ours.output_channels)
    takes_decoder = network.task_type in DECODER_TASK_TYPES
    loaded = [*ours.encoder_layers(), *(ours.decoder_modules() if takes_decoder else [])]
    if network.task_type == PRETRAINING:  # continued pretraining: the reconstruction conv is the checkpoint's too
        loaded.append(ours.output_conv())
    table = TransferTable(loads=_pairs(loaded, naming), stem_key=resenc_layout.STEM_WEIGHT[naming],
                          reinitialised_note=OUTPUT_CONV_NOTE)
    if network.task_type == SEGMENTATION:
        table.reinitialised = _pairs([ours.output_conv()], naming)
    if not takes_decoder:
        note = f"not used by a {network.task_type} network"
        table.unused = {key: note for module in (*source.decoder_modules(), source.output_conv())
                        for key, _ in module.tensors(naming)}
    if naming == NNSSL:
        table.unused.update({key: DEEP_SUPERVISION_NOTE for module in source.deep_supervision_convs()
                             for key, _ in module.tensors(naming)})
    return table


def _pairs(modules: list, naming: str) -> dict[str, str]:
    """Checkpoint key (``naming``) -> our parameter name (DNA's naming) of every tensor of ``modules``."""
    return {source: ours for module in modules
            for (source, _), (ours, _) in zip(module.tensors(naming), module.tensors(NNSSL))}


def split_extras(source: Mapping[str, torch.Tensor], naming: str
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Set aside the keys of our own nnU-Net checkpoints outside the encoder and decoder (the image-level head of a
    fine-tuned network, in DNA's naming), with the reason; returns the rest and those."""
    if naming != NNSSL:
        return dict(source), {}
    extras = {key: "nnU-Net checkpoint key without a pretrained counterpart"
              for key in source if not key.startswith(_NETWORK_PREFIXES)}
    return {key: tensor for key, tensor in source.items() if key not in extras}, extras


def transfer_resenc_weights(network: FomoResEncUNet, state_dict: Mapping[str, torch.Tensor],
                            channel_adaptation: str, allow_partial: bool = False,
                            checkpoint: PathLike | None = None) -> TransferReport:
    """``key_mapping.transfer_fomo_weights`` for a ``FomoResEncUNet`` (same statuses, adaptation and refusals)."""
    detected = resenc_layout.detect_layout(state_dict)
    naming = NNSSL if detected is None else detected[0]
    source, extras = (dict(state_dict), {}) if detected is None else \
        resenc_layout.split_aliases(state_dict, detected[1], naming)
    source, own = split_extras(source, naming)
    extras.update(own)
    source_decoder_convs = network.decoder_convs if detected is None else detected[1].decoder_convs
    table = build_resenc_table(network, naming, source_decoder_convs)
    plan = plan_transfer(network, table, source, extras, channel_adaptation)
    ours = network_layout(network)

    def reinitialise() -> None:
        if network.task_type == SEGMENTATION:
            network.initialize(network.get_submodule(ours.output_conv().paths[NNSSL]))

    return finish_transfer(
        network, plan, channel_adaptation=channel_adaptation, allow_partial=allow_partial, checkpoint=checkpoint,
        network_description=describe_network(network),
        layout_description={} if detected is None else resenc_layout.describe(detected[1], naming),
        refusal_message=lambda report: refusal_text(_refusal_cause(network, detected), report),
        reinitialise=reinitialise)


def describe_network(network: FomoResEncUNet) -> dict[str, object]:
    """The network settings a report reader needs to judge the transfer."""
    return {"family": "resenc", "task_type": network.task_type, "features_per_stage": list(network.features_per_stage),
            "blocks_per_stage": list(network.blocks_per_stage), "decoder_convs": network.decoder_convs,
            "input_channels": network.input_channels, "num_classes": network.num_classes,
            "n_stages": network.n_stages}


def _refusal_cause(network: FomoResEncUNet, detected: tuple[str, ResEncLayout] | None) -> str:
    """The likely reason a checkpoint does not fit ``network``."""
    if detected is None:
        return ("not a residual-encoder U-Net checkpoint (no encoder.stem.conv1 / encoder.stem.convs.0 stem; a FOMO25 "
                "UNet checkpoint needs --model unet_b / unet_xl)")
    layout = detected[1]
    if (layout.features, layout.blocks) != (network.features_per_stage, network.blocks_per_stage):
        name = layout.model_name or "an unpublished size"
        return (f"the checkpoint is {name} (features {list(layout.features)}, blocks {list(layout.blocks)}) but the "
                f"network has features {list(network.features_per_stage)}, blocks {list(network.blocks_per_stage)}")
    if network.task_type in DECODER_TASK_TYPES and layout.decoder_convs != network.decoder_convs:
        return (f"the checkpoint has {layout.decoder_convs} conv(s) per decoder stage but the network has "
                f"decoder_convs={network.decoder_convs}")
    return "the checkpoint does not match the network's layout"
