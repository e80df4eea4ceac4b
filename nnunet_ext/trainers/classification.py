"""``FomoClassificationTrainer``: FOMO Task 1 (infarct yes / no) with the pretrained encoder and a pooling head.

Cross-entropy (with label smoothing) on the per-case class, class-balanced case sampling, modality dropout (a
missing sequence is a zero channel, see ``augmentation``), and AUROC on whole validation cases picking
``checkpoint_best.pth``; the shared case-level machinery is ``FomoCaseLevelTrainer``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION
from nnunet_ext.metrics.classification import classification_metrics
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_ext.trainers.augmentation import with_modality_dropout
from nnunet_ext.trainers.case_level import FomoCaseLevelTrainer
from nnunet_ext.trainers.sampling import class_balanced_probabilities, set_sampling_probabilities, wrapped_loader
from nnunet_ext.utils.linear_models import LinearMap

#: Label smoothing of the cross-entropy: with 21 training cases the network can memorise every label within a
#: few epochs; smoothed targets keep its logits bounded and its probabilities less overconfident.
LABEL_SMOOTHING = 0.1
#: Probability that a training sample loses one channel (never the first, DWI, which every subject has): about
#: twice the share of FOMO-like subjects that miss a sequence, so that the network learns what a zero channel is.
MODALITY_DROPOUT_PROBABILITY = 0.2
#: Channels never dropped.
ALWAYS_PRESENT_CHANNELS = (0,)
#: Index of the positive class (infarct present) among the network's logits.
POSITIVE_CLASS = 1


def positive_probability(logits: torch.Tensor) -> np.ndarray:
    """P(positive class) per case from logits ``[N, 2]`` (also for prediction outside the trainer)."""
    return torch.softmax(logits.float(), dim=1)[:, POSITIVE_CLASS].cpu().numpy()


class FomoClassificationTrainer(FomoCaseLevelTrainer):
    """Binary classification of whole cases; reports P(positive class) per case."""

    task_type: ClassVar[str] = CLASSIFICATION
    task_metric: ClassVar[str] = "auroc"
    selection_metric: ClassVar[str] = "val_auroc"
    selection_higher_is_better: ClassVar[bool] = True
    prediction_name: ClassVar[str] = "probability"
    label_smoothing: ClassVar[float] = LABEL_SMOOTHING

    def _build_loss(self) -> torch.nn.Module:
        return torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    @staticmethod
    def get_training_transforms(*args, **kwargs) -> ComposeTransforms:
        """nnU-Net's training augmentation, then modality dropout."""
        return with_modality_dropout(FomoCaseLevelTrainer.get_training_transforms(*args, **kwargs),
                                     MODALITY_DROPOUT_PROBABILITY, ALWAYS_PRESENT_CHANNELS)

    def get_dataloaders(self):
        """nnU-Net's loaders, the training one drawing both classes equally often (Task 1 is 13 / 8)."""
        train, val = super().get_dataloaders()
        case_ids = list(wrapped_loader(train).indices)
        set_sampling_probabilities(train, class_balanced_probabilities(case_ids, self.case_targets.lookup(case_ids)))
        return train, val

    def encode_targets(self, case_ids: list[str]) -> torch.Tensor:
        """Class indices ``[B]`` (long), as cross-entropy takes them."""
        return torch.from_numpy(self.case_targets.lookup(case_ids))

    def decode_outputs(self, outputs: torch.Tensor) -> np.ndarray:
        return positive_probability(outputs)

    def linear_probe_targets(self, case_ids: list[str]) -> np.ndarray:
        return self.case_targets.lookup(case_ids)

    def head_parameters(self, linear_map: LinearMap) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``-z/2`` and ``+z/2`` for the log-odds ``z`` of the positive class: their softmax is the
        logistic model's probability."""
        weight = torch.from_numpy(linear_map.weight).float() / 2
        bias = torch.tensor(linear_map.bias).float() / 2
        signs = torch.full((2,), -1.0)
        signs[POSITIVE_CLASS] = 1.0
        return signs[:, None] * weight[None], signs * bias

    def task_metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
        return classification_metrics(targets, predictions)


class FomoClassificationTrainer_noSmoothing(FomoClassificationTrainer):
    """Plain cross-entropy (the FOMO baseline's loss)."""

    label_smoothing: ClassVar[float] = 0.0
