"""CI-sized learning checks shared by the trainer tests.

:func:`fit_whole_cases`: a trainer fits a fixed batch of a handful of whole preprocessed cases (32^3 voxels each,
no augmentation) for a few dozen steps of its own ``train_step`` (its loss, its target lookup, its optimiser),
after its own ``on_train_start`` (pretrained weights, target statistics). A sign-flipped loss, a zero learning
rate or a wrong target mapping then shows as a loss that does not fall or a metric at chance on those cases.

:func:`weights_after_pretrained_load`: records the network's weights right after the pretrained load of the
training runs started inside it, so a test can show that training changed them.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

from nnunet_ext.trainers.base import FomoTrainerBase, unwrap_network

#: The loss of the last steps must fall below this fraction of the first step's loss.
LOSS_FALL = 0.5
#: Steps averaged at the end of the fit (one step's loss wobbles with the optimiser).
FINAL_STEPS = 3
SEED = 0


class Fit(NamedTuple):
    """The losses of every step and the trained network's eval-mode outputs on the fitted batch."""

    losses: list[float]
    outputs: torch.Tensor
    batch: dict

    def loss_fell_by_half(self) -> bool:
        return self.losses[0] > 0 and np.mean(self.losses[-FINAL_STEPS:]) < LOSS_FALL * self.losses[0]


def whole_case_batch(trainer: FomoTrainerBase, cases: list[str]) -> dict:
    """nnU-Net's batch layout (``data``, ``target`` = label map, ``keys``) of the whole preprocessed ``cases``."""
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, cases)
    loaded = [dataset.load_case(case) for case in cases]

    def stacked(index: int) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.asarray(case[index][:], dtype=np.float32)) for case in loaded])

    return {"data": stacked(0), "target": stacked(1), "keys": list(cases)}


def fit_whole_cases(trainer: FomoTrainerBase, n_cases: int, steps: int) -> Fit:
    """Initialise ``trainer`` as training does, then run ``steps`` of its ``train_step`` on the first ``n_cases``
    training cases of its fold (``batch["keys"]``)."""
    trainer.initialize()
    trainer.on_train_start()
    batch = whole_case_batch(trainer, list(trainer.do_split()[0])[:n_cases])
    losses = [float(trainer.train_step(batch)["loss"]) for _ in range(steps)]
    trainer.network.eval()
    with torch.no_grad():
        outputs = trainer.network(batch["data"])
    return Fit(losses, outputs, batch)


def seed_everything(seed: int = SEED) -> None:
    """Fixes the head's initialisation and everything random in a fit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def weights_after_pretrained_load() -> Iterator[list[dict[str, torch.Tensor]]]:
    """Within the block, every trainer's weights right after its pretrained load are appended to the list."""
    recorded: list[dict[str, torch.Tensor]] = []
    load = FomoTrainerBase._initialise_from_pretrained

    def recording(self: FomoTrainerBase) -> None:
        load(self)
        recorded.append({k: v.detach().clone() for k, v in unwrap_network(self.network).state_dict().items()})

    FomoTrainerBase._initialise_from_pretrained = recording
    try:
        yield recorded
    finally:
        FomoTrainerBase._initialise_from_pretrained = load


def changed_tensors(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    """Names of the tensors of ``before`` whose values differ in ``after``."""
    return {name for name, value in before.items() if not torch.equal(value, after[name].to(value.device))}


#: A case-level network's head and its first and last encoder convolutions: a gradient that changed all of them
#: reached through the whole encoder.
HEAD_AND_ENCODER_ENDS = {"head.linear.weight", "head.linear.bias", "encoder.stages.0.0.convs.0.conv.weight",
                         "encoder.stages.4.1.convs.1.conv.weight"}


def head_and_encoder_ends_changed(fold: Path, loaded: dict[str, torch.Tensor]) -> set[str]:
    """Which of :data:`HEAD_AND_ENCODER_ENDS` differ between ``loaded`` (right after the pretrained load) and the
    fold's ``checkpoint_final.pth``."""
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    return changed_tensors(loaded, final) & HEAD_AND_ENCODER_ENDS
