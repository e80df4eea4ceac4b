"""``FomoRegressionTrainer``: FOMO Task 3 (brain age) with the pretrained encoder and a pooling head.

The network regresses age standardised with the training fold's mean and std (the FOMO baseline regressed raw
years, which puts the loss and its gradients on a scale of hundreds); the statistics are buffers of the
network (``network.target_standardiser``), so every checkpoint carries them and predictions come back in
years. L1 loss by default (the challenge ranks by absolute error), MSE in ``FomoRegressionTrainer_MSE``;
MAE in years on whole validation cases picks ``checkpoint_best.pth``. Augmentation never rescales: apparent
brain size (atrophy) is part of what predicts age.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, REGRESSION
from nnunet_ext.evaluation.regression import regression_metrics
from nnunet_ext.trainers.base import FomoTrainerBase, unwrap_network
from nnunet_ext.trainers.case_level import FomoCaseLevelTrainer
from nnunet_ext.trainers.targets import TargetStandardiser

#: Attribute of the network holding its :class:`TargetStandardiser` (its buffers appear in the state dict
#: under this prefix).
STANDARDISER_ATTRIBUTE = "target_standardiser"


def standardiser_of(network: nn.Module) -> TargetStandardiser:
    """The target standardiser of a regression network built by :class:`FomoRegressionTrainer` (also wrapped)."""
    return getattr(unwrap_network(network), STANDARDISER_ATTRIBUTE)


def predicted_values(network: nn.Module, outputs: torch.Tensor) -> np.ndarray:
    """Per-case values in the target's unit (years) from ``network``'s standardised outputs ``[N, 1]``
    (also for prediction outside the trainer: the network carries its standardiser)."""
    standardiser = standardiser_of(network)
    return standardiser.destandardise(outputs.float().to(standardiser.mean.device))[:, 0].cpu().numpy()


def without_scaling(transforms: ComposeTransforms) -> ComposeTransforms:
    """Turn off the random scaling of every spatial transform in nnU-Net's training pipeline (in place)."""
    spatial = [t for t in transforms.transforms if isinstance(t, SpatialTransform)]
    if not spatial:
        raise ValueError("nnU-Net's training transforms hold no SpatialTransform to turn scaling off in")
    for transform in spatial:
        transform.p_scaling = 0
    return transforms


class FomoRegressionTrainer(FomoCaseLevelTrainer):
    """Regression of one value per case (age in years) on standardised targets; reports the value per case."""

    task_type: ClassVar[str] = REGRESSION
    task_metric: ClassVar[str] = "mae"
    selection_metric: ClassVar[str] = "val_mae"
    selection_higher_is_better: ClassVar[bool] = False

    @property
    def prediction_name(self) -> str:
        """``predicted_age`` for Task 3 (from dataset.json's ``fomo.target_name``)."""
        return f"predicted_{self.dataset_json[FOMO_KEY]['target_name']}"

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The base's network with an (unfitted) :class:`TargetStandardiser` attached."""
        network = FomoTrainerBase.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                              num_output_channels, enable_deep_supervision)
        network.add_module(STANDARDISER_ATTRIBUTE, TargetStandardiser())
        return network

    @staticmethod
    def get_training_transforms(*args, **kwargs) -> ComposeTransforms:
        """nnU-Net's training augmentation without scaling (rotation, intensity and mirroring stay)."""
        return without_scaling(FomoCaseLevelTrainer.get_training_transforms(*args, **kwargs))

    def _build_loss(self) -> nn.Module:
        return nn.L1Loss()

    def on_train_start(self) -> None:
        """Fit the standardiser on this fold's training cases, unless ``--c`` restored a trained network."""
        super().on_train_start()
        if self.current_epoch == 0:
            train_keys, _ = self.do_split()
            standardiser = standardiser_of(self.network)
            standardiser.fit(self.case_targets.lookup(train_keys))
            self.print_to_log_file(f"Targets standardised with the {len(train_keys)} training cases: "
                                   f"mean {standardiser.mean.item():.3f}, std {standardiser.std.item():.3f}")

    def encode_targets(self, case_ids: list[str]) -> torch.Tensor:
        """Standardised targets ``[B, 1]``, the shape of the network's output."""
        values = torch.from_numpy(self.case_targets.lookup(case_ids)).float()[:, None]
        return standardiser_of(self.network).standardise(values.to(self.device))

    def decode_outputs(self, outputs: torch.Tensor) -> np.ndarray:
        return predicted_values(self.network, outputs)

    def task_metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
        """Regression metrics plus the MAE of always predicting the training mean, the bar to beat."""
        training_mean = standardiser_of(self.network).mean.item()
        return {**regression_metrics(targets, predictions),
                "mae_of_training_mean": float(np.mean(np.abs(targets - training_mean)))}


class FomoRegressionTrainer_MSE(FomoRegressionTrainer):
    """Mean squared error on the standardised targets (the FOMO baseline's loss, on raw years there)."""

    def _build_loss(self) -> nn.Module:
        return nn.MSELoss()
