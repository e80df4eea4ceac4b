"""Where nnU-Net keeps a trained model, resolved from nnU-Net's own variables and naming (``-d -tr -p -c``)."""

from __future__ import annotations

from pathlib import Path

from nnunetv2.utilities.file_path_utilities import get_output_folder

from nnunet_ext.errors import FomoInputError

#: nnU-Net's defaults for ``nnUNetv2_predict`` and ``nnUNetv2_train``.
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
DEFAULT_PLANS = "nnUNetPlans"
DEFAULT_CONFIGURATION = "3d_fullres"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")


def trained_model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    """``$nnUNet_results/DatasetXXX_NAME/<trainer>__<plans>__<configuration>``, refusing one that does not exist."""
    try:
        folder = Path(get_output_folder(dataset, trainer, plans, configuration))
    except RuntimeError as e:  # nnU-Net: nnUNet_results unset, or no dataset with that id
        raise FomoInputError(str(e)) from None
    if not folder.is_dir():
        raise FomoInputError("no trained model here: check -d, -tr, -p and -c", folder)
    return folder
