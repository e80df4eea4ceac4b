"""nnssl's adaptation plan (``nnssl_adaptation_plan`` in its checkpoints): which architecture the weights belong to.

nnssl publishes several architectures; only its residual-encoder U-Net (``ResEncL``, or DNA's ``ResidualEncoderUNet``
with keyword arguments) is the network ``FomoResEncUNet`` builds. For the latter the plan holds what the weights do
not show (strides, normalisation, activation), so those are checked against the network we build; everything the
weights show (features, blocks, channels) is checked by the transfer itself.
"""

from __future__ import annotations

from typing import Any

from nnunet_ext.networks.resenc import NNSSL_RESENC_L
from nnunet_ext.networks.unet import fomo_strides

#: Key of the plan in an nnssl checkpoint.
NNSSL_PLAN_KEY = "nnssl_adaptation_plan"
#: nnssl's name of DNA's dynamic residual-encoder U-Net (built from the plan's keyword arguments).
DYNAMIC_RESENC = "ResidualEncoderUNet"
SUPPORTED_ARCHITECTURES = (NNSSL_RESENC_L, DYNAMIC_RESENC)
#: What ``FomoResEncUNet`` fixes, as nnssl serialises it (classes by dotted path).
_FIXED_KWARGS = {
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "dropout_op": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU",
}
_KERNEL = [3, 3, 3]
_NORM_EPS = 1e-5
_LEAKY_SLOPE = 0.01


def architecture_name(plan: Any) -> str | None:
    """The plan's ``architecture_plans.arch_class_name``, None when the plan does not say."""
    try:
        return plan["architecture_plans"]["arch_class_name"]
    except (KeyError, TypeError):
        return None


def plan_problems(plan: Any) -> list[str]:
    """Why the weights of an nnssl checkpoint with this adaptation plan cannot go into ``FomoResEncUNet`` (empty: they
    can, as far as the plan tells)."""
    name = architecture_name(plan)
    if name not in SUPPORTED_ARCHITECTURES:
        return [f"nnssl architecture {name!r} is not a residual-encoder U-Net: only {' / '.join(SUPPORTED_ARCHITECTURES)}"
                " checkpoints can be loaded"]
    kwargs = plan["architecture_plans"].get("arch_kwargs")
    if name == NNSSL_RESENC_L:
        return []
    if not isinstance(kwargs, dict):
        return [f"the adaptation plan's {DYNAMIC_RESENC} has no arch_kwargs"]
    problems = [f"arch_kwargs.{key} is {kwargs.get(key)!r}, the network needs {value!r}"
                for key, value in _FIXED_KWARGS.items() if kwargs.get(key) != value]
    n_stages = len(kwargs.get("features_per_stage") or [])
    strides = [list(s) for s in kwargs.get("strides") or []]
    if strides != fomo_strides(n_stages):
        problems.append(f"arch_kwargs.strides is {strides!r}, the network needs {fomo_strides(n_stages)!r}")
    if any(list(k) != _KERNEL for k in kwargs.get("kernel_sizes") or [None]):
        problems.append(f"arch_kwargs.kernel_sizes must all be {_KERNEL}")
    norm_kwargs = kwargs.get("norm_op_kwargs") or {}
    if norm_kwargs.get("eps", _NORM_EPS) != _NORM_EPS or not norm_kwargs.get("affine", False):
        problems.append(f"arch_kwargs.norm_op_kwargs is {norm_kwargs!r}, the network needs eps {_NORM_EPS}, affine")
    slope = (kwargs.get("nonlin_kwargs") or {}).get("negative_slope", _LEAKY_SLOPE)
    if slope != _LEAKY_SLOPE:
        problems.append(f"arch_kwargs.nonlin_kwargs.negative_slope is {slope!r}, the network needs {_LEAKY_SLOPE}")
    return problems
