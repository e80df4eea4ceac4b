"""The weight transfer every checkpoint family shares: plan each tensor from a key table, refuse or copy, report.

A family (``key_mapping`` for FOMO25's UNet, ``resenc_mapping`` for FOMO26's / nnssl's residual-encoder U-Net) only
writes its :class:`TransferTable`; deciding the status of every tensor, adapting the 1-channel stem, refusing a
checkpoint that does not fit before anything is copied, and the report are the same for all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from nnunet_ext.errors import FomoInputError
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
#: Input channels of every pretrained encoder (single-channel masked image modelling).
PRETRAINING_CHANNELS = 1
#: Axis of a conv weight [out, in, kx, ky, kz] that holds the input channels.
_IN_CHANNEL_AXIS = 1


@dataclass
class TransferTable:
    """What a network takes from a checkpoint, by the checkpoint's key names.

    ``loads``: source key -> our parameter, copied (the stem adapted to the input channels);
    ``reinitialised``: source key -> our parameter that is re-initialised on purpose (the segmentation output conv),
    with ``reinitialised_note``; ``unused``: known source keys the network does not take, with the reason;
    ``stem_key``: the source key of the 1-channel stem kernel.
    """

    loads: dict[str, str]
    stem_key: str
    reinitialised: dict[str, str] = field(default_factory=dict)
    reinitialised_note: str = ""
    unused: dict[str, str] = field(default_factory=dict)


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


def adapt_stem(weight: torch.Tensor, input_channels: int, strategy: str) -> torch.Tensor:
    """Turn the 1-channel pretrained stem kernel into one for ``input_channels`` (see CHANNEL_ADAPTATIONS)."""
    repeated = weight.repeat_interleave(input_channels, dim=_IN_CHANNEL_AXIS)
    if strategy == "average":
        return repeated / input_channels
    if strategy == "copy":
        return repeated
    first_only = torch.zeros_like(repeated)
    first_only[:, :1] = weight
    return first_only


def check_channel_adaptation(channel_adaptation: str) -> None:
    """Refuse an unknown stem adaptation."""
    if channel_adaptation not in CHANNEL_ADAPTATIONS:
        raise FomoInputError(f"channel adaptation must be one of {CHANNEL_ADAPTATIONS}, got {channel_adaptation!r}")


def plan_transfer(network: nn.Module, table: TransferTable, source: Mapping[str, torch.Tensor],
                  extras: Mapping[str, str], channel_adaptation: str) -> _TransferPlan:
    """Decide the status of every checkpoint tensor and network parameter; ``extras`` are source keys (with the
    reason) that the family set aside before, e.g. the heads of a fine-tuned network or second names of a tensor."""
    params = dict(network.named_parameters())
    plan = _TransferPlan()
    for source_key, our_name in table.loads.items():
        _plan_tensor(plan, source_key, source.get(source_key), our_name, params[our_name], channel_adaptation,
                     table.stem_key)
    for source_key, our_name in table.reinitialised.items():
        plan.add(REINITIALISED, source_key if source_key in source else None, our_name, source.get(source_key),
                 params[our_name], table.reinitialised_note)
    for source_key, tensor in source.items():
        if source_key in table.loads or source_key in table.reinitialised:
            continue
        if source_key in table.unused:
            plan.add(UNUSED, source_key, None, tensor, note=table.unused[source_key])
        else:
            plan.add(UNEXPECTED, source_key, None, tensor)
    for key, note in extras.items():
        plan.add(UNUSED, key, None, note=note)
    targeted = set(table.loads.values()) | set(table.reinitialised.values())
    for our_name, param in params.items():
        if our_name not in targeted:
            plan.add(REINITIALISED, None, our_name, target_param=param, note="no pretrained counterpart")
    return plan


def _plan_tensor(plan: _TransferPlan, source_key: str, tensor: torch.Tensor | None, our_name: str,
                 param: nn.Parameter, channel_adaptation: str, stem_key: str) -> None:
    """Plan one table entry: load it, adapt the stem, or record why it cannot be transferred."""
    if tensor is None:
        plan.add(MISSING, source_key, our_name, target_param=param)
    elif tensor.shape == param.shape:
        plan.add(LOADED, source_key, our_name, tensor, param)
        plan.copies.append((param, tensor))
    elif source_key == stem_key and _stem_adaptable(tensor, param):
        plan.add(ADAPTED, source_key, our_name, tensor, param,
                 f"1 -> {param.shape[_IN_CHANNEL_AXIS]} input channels ({channel_adaptation})")
        plan.copies.append((param, adapt_stem(tensor, param.shape[_IN_CHANNEL_AXIS], channel_adaptation)))
    else:
        plan.add(SHAPE_MISMATCH, source_key, our_name, tensor, param)


def _stem_adaptable(tensor: torch.Tensor, param: nn.Parameter) -> bool:
    """A 1-channel stem kernel that differs from ``param`` only in the input-channel axis."""
    return (tensor.shape[_IN_CHANNEL_AXIS] == PRETRAINING_CHANNELS
            and tensor.ndim == param.ndim
            and all(a == b for axis, (a, b) in enumerate(zip(tensor.shape, param.shape)) if axis != _IN_CHANNEL_AXIS))


def finish_transfer(network: nn.Module, plan: _TransferPlan, *, channel_adaptation: str, allow_partial: bool,
                    checkpoint: PathLike | None, network_description: dict[str, object],
                    layout_description: dict[str, object], refusal_message: Callable[[TransferReport], str],
                    reinitialise: Callable[[], None]) -> TransferReport:
    """Build the report; refuse (FomoInputError, nothing copied) a checkpoint that does not fit unless
    ``allow_partial``, and one that fits nowhere always; otherwise copy, then ``reinitialise`` what must start
    fresh. ``checkpoint`` (the file the state dict came from) is recorded with its sha256."""
    report = TransferReport(
        entries=plan.entries, channel_adaptation=channel_adaptation, network=network_description,
        checkpoint=None if checkpoint is None else str(checkpoint),
        sha256=None if checkpoint is None else sha256_of_file(checkpoint), allow_partial=allow_partial,
        layout=layout_description)
    if report.transferred == 0 or not (report.complete or allow_partial):
        raise FomoInputError(refusal_message(report), checkpoint)
    with torch.no_grad():
        for param, tensor in plan.copies:
            param.copy_(tensor)
        reinitialise()
    log.debug("%s", report.summary())
    return report


def refusal_text(cause: str, report: TransferReport) -> str:
    """Why the checkpoint does not fit (``cause`` first), then the report's summary and the way out."""
    if report.transferred == 0:
        return f"refusing the checkpoint: {cause}; no tensor could be transferred\n{report.summary()}"
    # No command offers a partial transfer (only the allow_partial argument does): name the real way out.
    return (f"refusing the checkpoint: {cause}\n{report.summary()}\n"
            "no command transfers part of a checkpoint: plan a network that matches it (fomo_inspect_checkpoint shows "
            "its layout and which tasks it can start), or train without it (the _Scratch trainer variants)")
