"""Checkpoints in the exact layout of FOMO25's pretrained files, for tests and the demo.

Built from the spec in ``fomo_layout`` (never from FomoUNet), so a test that transfers one into a FomoUNet
checks our network against the spec rather than against itself. Values are random (seeded) but well scaled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks.unet import DECODER_LAYOUTS, MODEL_PRESETS
from nnunet_ext.pretrained.checkpoint_io import COMPILED_MODEL_PREFIX, MODEL_PREFIX
from nnunet_ext.pretrained.fomo_layout import FomoLayout
from nnunet_ext.pretrained.lightning_file import lightning_checkpoint
from nnunet_ext.utils.files import PathLike

#: Standard deviation of the random biases and of the norm weights around 1.
_VECTOR_STD = 0.1
#: What the published checkpoint's Lightning dict records (fomo_reference.md, section 1).
_EPOCH = 12
_STEPS_PER_EPOCH = 100
_PATCH_SIZE = [96, 96, 96]
_LEARNING_RATE = 1e-4
_MASK_RATIO = 0.6
_MASK_PATCH_SIZE = 4
_EPOCHS = 100
_WARMUP_EPOCHS = 5
_BETAS = (0.9, 0.999)
_WEIGHT_DECAY = 0.01
_AMP_SCALE = 65536.0


def make_fomo_state_dict(starting_filters: int = MODEL_PRESETS["unet_b"], decoder_layout: str = "unet_b_lw_dec",
                         seed: int = 0, input_channels: int = 1) -> dict[str, torch.Tensor]:
    """The FOMO network's state dict (keys without prefix) with seeded random values, in checkpoint order."""
    if decoder_layout not in DECODER_LAYOUTS:
        raise FomoInputError(f"decoder_layout must be one of {sorted(DECODER_LAYOUTS)}, got {decoder_layout!r}")
    layout = FomoLayout(starting_filters, DECODER_LAYOUTS[decoder_layout], input_channels)
    generator = torch.Generator().manual_seed(seed)
    return {key: _random_tensor(key, shape, generator) for key, shape in layout.expected_shapes().items()}


def _random_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Kernels scaled by 1/sqrt(fan-in) (activations stay O(1)); biases small; norm weights near 1."""
    values = torch.randn(shape, generator=generator)
    if len(shape) > 1:
        return values / math.sqrt(math.prod(shape[1:]))
    values = values * _VECTOR_STD
    return values + 1.0 if key.endswith("norm.weight") else values


def make_fomo_checkpoint(path: PathLike, starting_filters: int = MODEL_PRESETS["unet_b"],
                         decoder_layout: str = "unet_b_lw_dec", lightning: bool = True, compiled: bool = False,
                         seed: int = 0) -> Path:
    """Write a FOMO checkpoint to ``path``: a Lightning dict like ``epoch=12.ckpt``, or a bare state dict.

    Keys get the ``model.`` prefix (``model._orig_mod.`` with ``compiled``), as in the real files.
    """
    path = Path(path)
    state_dict = make_fomo_state_dict(starting_filters, decoder_layout, seed)
    prefix = COMPILED_MODEL_PREFIX if compiled else MODEL_PREFIX
    content = _lightning_dict(state_dict, decoder_layout, prefix) if lightning else \
        {prefix + key: tensor for key, tensor in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def _lightning_dict(state_dict: dict[str, torch.Tensor], model_name: str, prefix: str) -> dict[str, Any]:
    """The top-level dict Lightning writes, with AdamW state, a cosine schedule and the baseline's hparams."""
    step = _EPOCH * _STEPS_PER_EPOCH
    optimizer_state = {
        "state": {index: {"step": torch.tensor(float(step)), "exp_avg": torch.zeros_like(tensor),
                          "exp_avg_sq": torch.zeros_like(tensor)}
                  for index, tensor in enumerate(state_dict.values())},
        "param_groups": [{"lr": _LEARNING_RATE, "betas": _BETAS, "eps": 1e-8, "weight_decay": _WEIGHT_DECAY,
                          "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
                          "differentiable": False, "fused": None, "initial_lr": _LEARNING_RATE,
                          "params": list(range(len(state_dict)))}],
    }
    config = {"model_name": model_name, "patch_size": _PATCH_SIZE, "epochs": _EPOCHS, "batch_size": 2,
              "input_channels": 1, "num_classes": 1, "mask_ratio": _MASK_RATIO, "precision": "bf16-mixed",
              "version_dir": "/models/fomo-60k/version_0"}
    callbacks = {"ModelCheckpoint{'monitor': 'val/loss'}": {
        "monitor": "val/loss", "best_model_score": torch.tensor(0.01), "best_model_path": "epoch=12.ckpt",
        "best_k_models": {"epoch=12.ckpt": torch.tensor(0.01)}, "kth_value": torch.tensor(0.01)}}
    schedulers = [{"T_max": _EPOCHS * _STEPS_PER_EPOCH, "eta_min": 0.0, "base_lrs": [_LEARNING_RATE],
                   "last_epoch": step, "_step_count": step + 1, "_last_lr": [_LEARNING_RATE]}]
    mixed_precision = {"scale": _AMP_SCALE, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0}
    hyper_parameters = {
        "model_name": model_name, "steps_per_epoch": _STEPS_PER_EPOCH, "epochs": _EPOCHS,
        "learning_rate": _LEARNING_RATE, "config": config, "optimizer": "AdamW",
        "warmup_epochs": _WARMUP_EPOCHS, "cosine_period_ratio": 1, "input_channels": 1, "num_classes": 1,
        "patch_size": _PATCH_SIZE, "mask_patch_size": _MASK_PATCH_SIZE, "mask_ratio": _MASK_RATIO,
        "should_compile": False, "compile_mode": None}
    return lightning_checkpoint(state_dict, hyper_parameters, _EPOCH, step, [optimizer_state], schedulers,
                                callbacks, extra={"MixedPrecision": mixed_precision}, prefix=prefix)
