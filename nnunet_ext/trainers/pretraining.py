"""``FomoPretrainTrainer``: self-supervised pretraining of the FOMO UNet inside nnU-Net (masked image modelling).

The recipe is the FOMO baseline's (fomo_reference.md, section 6): every scan is one single-channel case; 4^3-voxel
cubes covering 60 % of a patch are set to 0 and the network (encoder + light-weight decoder, one output channel)
reconstructs the whole patch under an MSE loss (``_MaskedOnly``: the masked voxels only); AdamW with a short
linear warm-up, then cosine decay. nnU-Net contributes everything else: planning and preprocessing, its spatial and
intensity augmentation, mixed precision and gradient scaling on a GPU, DDP over ``-num_gpus``, logging, progress
plots, checkpoints and ``--c``.

- **Held-out scans.** With fold ``all`` (the way to pretrain) a seeded :data:`HELD_OUT_FRACTION` of the
  *subjects* (at least one) is held out, all their scans with them, so no subject is both reconstructed for
  validation and trained on. Numbered folds use the dataset's subject-grouped ``splits_final.json``.
- **Validation.** Each epoch, the centre patch of every held-out scan is masked with a mask drawn from a fixed seed
  per scan (the same in every epoch) and the reconstruction loss over them is logged as
  :data:`VALIDATION_LOSS_KEY`; it picks ``checkpoint_best.pth``. Under DDP the scans are split across the ranks and
  the loss sums are gathered, so every rank logs and decides the same.
- **Start.** From random weights, or, when the plans (``fomo_plan_and_preprocess --pretrained``) or
  ``$FOMO_PRETRAINED`` name a checkpoint, from that checkpoint, decoder and output conv included (continued
  pretraining, e.g. of the FOMO encoder on one's own unlabelled scans).
- **Out.** ``fomo_export_pretrained`` writes the trained network as a checkpoint in the layout of ``epoch=12.ckpt``.
"""

from __future__ import annotations

import math
import os
import random
from os.path import join
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_ext.dataset_conversion.tasks import FOMO_KEY, PRETRAINING
from nnunet_ext.errors import FomoInputError
from nnunet_ext.trainers.base import FomoTrainerBase, gathered, unwrap_network, world_size
from nnunet_ext.trainers.case_validation import PAD_VALUE, plot_metric_history
from nnunet_ext.trainers.masking import (
    MASK_CUBE_EDGE,
    MASK_RATIO,
    apply_mask,
    draw_cube_mask,
    reconstruction_loss,
)
from nnunet_ext.pretrained.export import PRETRAINING_RECIPE_FILENAME
from nnunet_ext.preprocessing.fomo_plans import FomoPlansBlock
from nnunet_ext.trainers.pretrained_loading import PRETRAINED_ENV_VAR, PretrainedSource
from nnunet_ext.trainers.schedules import warmup_epochs_for
from nnunet_ext.utils.files import atomic_write_json

#: Peak learning rate and weight decay of AdamW for pretraining from random weights.
PRETRAIN_LR = 1e-3
PRETRAIN_WEIGHT_DECAY = 3e-5
#: Epochs (of nnU-Net's 250 iterations) of a full run: the baseline's 100 epochs of its whole data set.
PRETRAIN_NUM_EPOCHS = 100
#: Epochs of linear warm-up of a full run (the baseline's 5 of 100), before the cosine decay.
PRETRAIN_WARMUP_EPOCHS = 5
#: Fraction of the subjects held out for the reconstruction validation loss (the baseline holds out 1 % of scans).
HELD_OUT_FRACTION = 0.01
#: Seed of the held-out subjects, of the training masks and (plus the scan's index) of the validation masks.
SPLIT_SEED = 12345
TRAINING_MASK_SEED = 0
VALIDATION_MASK_SEED = 1
#: Logger key of the per-epoch reconstruction loss on the held-out scans (lower is better).
VALIDATION_LOSS_KEY = "val_reconstruction_loss"
#: nnU-Net's end-of-epoch code prints and plots a pseudo-Dice; reconstruction has none (see case_level.py).
NO_PSEUDO_DICE = float("nan")
#: Channel axis of a batch [B, C, X, Y, Z]: the loss's target carries the mask as its last channel.
_CHANNEL_AXIS = 1


class ReconstructionLoss(nn.Module):
    """MSE between the reconstruction and the unmasked input; the target holds [input, mask] along the channels
    (so nnU-Net's own training step, with its mixed precision and gradient clipping, can call it unchanged)."""

    def __init__(self, masked_only: bool = False):
        super().__init__()
        self.masked_only = masked_only

    def forward(self, reconstruction: torch.Tensor, target_and_mask: torch.Tensor) -> torch.Tensor:
        target, mask = target_and_mask[:, :-1], target_and_mask[:, -1:] > 0
        return reconstruction_loss(reconstruction.float(), target.float(), mask, self.masked_only)


def held_out_subjects(subjects: Sequence[str], fraction: float = HELD_OUT_FRACTION,
                      seed: int = SPLIT_SEED) -> list[str]:
    """A seeded ``fraction`` of ``subjects`` (at least one, never all), sorted."""
    unique = sorted(set(subjects))
    if len(unique) < 2:
        raise FomoInputError(f"pretraining holds out whole subjects for its validation loss, and this dataset has "
                             f"{len(unique)} subject(s): at least 2 are needed")
    n_held_out = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    return sorted(random.Random(seed).sample(unique, n_held_out))


def centre_patch(volume: np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """The centre ``patch_size`` window of ``volume`` [C, *spatial], padded with the background where it is smaller."""
    out = np.full((volume.shape[0], *patch_size), PAD_VALUE, dtype=np.float32)
    source, target = [slice(None)], [slice(None)]
    for size, patch in zip(volume.shape[1:], patch_size):
        start = max(0, (size - patch) // 2)
        length = min(size, patch)
        offset = (patch - length) // 2
        source.append(slice(start, start + length))
        target.append(slice(offset, offset + length))
    out[tuple(target)] = volume[tuple(source)]
    return out


class FomoPretrainTrainer(FomoTrainerBase):
    """Masked image modelling on single-channel scans (see the module docstring)."""

    task_type: ClassVar[str] = PRETRAINING
    selection_metric: ClassVar[str] = VALIDATION_LOSS_KEY
    selection_higher_is_better: ClassVar[bool] = False
    #: The baseline's ``rec_loss_masked_only``: False reconstructs every voxel.
    masked_only_loss: ClassVar[bool] = False
    mask_ratio: ClassVar[float] = MASK_RATIO
    mask_cube_edge: ClassVar[int] = MASK_CUBE_EDGE

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = PRETRAIN_LR
        self.weight_decay = PRETRAIN_WEIGHT_DECAY
        self.num_epochs = PRETRAIN_NUM_EPOCHS
        # A fixed schedule, as the baseline's: the validation loss picks checkpoint_best.pth but stops nothing.
        self.early_stopping_patience = None
        self.subjects: dict[str, str] = dict(dataset_json.get(FOMO_KEY, {}).get("subjects", {}))
        self.mask_generator = torch.Generator().manual_seed(TRAINING_MASK_SEED + self.local_rank)
        self.validation_patches: dict[str, np.ndarray] = {}  # -> on_train_start
        self.logger.local_logger.my_fantastic_logging.setdefault(VALIDATION_LOSS_KEY, [])

    def recipe(self) -> dict:
        """The pretraining recipe under the names of the FOMO baseline's ``hyper_parameters``."""
        return {"mask_patch_size": self.mask_cube_edge, "mask_ratio": self.mask_ratio,
                "rec_loss_masked_only": self.masked_only_loss, "optimizer": "AdamW", "learning_rate": self.initial_lr,
                "weight_decay": self.weight_decay, "epochs": self.num_epochs,
                "steps_per_epoch": self.num_iterations_per_epoch, "warmup_epochs": self.warmup_epochs(),
                "cosine_period_ratio": 1, "batch_size": self.configuration_manager.batch_size,
                "trainer": type(self).__name__}

    def warmup_epochs(self) -> int:
        return warmup_epochs_for(self.num_epochs, PRETRAIN_WARMUP_EPOCHS)

    def _build_loss(self) -> nn.Module:
        return ReconstructionLoss(self.masked_only_loss)

    def do_split(self) -> tuple[list[str], list[str]]:
        """Fold ``all``: every scan but those of the held-out subjects; numbered folds: nnU-Net's split file."""
        if self.fold != "all":
            return super().do_split()
        if self.dataset_class is None:
            super().do_split()  # sets nnU-Net's dataset class for the preprocessed folder
        cases = sorted(self.dataset_class.get_identifiers(self.preprocessed_dataset_folder))
        unknown = [case for case in cases if case not in self.subjects]
        if unknown:
            raise FomoInputError(f"dataset.json's {FOMO_KEY}.subjects does not name the subject of {unknown[:5]}: "
                                 "convert the pool with `fomo_convert --task pretrain`")
        held_out = set(held_out_subjects([self.subjects[case] for case in cases]))
        val_keys = [case for case in cases if self.subjects[case] in held_out]
        tr_keys = [case for case in cases if self.subjects[case] not in held_out]
        self.print_to_log_file(f"Pretraining on {len(tr_keys)} scans; {len(val_keys)} scans of "
                               f"{len(held_out)} held-out subject(s) validate the reconstruction")
        return tr_keys, val_keys

    @classmethod
    def pretrained_source(cls, fomo_plans: FomoPlansBlock) -> PretrainedSource | None:
        """Continued pretraining where the plans or ``$FOMO_PRETRAINED`` name a checkpoint; otherwise nnU-Net's
        random initialisation (pretraining from scratch is the normal case, not a forgotten path)."""
        if fomo_plans.pretrained is None and not os.environ.get(PRETRAINED_ENV_VAR):
            return None
        return super().pretrained_source(fomo_plans)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.local_rank == 0:
            atomic_write_json(join(self.output_folder, PRETRAINING_RECIPE_FILENAME), self.recipe())
        self._load_validation_patches()
        self.num_val_iterations_per_epoch = 0  # validation runs on the held-out patches

    def _load_validation_patches(self) -> None:
        """This rank's share of the held-out scans, as centre patches held in memory: the same few patches are
        reconstructed after every epoch, so they are read from disk once."""
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        mine = sorted(val_keys)[self.local_rank::world_size()]
        self.validation_patches = {case: centre_patch(np.asarray(dataset.load_case(case)[0][:], dtype=np.float32),
                                                      self.configuration_manager.patch_size) for case in mine}

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's training step on the masked patch, against the unmasked patch and its mask."""
        data = batch["data"]
        mask = draw_cube_mask(data.shape[0], data.shape[2:], self.mask_generator, self.mask_cube_edge,
                              self.mask_ratio)
        target = torch.cat([data, mask.to(data.dtype)], dim=_CHANNEL_AXIS)
        return super().train_step({**batch, "data": apply_mask(data, mask), "target": target})

    @torch.no_grad()
    def held_out_losses(self) -> dict[str, float]:
        """Reconstruction loss of this rank's held-out patches, each masked from its own fixed seed."""
        network = unwrap_network(self.network)
        losses = {}
        for index, (case, patch) in enumerate(sorted(self.validation_patches.items())):
            generator = torch.Generator().manual_seed(VALIDATION_MASK_SEED + index * world_size()
                                                      + self.local_rank)
            volume = torch.from_numpy(patch)[None]
            mask = draw_cube_mask(1, volume.shape[2:], generator, self.mask_cube_edge, self.mask_ratio)
            volume, mask = volume.to(self.device), mask.to(self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                reconstruction = network(apply_mask(volume, mask))
            target = torch.cat([volume, mask.to(volume.dtype)], dim=_CHANNEL_AXIS)
            losses[case] = float(self.loss(reconstruction, target))
        return losses

    def _gathered_losses(self) -> dict[str, float]:
        """Every rank's :meth:`held_out_losses`, merged (the same dict on every rank)."""
        return {case: loss for part in gathered(self.held_out_losses()) for case, loss in part.items()}

    def on_validation_epoch_end(self, val_outputs: list[dict]) -> None:
        """Log the held-out reconstruction loss (mean over scans) as the validation loss and selection metric."""
        self.network.eval()
        losses = self._gathered_losses()
        loss = float(np.mean(list(losses.values())))
        self.logger.log("val_losses", loss, self.current_epoch)
        self.logger.log(VALIDATION_LOSS_KEY, loss, self.current_epoch)
        self.logger.log("mean_fg_dice", NO_PSEUDO_DICE, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [], self.current_epoch)

    def plot_progress(self) -> None:
        super().plot_progress()
        if self.local_rank == 0:
            plot_metric_history(self.logger.get_value(VALIDATION_LOSS_KEY, step=None), VALIDATION_LOSS_KEY,
                                join(self.output_folder, f"progress_{VALIDATION_LOSS_KEY}.png"))

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Write ``validation/summary.json``: the held-out scans' reconstruction losses and their mean."""
        if not self.validation_patches:  # --val without training: nnU-Net skips on_train_start
            self._load_validation_patches()
        self.network.eval()
        losses = self._gathered_losses()
        if self.local_rank != 0:
            return
        mean = float(np.mean(list(losses.values())))
        summary = {"task_type": self.task_type, "fold": self.fold, "trainer": type(self).__name__,
                   "n_cases": len(losses), "masked_only": self.masked_only_loss, "mask_ratio": self.mask_ratio,
                   "mask_cube_edge": self.mask_cube_edge,
                   "metrics": {"reconstruction_mse": mean}, "per_case": dict(sorted(losses.items()))}
        atomic_write_json(join(self.output_folder, "validation", "summary.json"), summary)
        if not math.isnan(mean):
            self.logger.log_summary("final_val/reconstruction_mse", mean)
        self.print_to_log_file(f"Held-out reconstruction MSE ({len(losses)} scans): {mean:.5f}",
                               also_print_to_console=True)


class FomoPretrainTrainer_MaskedOnly(FomoPretrainTrainer):
    """The loss over the masked voxels only (the baseline's ``rec_loss_masked_only=True``)."""

    masked_only_loss: ClassVar[bool] = True
