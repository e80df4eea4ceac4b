"""The ``fomo`` block of a FOMO plans configuration: what trainers need to rebuild the network alone.

nnU-Net's predictor rebuilds a network from the plans and the trainer class only, so everything beyond
``architecture.arch_kwargs`` that a trainer needs (task, outputs, head, pretrained checkpoint) is stored in the
3d_fullres configuration under :data:`FOMO_PLANS_KEY` and read back with :meth:`FomoPlansBlock.from_configuration`
(``configuration_manager.configuration`` in a trainer). JSON layout::

    "fomo": {
      "task_type": "segmentation",              // as in dataset.json's fomo.task_type
      "num_outputs": 2,                          // logits (classification, segmentation) or 1 (regression)
      "head": {"dropout": 0.0, "pool_levels": [4], "pooling": "avg"},   // pooling: avg | max | avgmax
      "pretrained": {"path": "/abs/epoch=12.ckpt", "sha256": "...", "model": "unet_b",
                     "decoder_layout": "unet_b_lw_dec", "starting_filters": 32},   // or null
      "normalization": "FomoPretrainingNormalization",
      "channel_adaptation": "first"               // how the 1-channel pretrained stem takes C channels
    }
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks.unet import DEFAULT_HEAD_POOLING

#: Key of the block inside a plans configuration.
FOMO_PLANS_KEY = "fomo"
#: Stem adaptation of plans written before the choice existed: what their trainers used.
LEGACY_CHANNEL_ADAPTATION = "average"


@dataclass(frozen=True)
class HeadSpec:
    """Image-level head options (classification / regression; unused by segmentation)."""

    dropout: float
    pool_levels: Tuple[int, ...]
    pooling: str = DEFAULT_HEAD_POOLING


@dataclass(frozen=True)
class PretrainedSpec:
    """The checkpoint the encoder starts from; ``sha256`` lets a trainer refuse a file changed since planning."""

    path: str  # absolute
    sha256: str
    model: str  # unet_b | unet_xl | resenc_unet_s, _b, _l, _h, _g
    decoder_layout: str  # unet_b_lw_dec | unet_b
    starting_filters: int


@dataclass(frozen=True)
class FomoPlansBlock:
    task_type: str
    num_outputs: int
    head: HeadSpec
    pretrained: Optional[PretrainedSpec]
    normalization: str
    #: How the pretrained 1-channel stem is adapted to the task's channels
    #: (``nnunet_ext.pretrained.key_mapping.CHANNEL_ADAPTATIONS``).
    channel_adaptation: str = LEGACY_CHANNEL_ADAPTATION

    def to_json(self) -> Dict[str, Any]:
        """The block as plain JSON types (tuples become lists)."""
        block = asdict(self)
        block["head"]["pool_levels"] = list(self.head.pool_levels)
        return block

    @classmethod
    def from_configuration(cls, configuration: Dict[str, Any]) -> "FomoPlansBlock":
        """Read the block of a plans configuration dict; refuse plans that were not made by our planner."""
        block = configuration.get(FOMO_PLANS_KEY)
        if not isinstance(block, dict):
            raise FomoInputError(f"the plans configuration has no {FOMO_PLANS_KEY!r} block: plan the dataset with "
                                 "fomo_plan_and_preprocess")
        try:
            # plans written before the pooling choice existed pooled the average
            head = HeadSpec(float(block["head"]["dropout"]), tuple(int(i) for i in block["head"]["pool_levels"]),
                            str(block["head"].get("pooling", DEFAULT_HEAD_POOLING)))
            pretrained = None if block["pretrained"] is None else PretrainedSpec(**block["pretrained"])
            return cls(block["task_type"], int(block["num_outputs"]), head, pretrained, block["normalization"],
                       str(block.get("channel_adaptation", LEGACY_CHANNEL_ADAPTATION)))
        except (KeyError, TypeError) as e:
            raise FomoInputError(f"malformed {FOMO_PLANS_KEY!r} block in the plans ({e!r}): re-run "
                                 "fomo_plan_and_preprocess") from None
