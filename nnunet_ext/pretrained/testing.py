"""Checkpoints in the exact layout of FOMO25's, FOMO26's and nnssl's pretrained files, for tests and the demo.

Built from the specs in ``fomo_layout`` and ``resenc_layout`` (never from our networks), so a test that transfers
one into a network checks the network against the spec rather than against itself. Values are random (seeded) but
well scaled.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks.resenc import NNSSL_RESENC_L, RESENC_DECODER_CONVS, RESENC_PRESETS, scaled_features
from nnunet_ext.networks.unet import DECODER_LAYOUTS, MODEL_PRESETS
from nnunet_ext.pretrained import resenc_layout
from nnunet_ext.pretrained.checkpoint_io import COMPILED_MODEL_PREFIX, MODEL_PREFIX
from nnunet_ext.pretrained.fomo_layout import FomoLayout
from nnunet_ext.pretrained.lightning_file import lightning_checkpoint
from nnunet_ext.pretrained.resenc_layout import ResEncLayout
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


#: Where nnssl's adaptation plan finds the encoder, the stem and the stem's input projection in DNA's names (as DNA's
#: ``ResidualEncoderUNet`` declares them), and the patch nnssl recommends downstream.
_NNSSL_KEY_TO_ENCODER = "encoder.stages"
_NNSSL_KEY_TO_STEM = "encoder.stem"
_NNSSL_KEYS_TO_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
_NNSSL_DOWNSTREAM_PATCH = [160, 160, 160]
_NNSSL_TRAINER = "BaseMAETrainer"


def resenc_layout_for(model: str = "resenc_unet_b", starting_filters: int | None = None,
                      decoder_convs: int = RESENC_DECODER_CONVS) -> ResEncLayout:
    """The layout of a published ResEnc size, optionally scaled to ``starting_filters`` in its first stage."""
    if model not in RESENC_PRESETS:
        raise FomoInputError(f"model must be one of {sorted(RESENC_PRESETS)}, got {model!r}")
    features, blocks = RESENC_PRESETS[model]
    if starting_filters is not None:
        features = scaled_features(features, starting_filters)
    return ResEncLayout(tuple(features), tuple(blocks), decoder_convs)


def make_resenc_state_dict(layout: ResEncLayout, naming: str = resenc_layout.FOMO26, seed: int = 0,
                           with_aliases: bool = True) -> dict[str, torch.Tensor]:
    """The pretraining network's state dict in ``naming`` (keys without prefix), seeded random values; the second
    names the library's ``state_dict()`` lists (``all_modules``, DNA's ``decoder.encoder``) share their tensor, as
    in a saved file."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {key: _random_tensor(key.replace("norm_op.", "norm."), shape, generator)
                  for key, shape in layout.expected_shapes(naming).items()}
    if with_aliases:
        state_dict.update({alias: state_dict[canonical] for alias, canonical in layout.aliases(naming).items()})
    return state_dict


def make_resenc_checkpoint(path: PathLike, layout: ResEncLayout, compiled: bool = False, seed: int = 0) -> Path:
    """Write a FOMO26 Lightning checkpoint like ``resenc_unet_b.ckpt`` to ``path``: gardening-tools' key names with
    the ``model.`` prefix (``model._orig_mod.`` with ``compiled``).

    The reference documents the network keys only; the hyper-parameters written are a plausible minimum.
    """
    path = Path(path)
    state_dict = make_resenc_state_dict(layout, resenc_layout.FOMO26, seed)
    hyper_parameters = {"model_name": layout.model_name or "resenc_unet", "input_channels": layout.input_channels,
                        "num_classes": layout.output_channels, "patch_size": _PATCH_SIZE, "mask_ratio": _MASK_RATIO,
                        "mask_patch_size": _MASK_PATCH_SIZE, "epochs": _EPOCHS, "learning_rate": _LEARNING_RATE}
    content = lightning_checkpoint(state_dict, hyper_parameters, _EPOCH, _EPOCH * _STEPS_PER_EPOCH,
                                   prefix=COMPILED_MODEL_PREFIX if compiled else MODEL_PREFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def nnssl_adaptation_plan(layout: ResEncLayout) -> dict[str, Any]:
    """An nnssl ``AdaptationPlan.serialize()`` of a ResEnc-L pretraining (``ResEncL`` for that size, DNA's
    ``ResidualEncoderUNet`` with its keyword arguments for another)."""
    preset = layout.model_name == "resenc_unet_b" and layout.decoder_convs == RESENC_DECODER_CONVS
    n_stages = layout.n_stages
    arch_kwargs = None if preset else {
        "n_stages": n_stages, "features_per_stage": list(layout.features),
        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n_stages,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1), "n_blocks_per_stage": list(layout.blocks),
        "n_conv_per_stage_decoder": [layout.decoder_convs] * (n_stages - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.modules.activation.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    return {
        "architecture_plans": {"arch_class_name": NNSSL_RESENC_L if preset else "ResidualEncoderUNet",
                               "arch_kwargs": arch_kwargs,
                               "arch_kwargs_requiring_import": None if preset else ["conv_op", "norm_op", "nonlin"]},
        "pretrain_plan": {"dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
                          "configurations": {"onemmiso": {"spacing": [1, 1, 1], "patch_size": _PATCH_SIZE,
                                                          "normalization_schemes": ["ZScoreNormalization"]}}},
        "pretrain_num_input_channels": layout.input_channels,
        "recommended_downstream_patchsize": _NNSSL_DOWNSTREAM_PATCH,
        "key_to_encoder": _NNSSL_KEY_TO_ENCODER, "key_to_stem": _NNSSL_KEY_TO_STEM,
        "keys_to_in_proj": list(_NNSSL_KEYS_TO_IN_PROJ), "key_to_lpe": None,
    }


def make_nnssl_checkpoint(path: PathLike, layout: ResEncLayout, seed: int = 0,
                          adaptation_plan: dict[str, Any] | None = None) -> Path:
    """Write an nnssl release checkpoint to ``path``: ``network_weights`` (DNA's ``ResidualEncoderUNet`` state dict),
    ``nnssl_adaptation_plan`` (:func:`nnssl_adaptation_plan` unless given), ``trainer_name`` and ``init_args``, the
    keys nnssl's ``add_adaptation_plan`` leaves in a published file."""
    path = Path(path)
    content = {"network_weights": make_resenc_state_dict(layout, resenc_layout.NNSSL, seed),
               "init_args": {"configuration": "onemmiso", "fold": 0},
               "trainer_name": _NNSSL_TRAINER,
               "nnssl_adaptation_plan": nnssl_adaptation_plan(layout) if adaptation_plan is None else adaptation_plan}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path
