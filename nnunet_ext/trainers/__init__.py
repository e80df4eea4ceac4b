"""Trainers found by ``nnUNetv2_train ... -tr NAME`` and ``nnUNetv2_predict ... -tr NAME``.

nnU-Net finds them through ``nnUNet_extTrainer`` (set it with ``eval "$(fomo_env)"``), which points at
``nnunet_lookup/``: its one module re-exports :data:`TRAINERS`, every family trainer and its variants.
Importing this package also registers our normalisation with nnU-Net, so ``nnUNetv2_train`` and
``nnUNetv2_predict`` preprocess exactly as ``fomo_plan_and_preprocess`` did.
"""

from __future__ import annotations

from nnunet_ext.preprocessing.registration import register_with_nnunet

register_with_nnunet()

from nnunet_ext.trainers.base import FomoTrainerBase  # noqa: E402  (after the registration above)
from nnunet_ext.trainers.classification import (  # noqa: E402
    FomoClassificationTrainer,
    FomoClassificationTrainer_noSmoothing,
)
from nnunet_ext.trainers.pretraining import FomoPretrainTrainer, FomoPretrainTrainer_MaskedOnly  # noqa: E402
from nnunet_ext.trainers.regression import (  # noqa: E402
    FomoRegressionTrainer,
    FomoRegressionTrainer_L1,
    FomoRegressionTrainer_MirrorAll,
    FomoRegressionTrainer_MSE,
    FomoRegressionTrainer_Rotate,
    FomoRegressionTrainer_SoftLabel,
)
from nnunet_ext.trainers.segmentation import (  # noqa: E402
    FomoFinetuneTrainer,
    FomoFinetuneTrainer_DeepSupervision,
)
from nnunet_ext.trainers.variants import make_variants  # noqa: E402

#: Trainers that each get every variant of ``variants.make_variants`` (task trainers and their task-specific
#: variants, so that e.g. ``FomoRegressionTrainer_MSE_debug`` exists too).
TRAINER_FAMILIES: tuple[type[FomoTrainerBase], ...] = (
    FomoFinetuneTrainer,
    FomoFinetuneTrainer_DeepSupervision,
    FomoClassificationTrainer,
    FomoClassificationTrainer_noSmoothing,
    FomoRegressionTrainer,
    FomoRegressionTrainer_MSE,
    FomoRegressionTrainer_SoftLabel,
    FomoRegressionTrainer_L1,
    FomoRegressionTrainer_MirrorAll,
    FomoRegressionTrainer_Rotate,
    FomoPretrainTrainer,
    FomoPretrainTrainer_MaskedOnly,
)
#: Every trainer nnU-Net can be asked for, by class name.
TRAINERS: dict[str, type[FomoTrainerBase]] = {}
for _family in TRAINER_FAMILIES:
    TRAINERS[_family.__name__] = _family
    TRAINERS.update(make_variants(_family, module=__name__))
# Variants are generated, so they become attributes of this module here: nnU-Net's checkpoints name a trainer
# by class name only, and ``make_variants`` declares this module as theirs.
globals().update(TRAINERS)

__all__ = ["FomoTrainerBase", "TRAINERS", "TRAINER_FAMILIES", *TRAINERS]
