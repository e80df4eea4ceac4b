"""``FomoRegressionTrainer``: FOMO Task 3 (brain age) with the pretrained encoder and a pooling head.

Two target codings, both carried by the network as a module of buffers under ``network.target_standardiser``
(so every checkpoint holds them, and whatever rebuilds the network from the trainer class and loads a
checkpoint, nnU-Net's predictor and ``fomo_predict`` included, decodes outputs into years through the one method
``destandardise``):

- **soft label** (``FomoRegressionTrainer_SoftLabel``, the recipe of the SFCN brain-age model): fixed age bins
  (:data:`SOFT_LABEL_RANGE_YEARS`, :data:`SOFT_LABEL_BIN_WIDTH_YEARS` wide), the head has one logit per bin, the
  target is a Gaussian around the true age (:data:`SOFT_LABEL_SIGMA_YEARS`) and the loss the KL divergence of the
  softmax from it; the prediction is the expected age under the softmax (:class:`SoftLabelDecoder`);
- **standardised** (``FomoRegressionTrainer_L1``; ``_MSE``): one output regressing age standardised with the
  training fold's mean and std (the FOMO baseline regressed raw years, which puts the loss and its gradients on a
  scale of hundreds), L1 loss (the challenge ranks by absolute error) or MSE (the baseline's).

``FomoRegressionTrainer`` defaults to the standardised L1 coding and left-right mirroring. Neither the soft label
nor the running standardisation of the pooled features (:class:`RunningFeatureStandardiser`, attribute
``standardised_head_features``) earned the default: on IXI (4 mm, 2 folds, short CPU runs) the soft label tied with
L1 at the training mean's MAE, and the standardiser, 13.0 against 15.3 years in one single-fold A/B, blew up on
the synthetic demo's whole-volume test cases (fold MAEs of 175-224 years: running statistics from patches do not
transfer to whole volumes). ``benchmarks/ixi_recipe_search.py`` re-measures them. MAE in years on whole validation cases
picks ``checkpoint_best.pth``. Augmentation never rescales: apparent brain size (atrophy) is part of what predicts
age; mirroring is left-right only (see ``case_level``), ``FomoRegressionTrainer_MirrorAll`` mirrors every axis.
Nor does it rotate (``FomoRegressionTrainer_Rotate`` keeps nnU-Net's +-30 degrees): on the synthetic demo's fold 0
(30 training cases, 2 mm, 400 steps from scratch) the network fitted its rotated training cases (MAE 8.9 years on
them) and predicted the training mean on the validation cases (12.5 against the mean's 12.7); without rotation
it reached 8.9 there.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, REGRESSION
from nnunet_ext.errors import FomoInputError
from nnunet_ext.metrics.regression import regression_metrics
from nnunet_ext.preprocessing.fomo_plans import FomoPlansBlock
from nnunet_ext.trainers.base import FINETUNE_LR, unwrap_network
from nnunet_ext.trainers.case_level import FomoCaseLevelTrainer, MirrorAllAxes
from nnunet_ext.trainers.targets import TargetStandardiser
from nnunet_ext.utils.linear_models import LinearMap

#: Attribute of the network holding its target coding (:class:`TargetStandardiser` or :class:`SoftLabelDecoder`;
#: its buffers appear in the state dict under this prefix).
STANDARDISER_ATTRIBUTE = "target_standardiser"

#: Soft-label bins (years): fixed, so that the head's width comes from the trainer class and never from the data
#: (nnU-Net's predictor rebuilds the network from the plans and the class alone). 0-100 years covers every adult
#: and child cohort of brain-age work; 2-year bins (50 logits) and a Gaussian of 2 years follow SFCN's 1-year
#: bins and sigma at the coarser resolution a few hundred training cases support.
SOFT_LABEL_RANGE_YEARS = (0.0, 100.0)
SOFT_LABEL_BIN_WIDTH_YEARS = 2.0
SOFT_LABEL_SIGMA_YEARS = 2.0
#: The measured defaults of ``FomoRegressionTrainer`` (see the module docstring and the benchmark).
DEFAULT_SOFT_LABEL = False
DEFAULT_MIRROR_LEFT_RIGHT_ONLY = True
DEFAULT_STANDARDISED_HEAD_FEATURES = False
DEFAULT_ROTATE = False
#: The rotation range (radians) of a trainer that does not rotate.
NO_ROTATION = (0.0, 0.0)
#: Momentum of the running statistics of the pooled features (about the last 20 training batches) and the
#: variance floor of their standardisation.
FEATURE_STATS_MOMENTUM = 0.05
FEATURE_STATS_EPS = 1e-8
#: Peak AdamW learning rate when training from scratch (``_Scratch``): random weights need larger steps than
#: fine-tuning's :data:`~nnunet_ext.trainers.base.FINETUNE_LR`; measured on IXI (benchmarks/ixi_recipe_search.py).
SCRATCH_LR = 1e-3


def soft_label_bin_centres(age_range: tuple[float, float] = SOFT_LABEL_RANGE_YEARS,
                           width: float = SOFT_LABEL_BIN_WIDTH_YEARS) -> torch.Tensor:
    """Centres of the equal-width bins tiling ``age_range``."""
    low, high = age_range
    n_bins = int(round((high - low) / width))
    return low + width * (torch.arange(n_bins, dtype=torch.float32) + 0.5)


class SoftLabelDecoder(TargetStandardiser):
    """Soft-label coding of a real target: Gaussian targets over fixed bins, expected value as the prediction.

    A :class:`TargetStandardiser` (the training fold's mean and std, fitted the same way, for the
    "predict the training mean" reference) whose :meth:`destandardise` turns the network's bin logits into the
    expected value: the one decoding path of every regression network, whatever its coding.
    """

    def __init__(self, bin_centres: torch.Tensor, sigma: float = SOFT_LABEL_SIGMA_YEARS) -> None:
        super().__init__()
        self.register_buffer("bin_centres", bin_centres.float().clone())
        self.register_buffer("sigma", torch.tensor(float(sigma)))

    @property
    def n_bins(self) -> int:
        return int(self.bin_centres.numel())

    def check_covered(self, values: np.ndarray) -> None:
        """Refuse targets outside the bins: the expected value over the bins could never reach them."""
        width = float(self.bin_centres[1] - self.bin_centres[0])
        low, high = float(self.bin_centres[0]) - width / 2, float(self.bin_centres[-1]) + width / 2
        outside = values[(values < low) | (values > high)]
        if outside.size:
            raise FomoInputError(f"{outside.size} target(s) (e.g. {outside[0]}) lie outside the soft-label bins "
                                 f"[{low}, {high}]: use FomoRegressionTrainer_L1")

    def soft_targets(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, n_bins]`` distributions: a Gaussian around each value ``[B, 1]``, normalised over the bins."""
        log_density = -0.5 * ((values.float() - self.bin_centres) / self.sigma) ** 2
        return torch.softmax(log_density, dim=-1)

    def prior_logits(self) -> torch.Tensor:
        """Log-probabilities ``[n_bins]`` of a Gaussian with the fitted mean and std: as the head's initial bias,
        the untrained network predicts the training mean (as the standardised coding's zero output does), not
        the middle of the bins."""
        return torch.log_softmax(-0.5 * ((self.bin_centres - self.mean) / self.std) ** 2, dim=-1)

    def destandardise(self, values: torch.Tensor) -> torch.Tensor:
        """The expected value ``[..., 1]`` of the bins under the softmax of the logits ``[..., n_bins]``."""
        probabilities = torch.softmax(values.float(), dim=-1)
        return (probabilities * self.bin_centres).sum(dim=-1, keepdim=True)


class SoftLabelKLLoss(nn.Module):
    """KL divergence of the softmax of the logits from the soft targets, averaged over the batch."""

    def forward(self, logits: torch.Tensor, target_distributions: torch.Tensor) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits.float(), dim=-1), target_distributions.float(), reduction="batchmean")


class RunningFeatureStandardiser(nn.Module):
    """z-scores the pooled features with running (EMA) statistics of the training batches, in training and at
    inference alike.

    Pooled instance-normalised activations vary by only 1-3% between subjects (measured on IXI with a randomly
    initialised encoder, while correlating with age at |r| up to 0.6): an unscaled linear head needs weights ~100x
    its initialisation to read them, which AdamW's steps of ~lr take far more than a CPU budget's few hundred
    steps to reach. Standardising them makes that variation O(1) from the first step. Batch statistics (batch
    norm) would be useless with nnU-Net's batch of 2; the running ones are buffers, so checkpoints carry them.
    """

    def __init__(self, num_features: int, momentum: float = FEATURE_STATS_MOMENTUM, eps: float = FEATURE_STATS_EPS):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                batch = features.detach().float()
                mean, var = batch.mean(0), batch.var(0, unbiased=False)
                if self.num_batches_tracked == 0:
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
                else:
                    self.running_mean.lerp_(mean, self.momentum)
                    # the variance around the running mean, so that batches of 2 still estimate the spread
                    self.running_var.lerp_(var + (mean - self.running_mean) ** 2, self.momentum)
                self.num_batches_tracked += 1
        return (features - self.running_mean) / torch.sqrt(self.running_var + self.eps)


class StandardiseThenDropout(nn.Module):
    """Takes the place of a pooling head's ``dropout``, which sits between the pooling and the linear layer:
    standardises the pooled features (:class:`RunningFeatureStandardiser`), then applies the head's dropout.

    Replacing that one module works whatever pooling the head does (``heads.PoolingHead``'s options).
    """

    def __init__(self, num_features: int, dropout: float):
        super().__init__()
        self.feature_norm = RunningFeatureStandardiser(num_features)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.feature_norm(features))


def standardise_head_features(network: nn.Module) -> None:
    """Standardise the pooled features of ``network``'s pooling head before its dropout and linear layer."""
    head = network.head
    head.dropout = StandardiseThenDropout(head.linear.in_features, head.dropout.p)


def standardiser_of(network: nn.Module) -> TargetStandardiser:
    """The target coding of a regression network built by :class:`FomoRegressionTrainer` (also wrapped)."""
    return getattr(unwrap_network(network), STANDARDISER_ATTRIBUTE)


def predicted_values(network: nn.Module, outputs: torch.Tensor) -> np.ndarray:
    """Per-case values in the target's unit (years) from ``network``'s outputs ``[N, num_outputs]``
    (also for prediction outside the trainer: the network carries its target coding)."""
    standardiser = standardiser_of(network)
    return standardiser.destandardise(outputs.float().to(standardiser.mean.device))[:, 0].cpu().numpy()


def restrict_spatial_augmentation(transforms: ComposeTransforms, rotate: bool) -> ComposeTransforms:
    """Turn off the random scaling, and unless ``rotate`` the rotation, of every spatial transform in nnU-Net's
    training pipeline (in place)."""
    spatial = [t for t in transforms.transforms if isinstance(t, SpatialTransform)]
    if not spatial:
        raise ValueError("nnU-Net's training transforms hold no SpatialTransform to restrict")
    for transform in spatial:
        transform.p_scaling = 0
        if not rotate:
            transform.p_rotation = 0
    return transforms


class FomoRegressionTrainer(FomoCaseLevelTrainer):
    """Regression of one value per case (age in years); reports the value per case.

    Class attributes (the recipe; variants override them):
        soft_label: soft-label bins with a KL loss (True) or one standardised output with L1 (False).
        mirror_left_right_only: mirroring augmentation / TTA along left-right only (see ``case_level``).
        head_pool_levels, head_dropout: the pooling head, overriding the plans' ``arch_kwargs`` (None: the plans').
        standardised_head_features: z-score the pooled features with running statistics before the head's linear
            layer (:class:`RunningFeatureStandardiser`).
        rotate: nnU-Net's random rotation in the training augmentation (scaling is always off).
        scratch_learning_rate: peak learning rate of ``_Scratch`` runs (fine-tuning keeps the base's).
    """

    task_type: ClassVar[str] = REGRESSION
    task_metric: ClassVar[str] = "mae"
    selection_metric: ClassVar[str] = "val_mae"
    selection_higher_is_better: ClassVar[bool] = False
    soft_label: ClassVar[bool] = DEFAULT_SOFT_LABEL
    mirror_left_right_only: ClassVar[bool] = DEFAULT_MIRROR_LEFT_RIGHT_ONLY
    head_pool_levels: ClassVar[Optional[tuple[int, ...]]] = None
    head_dropout: ClassVar[Optional[float]] = None
    standardised_head_features: ClassVar[bool] = DEFAULT_STANDARDISED_HEAD_FEATURES
    rotate: ClassVar[bool] = DEFAULT_ROTATE
    scratch_learning_rate: ClassVar[float] = SCRATCH_LR

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        if self.head_from_linear_probe and self.starts_from_pretrained and (
                self.soft_label or self.standardised_head_features):
            raise TypeError(f"{type(self).__name__}: a head started from a linear probe needs one output reading the "
                            "raw pooled features (soft_label and standardised_head_features off)")
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = FINETUNE_LR if self.starts_from_pretrained else self.scratch_learning_rate

    @property
    def prediction_name(self) -> str:
        """``predicted_age`` for Task 3 (from dataset.json's ``fomo.target_name``)."""
        return f"predicted_{self.dataset_json[FOMO_KEY]['target_name']}"

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' ``FomoUNet`` with this class's head and target coding attached.

        A classmethod, called with nnU-Net's arguments on the class (predictor) or the instance (training), so
        that the recipe's class attributes shape the network: one output (standardised) or one logit per
        soft-label bin, and the head options. ``num_output_channels`` (nnU-Net's count of brain-mask labels)
        is not an output count here.
        """
        fomo = FomoPlansBlock.from_configuration(configuration_manager.configuration)
        if fomo.task_type != REGRESSION:
            raise FomoInputError(f"{cls.__name__} trains regression tasks, these plans describe {fomo.task_type}")
        coding = SoftLabelDecoder(soft_label_bin_centres()) if cls.soft_label else TargetStandardiser()
        num_outputs = coding.n_bins if cls.soft_label else fomo.num_outputs
        arch_kwargs = dict(configuration_manager.network_arch_init_kwargs)
        if cls.head_pool_levels is not None:
            arch_kwargs["head_pool_levels"] = list(cls.head_pool_levels)
        if cls.head_dropout is not None:
            arch_kwargs["head_dropout"] = cls.head_dropout
        network = get_network_from_plans(configuration_manager.network_arch_class_name, arch_kwargs,
                                         configuration_manager.network_arch_init_kwargs_req_import,
                                         num_input_channels, num_outputs, allow_init=True,
                                         deep_supervision=enable_deep_supervision)
        if cls.standardised_head_features:
            standardise_head_features(network)
        network.add_module(STANDARDISER_ATTRIBUTE, coding)
        return network

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """The case-level settings; without rotation (and never scaling) the loader crops the patch itself, not
        the larger field nnU-Net reserves for rotating and zooming out."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if not self.rotate:
            rotation, initial_patch_size = NO_ROTATION, tuple(self.configuration_manager.patch_size)
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    @classmethod
    def get_training_transforms(cls, *args, **kwargs) -> ComposeTransforms:
        """nnU-Net's training augmentation without scaling, and without rotation unless :attr:`rotate`
        (intensity augmentation and mirroring stay)."""
        return restrict_spatial_augmentation(FomoCaseLevelTrainer.get_training_transforms(*args, **kwargs),
                                             cls.rotate)

    def _build_loss(self) -> nn.Module:
        return SoftLabelKLLoss() if self.soft_label else nn.L1Loss()

    def fit_target_coding(self) -> None:
        """Fit the target statistics on this fold's training cases."""
        train_keys, _ = self.do_split()
        coding = standardiser_of(self.network)
        values = self.case_targets.lookup(train_keys)
        if isinstance(coding, SoftLabelDecoder):
            coding.check_covered(values)
        coding.fit(values)
        if isinstance(coding, SoftLabelDecoder):
            with torch.no_grad():
                unwrap_network(self.network).head.linear.bias.copy_(coding.prior_logits())
        self.print_to_log_file(f"Target statistics of the {len(train_keys)} training cases: "
                               f"mean {coding.mean.item():.3f}, std {coding.std.item():.3f} "
                               f"({type(coding).__name__})")

    def linear_probe_targets(self, case_ids: list[str]) -> np.ndarray:
        """The standardised targets: the head's one output."""
        values = torch.from_numpy(self.case_targets.lookup(case_ids)).float()[:, None]
        return standardiser_of(self.network).standardise(values.to(self.device))[:, 0].cpu().double().numpy()

    def head_parameters(self, linear_map: LinearMap) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(linear_map.weight)[None].float(), torch.tensor([linear_map.bias]).float()

    def encode_targets(self, case_ids: list[str]) -> torch.Tensor:
        """The loss's targets: standardised values ``[B, 1]`` or soft labels ``[B, n_bins]``."""
        values = torch.from_numpy(self.case_targets.lookup(case_ids)).float()[:, None].to(self.device)
        coding = standardiser_of(self.network)
        if isinstance(coding, SoftLabelDecoder):
            return coding.soft_targets(values)
        return coding.standardise(values)

    def decode_outputs(self, outputs: torch.Tensor) -> np.ndarray:
        return predicted_values(self.network, outputs)

    def task_metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
        """Regression metrics plus the MAE of always predicting the training mean, the bar to beat."""
        training_mean = standardiser_of(self.network).mean.item()
        return {**regression_metrics(targets, predictions),
                "mae_of_training_mean": float(np.mean(np.abs(targets - training_mean)))}


class FomoRegressionTrainer_SoftLabel(FomoRegressionTrainer):
    """Soft-label bins, KL loss, expected value (SFCN's recipe), whatever the default is; the head starts as the
    training mean's prior (a linear probe predicts one value, not a distribution over the bins)."""

    soft_label: ClassVar[bool] = True
    head_from_linear_probe: ClassVar[bool] = False


class FomoRegressionTrainer_L1(FomoRegressionTrainer):
    """One output, L1 loss on the training fold's standardised targets."""

    soft_label: ClassVar[bool] = False


class FomoRegressionTrainer_MSE(FomoRegressionTrainer_L1):
    """Mean squared error on the standardised targets (the FOMO baseline's loss, on raw years there)."""

    def _build_loss(self) -> nn.Module:
        return nn.MSELoss()


class FomoRegressionTrainer_Rotate(FomoRegressionTrainer):
    """nnU-Net's random rotation (+-30 degrees) in the training augmentation, whatever the default is."""

    rotate: ClassVar[bool] = True


class FomoRegressionTrainer_MirrorAll(FomoRegressionTrainer):
    """Mirroring along every axis (nnU-Net's default) instead of left-right only."""

    # an attribute rather than the MirrorAllAxes mixin: a (mixin, family) class is what make_variants generates
    mirror_left_right_only: ClassVar[bool] = MirrorAllAxes.mirror_left_right_only
