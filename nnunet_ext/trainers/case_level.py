"""``FomoCaseLevelTrainer``: nnU-Net training for tasks with one target per case (Tasks 1 and 3).

nnU-Net's machinery is built for voxel labels; this class keeps its data pipeline and changes what a batch
is trained and validated against:

- **Targets.** nnU-Net's batches carry the brain mask as ``target`` (``labelsTr`` of these tasks) and the case
  ids as ``keys``; the per-case target (class or age) is looked up from dataset.json's ``fomo.targets`` by
  those ids and replaces the mask before nnU-Net's ``train_step`` runs. The network (encoder + pooling head,
  no decoder) has no deep supervision; the base class already turns it off.
- **Crops.** Patches have the plans' patch size, which ``fomo_plan_and_preprocess`` chooses to cover most of a
  brain, placed at random inside the volume, which nnU-Net's preprocessing cropped to the brain's bounding box:
  a lesion that defines the label is rarely cropped out. nnU-Net's foreground oversampling is off: with the
  brain mask as the only label it would centre patches on edge voxels as often as on central ones, putting
  up to half of a patch outside the brain.
- **Mirroring.** nnU-Net mirrors training patches (and test-time inputs) along every axis. ``fomo_convert``
  stores every case in RAS, nnU-Net's readers return its voxels as ``[z, y, x]`` = [inferior-superior,
  posterior-anterior, left-right] arrays and the FOMO plans keep that order (``transpose_forward`` = identity),
  so the array axes are the same anatomical axes in every case. A left-right flip gives a plausible brain (the
  hemispheres are nearly symmetric) and keeps a case-level label; an upside-down or back-to-front brain is
  nothing the encoder ever saw. With :attr:`FomoCaseLevelTrainer.mirror_left_right_only` training and test-time
  augmentation mirror the left-right axis only (:func:`left_right_axis`). The regression trainer does so (chosen
  by measurement on IXI, see ``trainers/regression.py``); classification keeps nnU-Net's every-axis mirroring
  until measured (the ``MirrorAllAxes`` mixin restores it where a subclass switched it off).
- **Head.** Before the first step the head's linear layer is set to a linear model fitted in closed form on
  the starting encoder's pooled features of the training cases (ridge or logistic regression with the penalty
  chosen inside the training cases, as ``fomo_linear_probe`` fits them): fine-tuning then starts from what a linear
  probe of the encoder predicts instead of from a random head, which at a fine-tuning rate needs many steps just to
  learn to read the features, while its gradients disturb the pretrained encoder (linear probing then
  fine-tuning, "LP-FT", Kumar et al., ICLR 2022). It costs one forward pass per training case. ``_Scratch`` runs
  keep the random head: a probe of a random encoder carries little over, and since pooled features differ by
  only a few percent between cases its weights are large, which made training at the scratch rate swing (IXI
  brain age: validation MAEs of single folds up to 41 years after an epoch, against 15 for the training mean);
  so do the ``_cpuDemo`` variants, which train at from-scratch rates (``trainers/variants.py``).
- **Validation.** Every epoch, each validation case's whole preprocessed volume (read from disk once, at the
  start of training, and kept in memory) goes through the network (``case_validation``); the loss and the task
  metric (:attr:`task_metric`) on those predictions are logged in nnU-Net's logger (and so in wandb when
  ``nnUNet_wandb_enabled`` is set), the log file and ``progress_<metric>.png``, and the metric picks
  ``checkpoint_best.pth`` through the base class.
  nnU-Net's random-patch validation batches are not drawn.
- **``--val``.** :meth:`perform_actual_validation` writes per-case predictions and a ``summary.json`` with the
  task metrics (with mirroring test-time augmentation) to ``fold_X/validation/``.
- **DDP.** Each rank predicts its share of the validation cases through the unwrapped network (a forward through
  the DDP wrapper would broadcast buffers to ranks not calling it; uncompiled, since every case has its own shape,
  for which ``torch.compile`` would compile again), the raw outputs are gathered to every rank
  and scored there from the same numbers, so every rank logs the same metric and takes the same best-epoch and
  early-stopping decisions; rank 0 alone writes the files.

Subclasses define the target encoding, the loss (``_build_loss``), the decoding of outputs and the metrics.
"""

from __future__ import annotations

import math
import random
import time
from os.path import join
from typing import Any, ClassVar, NamedTuple, Optional, Sequence

import numpy as np
import torch

from nnunet_ext.errors import FomoInputError
from nnunet_ext.trainers.base import FomoTrainerBase, broadcast_tensors, gathered, rank, unwrap_network, world_size
from nnunet_ext.trainers.case_validation import (
    iter_volumes,
    plot_metric_history,
    load_volumes,
    pooled_features_whole_case,
    predict_cases,
    prediction_records,
    write_validation_outputs,
)
from nnunet_ext.trainers.targets import CaseTargets
from nnunet_ext.utils.linear_models import LinearMap, as_linear_map, fit_linear_model

#: Fraction of each batch centred on a foreground (= brain) voxel: none (see "Crops" above).
NO_FOREGROUND_OVERSAMPLING = 0.0
#: Mirroring test-time augmentation of the per-epoch validation. Off: it would multiply the cost of every
#: epoch's validation by 2 ** (number of axes); ``--val`` (perform_actual_validation) uses it.
EPOCH_VALIDATION_MIRROR_AXES = None
#: Seed (plus the fold) of the subset of ``epoch_validation_cases``.
EPOCH_VALIDATION_SEED = 0
#: Array axis of left-right in images stored in RAS as nnU-Net's readers return them (SimpleITKIO and NibabelIO
#: both give ``[z, y, x]`` arrays), before the plans' ``transpose_forward``.
RAW_LEFT_RIGHT_AXIS = 2
#: nnU-Net's end-of-epoch code prints and plots its pseudo-Dice; a case-level task has none, so it is logged
#: as NaN (matplotlib leaves NaN points out of progress.png, and NaN never beats the base's best checkpoint).
NO_PSEUDO_DICE = float("nan")
#: Seed of the inner folds choosing the penalty of the head's initial linear model (classification).
LINEAR_PROBE_SEED = 0


def left_right_axis(transpose_forward: Sequence[int]) -> int:
    """The spatial axis of nnU-Net's preprocessed arrays that runs left-right, for RAS-stored images.

    nnU-Net's preprocessing moves raw axis ``transpose_forward[k]`` to axis ``k``.
    """
    return list(transpose_forward).index(RAW_LEFT_RIGHT_AXIS)


class CaseValidation(NamedTuple):
    """One whole-case validation: raw outputs, targets, decoded predictions (aligned) and the task metrics."""

    case_ids: list[str]
    outputs: torch.Tensor
    targets: np.ndarray
    predictions: np.ndarray
    metrics: dict[str, Any]


class FomoCaseLevelTrainer(FomoTrainerBase):
    """Base of the classification and regression trainers (see the module docstring).

    Class attributes for subclasses (besides the base's ``task_type`` and ``selection_metric``, the logger key
    under which the per-epoch value of ``task_metric`` is logged):
        task_metric: the key of :meth:`task_metrics`' result that validates each epoch (``auroc``, ``mae``).
        prediction_name: column of ``predictions.csv`` holding the prediction (e.g. ``probability``).
        mirror_left_right_only: mirror (training augmentation and test-time augmentation) along the left-right
            axis only, instead of nnU-Net's every axis (see "Mirroring" in the module docstring).
        epoch_validation_cases: None: every validation case is scored after every epoch; N: a fixed, seeded
            subset of N of them (where a CPU budget makes the per-epoch validation the bulk of an epoch, as
            nnU-Net's own per-epoch validation samples patches). The final validation always scores every case.
        head_from_linear_probe: before the first step of a run from pretrained weights, set the head's linear
            layer to the linear model (ridge or logistic regression, ``utils/linear_models.py``) fitted on the
            training cases' pooled features of the pretrained encoder ("Head" in the module docstring).
    """

    task_metric: ClassVar[str]
    prediction_name: str
    mirror_left_right_only: ClassVar[bool] = False
    epoch_validation_cases: Optional[int] = None
    head_from_linear_probe: ClassVar[bool] = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.case_targets = CaseTargets.from_dataset_json(dataset_json, self.task_type)
        self.oversample_foreground_percent = NO_FOREGROUND_OVERSAMPLING
        self.validation_volumes: dict[str, np.ndarray] = {}  # -> on_train_start

    # -- what subclasses define -------------------------------------------------------------------------

    def encode_targets(self, case_ids: list[str]) -> torch.Tensor:
        """The loss's targets for ``case_ids`` (a batch's ``keys``)."""
        raise NotImplementedError

    def decode_outputs(self, outputs: torch.Tensor) -> np.ndarray:
        """Per-case predictions (probability, age) from raw network outputs ``[N, num_outputs]``."""
        raise NotImplementedError

    def task_metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
        """Every metric of the task for one set of predictions (written to ``summary.json``)."""
        raise NotImplementedError

    # -- training -------------------------------------------------------------------------------------

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's augmentation settings, with the mirror axes restricted to left-right unless told otherwise.

        nnU-Net's training pipeline mirrors along the returned axes, and ``inference_allowed_mirroring_axes``
        (saved in every checkpoint) is what test-time augmentation uses, here and in nnU-Net's predictor.
        """
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if self.mirror_left_right_only:
            mirror_axes = (left_right_axis(self.plans_manager.transpose_forward),)
            self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def on_train_start(self) -> None:
        """nnU-Net's start (and the pretrained weights); then, unless ``--c`` restored a trained network, the target
        coding and the head's closed-form start."""
        super().on_train_start()
        self.validation_volumes = load_volumes(self._validation_dataset(self.epoch_validation_cases))
        # Validation runs on whole cases in on_validation_epoch_end; nnU-Net's patch batches would only cost time.
        self.num_val_iterations_per_epoch = 0
        if self.current_epoch == 0:
            self.fit_target_coding()
            if self.head_from_linear_probe and self.starts_from_pretrained:
                self._initialise_head_from_linear_probe()

    def fit_target_coding(self) -> None:
        """Fit whatever the targets' coding learns from this fold's training cases (default: nothing)."""

    def _initialise_head_from_linear_probe(self) -> None:
        """Set the head's linear layer to the linear model fitted on the training cases' pooled features.

        Each rank embeds its share of the training cases (whole volumes, as validation reads them); the features
        are gathered and every rank fits the same model on them in case order, and rank 0's result is broadcast.
        """
        started = time.monotonic()
        network = unwrap_network(self.network)
        train_keys, _ = self.do_split()
        was_training = network.training
        network.eval()
        dataset = self._cases_dataset(sorted(train_keys)[rank()::world_size()])
        mine = {case: pooled_features_whole_case(network, torch.from_numpy(volume).to(self.device)).cpu()
                for case, volume in iter_volumes(dataset)}
        network.train(was_training)
        by_case = {case: features for part in gathered(mine) for case, features in part.items()}
        case_ids = sorted(by_case)
        features = torch.stack([by_case[case] for case in case_ids]).numpy().astype(np.float64)
        try:
            model = fit_linear_model(self.task_type, features, self.linear_probe_targets(case_ids), LINEAR_PROBE_SEED)
        except FomoInputError as refusal:
            self.print_to_log_file(f"The head keeps its random initialisation: {refusal}")
            return
        linear_map = as_linear_map(self.task_type, model)
        weight, bias = self.head_parameters(linear_map)
        with torch.no_grad():
            network.head.linear.weight.copy_(weight)
            network.head.linear.bias.copy_(bias)
        if self.is_ddp:
            broadcast_tensors(network.head.linear.parameters())
        self.print_to_log_file(f"Head initialised from a linear probe of the {len(case_ids)} training cases' pooled "
                               f"features ({features.shape[1]}, penalty {linear_map.penalty:.3g}) in "
                               f"{time.monotonic() - started:.1f} s")

    def linear_probe_targets(self, case_ids: list[str]) -> np.ndarray:
        """What the head's linear model is fitted to for ``case_ids``: classes, or values in the head's coding."""
        raise NotImplementedError

    def head_parameters(self, linear_map: LinearMap) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's linear layer (weight ``[outputs, features]``, bias ``[outputs]``) computing ``linear_map``."""
        raise NotImplementedError

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step, against the cases' targets instead of their brain masks."""
        return super().train_step({**batch, "target": self.encode_targets(list(batch["keys"]))})

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        """Validate on every whole validation case: log the loss and ``selection_metric``."""
        result = self._validate(self.validation_volumes, EPOCH_VALIDATION_MIRROR_AXES)
        loss = self.loss(result.outputs.to(self.device), self.encode_targets(result.case_ids).to(self.device))
        metric = result.metrics[self.task_metric]
        self.logger.log("val_losses", loss.item(), self.current_epoch)
        self.logger.log(self.selection_metric, metric, self.current_epoch)
        self.logger.log("mean_fg_dice", NO_PSEUDO_DICE, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [], self.current_epoch)
        self.print_to_log_file(f"{self.selection_metric} ({len(result.case_ids)} whole cases): {metric:.4f}")

    def plot_progress(self) -> None:
        """nnU-Net's ``progress.png`` and ``progress_<selection metric>.png`` (the task metric per epoch)."""
        super().plot_progress()
        if self.local_rank == 0:
            plot_metric_history(self.logger.get_value(self.selection_metric, step=None), self.selection_metric,
                                join(self.output_folder, f"progress_{self.selection_metric}.png"))

    # -- validation after training (``--val``) --------------------------------------------------------

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Predict every validation case (whole volume, mirroring TTA) and write them with the task metrics.

        Writes ``validation/predictions.csv`` and ``.json`` (case, target, prediction, fold) and
        ``validation/summary.json``. ``save_probabilities`` (nnU-Net's ``--npz``) changes nothing: the
        per-case probability or value is always written.
        """
        self.network.eval()
        result = self._validate(load_volumes(self._validation_dataset()), self.inference_allowed_mirroring_axes)
        if self.local_rank != 0:
            return
        case_ids, metrics = result.case_ids, result.metrics
        records = prediction_records(dict(zip(case_ids, result.targets.tolist())),
                                     dict(zip(case_ids, result.predictions)), self.fold, self.prediction_name)
        summary = {"task_type": self.task_type, "fold": self.fold, "trainer": type(self).__name__,
                   "n_cases": len(case_ids), "mirror_axes": list(self.inference_allowed_mirroring_axes or ()),
                   "metrics": metrics}
        write_validation_outputs(join(self.output_folder, "validation"), records, summary)
        for name, value in metrics.items():
            if isinstance(value, float) and not math.isnan(value):
                self.logger.log_summary(f"final_val/{name}", value)
        self.print_to_log_file(f"Validation {self.task_metric} ({len(case_ids)} cases): "
                               f"{metrics[self.task_metric]:.4f}", also_print_to_console=True)

    def _validate(self, volumes: dict[str, np.ndarray], mirror_axes: Optional[Sequence[int]]) -> CaseValidation:
        """Predict every case of ``volumes`` (this rank's share) whole, gather every rank's outputs and score them
        against the cases' targets (on every rank, from the same outputs in case order)."""
        mine = predict_cases(unwrap_network(self.network), volumes, self.device, mirror_axes) if volumes else ([], [])
        by_case = {case: output for case_ids, outputs in gathered(mine) for case, output in zip(case_ids, outputs)}
        case_ids = sorted(by_case)
        outputs = torch.stack([by_case[case] for case in case_ids])
        targets = self.case_targets.lookup(case_ids)
        predictions = self.decode_outputs(outputs)
        return CaseValidation(case_ids, outputs, targets, predictions, self.task_metrics(targets, predictions))

    def _validation_dataset(self, n_cases: Optional[int] = None):
        """nnU-Net's dataset of this rank's share of this fold's validation cases (whole preprocessed volumes; all
        of them without DDP); ``n_cases``: a subset of that many, the same in every epoch and run (seeded by the
        fold)."""
        _, val_keys = self.do_split()
        val_keys = sorted(val_keys)
        if n_cases is not None and n_cases < len(val_keys):
            val_keys = sorted(random.Random(EPOCH_VALIDATION_SEED + self.fold).sample(val_keys, n_cases))
        return self._cases_dataset(val_keys[rank()::world_size()])

    def _cases_dataset(self, case_ids: Sequence[str]):
        """nnU-Net's dataset of the preprocessed cases ``case_ids``."""
        return self.dataset_class(self.preprocessed_dataset_folder, list(case_ids),
                                  folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)


class MirrorAllAxes:
    """Mixin: nnU-Net's mirroring along every spatial axis (training and test-time), instead of left-right only."""

    mirror_left_right_only: ClassVar[bool] = False
