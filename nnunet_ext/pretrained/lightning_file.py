"""The top-level dictionary of a PyTorch Lightning checkpoint, as FOMO's ``epoch=12.ckpt`` holds it.

Written without Lightning: the keys a Lightning loader (and the FOMO baseline's fine-tuning loader, which reads
``state_dict`` and ``hyper_parameters``) expects, with the network keys carrying the ``model.`` prefix.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from nnunet_ext.pretrained.checkpoint_io import MODEL_PREFIX

#: Lightning's version recorded in the FOMO25 checkpoints (fomo_reference.md, section 1).
LIGHTNING_VERSION = "2.4.0"
#: Lightning saves ``save_hyperparameters()``'s arguments under this name.
HPARAMS_NAME = "kwargs"


def lightning_checkpoint(state_dict: Mapping[str, torch.Tensor], hyper_parameters: Mapping[str, Any], epoch: int,
                         global_step: int, optimizer_states: Sequence[Mapping[str, Any]] = (),
                         lr_schedulers: Sequence[Mapping[str, Any]] = (),
                         callbacks: Mapping[str, Any] | None = None,
                         extra: Mapping[str, Any] | None = None, prefix: str = MODEL_PREFIX) -> dict[str, Any]:
    """The checkpoint dict; ``state_dict`` keys are FOMO names without prefix: ``prefix`` is added here
    (``model.``, or ``model._orig_mod.`` as a compiled run writes it)."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": {prefix + key: tensor for key, tensor in state_dict.items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"completed": epoch}}}},
        "callbacks": dict(callbacks or {}),
        "optimizer_states": list(optimizer_states),
        "lr_schedulers": list(lr_schedulers),
        **dict(extra or {}),
        "hparams_name": HPARAMS_NAME,
        "hyper_parameters": dict(hyper_parameters),
    }
