"""Which pretrained checkpoint a trainer starts from, loading it into the network, and the transfer report.

The checkpoint is named in the plans (``fomo_plan_and_preprocess --pretrained``) together with its sha256; the
environment variable :data:`PRETRAINED_ENV_VAR` overrides it for one run without re-planning (e.g. to compare
checkpoints, or to start from another fine-tuned model's ``checkpoint_final.pth``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from nnunet_ext.errors import FomoInputError
from nnunet_ext.preprocessing.fomo_plans import PretrainedSpec
from nnunet_ext.pretrained import TransferReport, load_fomo_state_dict, sha256_of_file, transfer_fomo_weights

#: Environment variable naming a checkpoint that replaces the one in the plans.
PRETRAINED_ENV_VAR = "FOMO_PRETRAINED"
#: File in the fold folder recording what was transferred from which checkpoint.
TRANSFER_REPORT_FILENAME = "pretrained_transfer_report.json"
#: Where the plans name the checkpoint (written by ``fomo_plan_and_preprocess``).
_PLANS_ORIGIN = "plans"


@dataclass(frozen=True)
class PretrainedSource:
    """A checkpoint to load, where it was named, and the sha256 the plans recorded for it (if any)."""

    path: Path
    origin: str
    expected_sha256: str | None = None


def resolve_pretrained_source(planned: PretrainedSpec | None) -> PretrainedSource:
    """The checkpoint named by :data:`PRETRAINED_ENV_VAR`, else the plans' ``fomo.pretrained`` entry.

    Refuses plans without a checkpoint: training from scratch has to be asked for (the ``_Scratch`` variants),
    it must not happen because a path was forgotten.
    """
    override = os.environ.get(PRETRAINED_ENV_VAR)
    if override:
        return PretrainedSource(Path(override), origin=f"${PRETRAINED_ENV_VAR}")
    if planned is None:
        raise FomoInputError(
            "the plans name no pretrained checkpoint: re-plan with `fomo_plan_and_preprocess --pretrained CKPT`, "
            f"set {PRETRAINED_ENV_VAR}=CKPT, or train a `_Scratch` trainer variant on purpose")
    return PretrainedSource(Path(planned.path), origin=_PLANS_ORIGIN, expected_sha256=planned.sha256)


def load_pretrained(network: nn.Module, source: PretrainedSource, channel_adaptation: str) -> TransferReport:
    """Transfer the checkpoint's weights into ``network``, adapting the stem by ``channel_adaptation`` (the
    plans'); the report records the file and its sha256.

    A checkpoint whose sha256 differs from the one recorded at planning is refused before anything is copied:
    the plans (patch size, normalisation, architecture) were made for that exact file.
    """
    if not source.path.is_file():
        raise FomoInputError(f"pretrained checkpoint (named by the {source.origin}) does not exist", source.path)
    sha256 = sha256_of_file(source.path)
    if source.expected_sha256 is not None and sha256 != source.expected_sha256:
        raise FomoInputError(
            f"pretrained checkpoint changed since planning (sha256 {sha256}, plans recorded "
            f"{source.expected_sha256}); re-plan, or point {PRETRAINED_ENV_VAR} at it to use it deliberately",
            source.path)
    state_dict, _ = load_fomo_state_dict(source.path)
    try:
        report = transfer_fomo_weights(network, state_dict, channel_adaptation)
    except FomoInputError as e:
        if e.path is not None:
            raise
        # transfer_fomo_weights got a state dict, not the file: name the file, and who named it
        raise FomoInputError(f"checkpoint named by the {source.origin}: {e}", source.path) from None
    # The file was hashed above; recording it here spares transfer_fomo_weights a second pass over it.
    return replace(report, checkpoint=str(source.path.resolve()), sha256=sha256)
