"""The three FOMO25 fine-tuning tasks: their modalities, channel order and targets.

Everything that depends on *which* task we handle reads it from here, so the generator, the converter,
the trainers and the challenge container agree on file names and channel order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

#: Task types, as stored in dataset.json under :data:`FOMO_KEY` and read by the trainers.
CLASSIFICATION = "classification"
SEGMENTATION = "segmentation"
REGRESSION = "regression"
#: Self-supervised pretraining (masked image modelling) on unlabelled scans: one single-channel case per scan.
PRETRAINING = "pretraining"
#: The ``--task`` of ``fomo_make_synthetic`` and ``fomo_convert`` for an unlabelled pool of scans (FOMO60K layout).
POOL_TASK = "pretrain"

#: The key of dataset.json under which the converter stores everything nnU-Net does not know about
#: (task, per-case targets, subjects). nnU-Net copies dataset.json verbatim into nnUNet_preprocessed
#: and nnUNet_results, so the targets travel with the model.
FOMO_KEY = "fomo"
#: Ages (years) accepted as a Task 3 target: a label outside is a typo or a unit error (months, days).
PLAUSIBLE_AGE_YEARS = (0.0, 120.0)


@dataclass(frozen=True)
class Channel:
    """One input channel: its name in dataset.json and the file stems that may hold it (``swi`` or ``t2s``)."""

    name: str
    stems: Tuple[str, ...]


@dataclass(frozen=True)
class TaskSpec:
    task_id: int
    name: str
    task_type: str
    channels: Tuple[Channel, ...]
    #: File in ``labels/sub_<N>/ses_<M>/`` that holds the target.
    label_file: str
    #: Human-readable meaning of the target (``dataset.json`` ``fomo.target_name``).
    target_name: str
    num_classes: int  # 2 for classification and segmentation, 1 for regression

    @property
    def channel_names(self) -> Tuple[str, ...]:
        return tuple(c.name for c in self.channels)


_SWI_OR_T2S = Channel("SWI_or_T2star", ("swi", "t2s"))

TASKS: Dict[int, TaskSpec] = {
    1: TaskSpec(
        task_id=1,
        name="FOMOInfarct",
        task_type=CLASSIFICATION,
        channels=(Channel("DWI", ("dwi_b1000",)), Channel("FLAIR", ("flair",)), Channel("ADC", ("adc",)), _SWI_OR_T2S),
        label_file="label.txt",
        target_name="infarct",
        num_classes=2,
    ),
    2: TaskSpec(
        task_id=2,
        name="FOMOMeningioma",
        task_type=SEGMENTATION,
        channels=(Channel("DWI", ("dwi_b1000",)), Channel("FLAIR", ("flair",)), _SWI_OR_T2S),
        label_file="seg.nii.gz",
        target_name="meningioma",
        num_classes=2,
    ),
    3: TaskSpec(
        task_id=3,
        name="FOMOBrainAge",
        task_type=REGRESSION,
        channels=(Channel("T1", ("t1",)), Channel("T2", ("t2",))),
        label_file="label.txt",
        target_name="age",
        num_classes=1,
    ),
}


def get_task(task_id: int) -> TaskSpec:
    try:
        return TASKS[int(task_id)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown FOMO task {task_id!r}; expected one of {sorted(TASKS)}") from None
