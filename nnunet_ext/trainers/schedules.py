"""Learning-rate schedule of the FOMO trainers: linear warm-up, then cosine annealing to ~0.

Stepped once per epoch the way nnU-Net steps its own ``PolyLRScheduler``: ``on_train_epoch_start`` calls
``lr_scheduler.step(self.current_epoch)``, so the epoch index is passed in and a resumed run (``--c``) lands on
the right learning rate without replaying the schedule.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import _LRScheduler

#: Warm-up length of a full-length run, in epochs: enough for AdamW's moment estimates to settle before the
#: pretrained weights see the full learning rate (large early steps would wash out the pretraining).
WARMUP_EPOCHS = 10
#: Short runs (``_5epochs``, ``_debug``) never spend more than this fraction of their epochs warming up.
MAX_WARMUP_FRACTION = 0.1


def warmup_epochs_for(num_epochs: int, full_warmup: int = WARMUP_EPOCHS) -> int:
    """Warm-up epochs for a run of ``num_epochs``: ``full_warmup`` (:data:`WARMUP_EPOCHS` for fine-tuning), capped at
    :data:`MAX_WARMUP_FRACTION` of the run."""
    return min(full_warmup, int(num_epochs * MAX_WARMUP_FRACTION))


def warmup_cosine_factor(epoch: int, warmup_epochs: int, num_epochs: int) -> float:
    """Multiplier of the peak learning rate in ``epoch`` (0-based).

    Warm-up rises linearly to 1 over ``warmup_epochs`` epochs (1/W, 2/W, ..., 1); the remaining epochs follow a
    half cosine from 1 down to 0, reached one step after the last epoch, so the last epoch still learns a little.
    """
    if not 0 <= warmup_epochs < num_epochs:
        raise ValueError(f"warm-up of {warmup_epochs} epochs does not fit a run of {num_epochs} epochs")
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    progress = (epoch - warmup_epochs) / (num_epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLRScheduler(_LRScheduler):
    """Warm-up + cosine per epoch, scaling every parameter group's own initial learning rate.

    Groups keep their ratios (layer-wise learning-rate decay relies on that), unlike nnU-Net's schedulers,
    which write one learning rate into every group.
    """

    def __init__(self, optimizer: Optimizer, warmup_epochs: int, num_epochs: int):
        self.warmup_epochs = warmup_epochs
        self.num_epochs = num_epochs
        # Fails on a bad warm-up now rather than at the first step.
        warmup_cosine_factor(0, warmup_epochs, num_epochs)
        super().__init__(optimizer)

    def step(self, epoch: int | None = None) -> None:
        """Set the learning rates of ``epoch`` (nnU-Net passes it); without it, advance by one epoch."""
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        factor = warmup_cosine_factor(self.last_epoch, self.warmup_epochs, self.num_epochs)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
