"""Reading pretrained checkpoints safely: Lightning ``.ckpt``, bare state dicts and nnU-Net ``checkpoint_*.pth``.

Files are read with ``torch.load(weights_only=True)``: unpickling can run arbitrary code, so only tensors,
plain containers and the few harmless classes a Lightning or nnU-Net checkpoint needs are allowed
(:data:`SAFE_GLOBALS`). A file that needs more is refused with the list of what it asked for; a user who trusts
the file opts in with ``trust_checkpoint=True`` / ``--trust-checkpoint`` or ``FOMO_TRUST_CHECKPOINT=1``.
Everything is mapped to the CPU, so a checkpoint saved on a GPU reads on a CPU-only machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_ext.errors import FomoInputError
from nnunet_ext.pretrained.nnssl_plan import NNSSL_PLAN_KEY, plan_problems
from nnunet_ext.utils.files import PathLike

#: Environment variable that, set to "1", trusts every checkpoint (``weights_only=False``).
TRUST_ENV_VAR = "FOMO_TRUST_CHECKPOINT"
TRUST_ENV_VALUE = "1"
#: Prefix ``torch.compile`` gives every key of a compiled module's state dict (a bare state dict saved from one).
COMPILED_PREFIX = "_orig_mod."
#: Prefix of network keys in a Lightning checkpoint, and the one ``torch.compile`` adds inside it.
MODEL_PREFIX = "model."
COMPILED_MODEL_PREFIX = f"{MODEL_PREFIX}{COMPILED_PREFIX}"
#: Compiled Lightning first: it is the longest and starts like the plain one.
MODEL_PREFIXES = (COMPILED_MODEL_PREFIX, MODEL_PREFIX, COMPILED_PREFIX)
#: How many offending keys an error message names.
_SHOWN_KEYS = 5
#: Read size for hashing large checkpoints.
_HASH_CHUNK_BYTES = 1 << 20

FORMAT_LIGHTNING = "lightning"
FORMAT_NNUNET = "nnunet"
FORMAT_STATE_DICT = "state_dict"
#: An nnssl checkpoint: nnU-Net's ``network_weights`` plus nnssl's adaptation plan.
FORMAT_NNSSL = "nnssl"
#: Where each format keeps the network weights.
_LIGHTNING_WEIGHTS = "state_dict"
_NNUNET_WEIGHTS = "network_weights"

#: Lightning's hyper-parameter container (a dict subclass) under the names its versions pickle it with.
#: Its content is plain dict items, so it is rebuilt as an OrderedDict: no Lightning import, no code run.
_ATTRIBUTE_DICT_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)
#: Harmless globals that real checkpoints pickle besides tensors: numpy scalars and dtypes (metrics, seeds,
#: nnU-Net's logging), paths and argparse namespaces (hyper-parameters), Lightning's AttributeDict.
#: numpy's scalar constructor is listed under both its numpy 2 and numpy 1 module names.
SAFE_GLOBALS: list[Any] = [
    np.dtype,
    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"),
    (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
    # Unpickling a dtype rebuilds an instance of its class (numpy.dtypes.Float64DType, ...).
    *dict.fromkeys(type(np.dtype(code)) for code in np.typecodes["All"]),
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
    argparse.Namespace,
    *[(OrderedDict, name) for name in _ATTRIBUTE_DICT_NAMES],
]
#: Where torch's weights-only error message states its reason, and the wording of a safe-list refusal.
_WEIGHTS_UNPICKLER_MARK = "WeightsUnpickler error:"
_SAFE_LIST_REFUSAL = "allowlisted"


def sha256_of_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def trust_requested(trust_checkpoint: bool = False) -> bool:
    """True when the caller or the environment (``FOMO_TRUST_CHECKPOINT=1``) trusts the checkpoint."""
    return trust_checkpoint or os.environ.get(TRUST_ENV_VAR) == TRUST_ENV_VALUE


def read_checkpoint(path: PathLike, trust_checkpoint: bool = False) -> Any:
    """Unpickle ``path`` onto the CPU, safely unless trusted; FomoInputError for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FomoInputError("checkpoint not found (or not a file)", path)
    trusted = trust_requested(trust_checkpoint)
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt bytes make the unpickler raise almost any exception type
        reason = _unpickler_reason(e)
        refused = [] if trusted or not isinstance(e, pickle.UnpicklingError) else _unsafe_globals(path)
        if refused or _SAFE_LIST_REFUSAL in reason:
            raise FomoInputError(
                "the checkpoint pickles objects outside the safe list, which could run code when loaded: "
                f"{', '.join(refused) or reason}. If you trust this file, pass --trust-checkpoint "
                f"(trust_checkpoint=True) or set {TRUST_ENV_VAR}={TRUST_ENV_VALUE}", path) from e
        raise FomoInputError(f"not a readable PyTorch checkpoint ({type(e).__name__}: {reason})", path) from e


def _unpickler_reason(error: Exception) -> str:
    """The specific reason inside torch's long weights-only message, or the whole message for other errors."""
    message = str(error)
    if _WEIGHTS_UNPICKLER_MARK not in message:
        return message
    return message.split(_WEIGHTS_UNPICKLER_MARK, 1)[1].strip().split("\n\n", 1)[0]


def _unsafe_globals(path: Path) -> list[str]:
    """Globals in ``path`` that the safe loader refuses; empty when the file cannot even be scanned."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a file torch.load could not read may break the scan in any way: it is then corrupt
        return []
    return [name for name in found if name not in _safe_global_names()]


def _safe_global_names() -> set[str]:
    """The pickled names :data:`SAFE_GLOBALS` allows."""
    return {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
            for entry in SAFE_GLOBALS}


def load_fomo_state_dict(path: PathLike, trust_checkpoint: bool = False
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint's network weights (CPU tensors, ``model.`` / ``model._orig_mod.`` / ``_orig_mod.`` stripped)
    and metadata.

    Accepts a Lightning ``.ckpt`` (``state_dict``), an nnU-Net ``checkpoint_*.pth`` (``network_weights``), an nnssl
    checkpoint (``network_weights`` and ``nnssl_adaptation_plan``; refused when the plan names an architecture other
    than the residual-encoder U-Net) and a bare state dict. Metadata: ``format``, ``hyper_parameters`` (empty when the
    file has none), ``epoch``, and for nnssl ``adaptation_plan``.
    """
    path = Path(path)
    content = read_checkpoint(path, trust_checkpoint)
    if not isinstance(content, Mapping):
        raise FomoInputError(f"not a checkpoint: it holds a {type(content).__name__}, not a dict", path)
    if _LIGHTNING_WEIGHTS in content:
        weights = content[_LIGHTNING_WEIGHTS]
        metadata = {"format": FORMAT_LIGHTNING, "hyper_parameters": dict(content.get("hyper_parameters") or {}),
                    "epoch": content.get("epoch")}
    elif NNSSL_PLAN_KEY in content:
        problems = plan_problems(content[NNSSL_PLAN_KEY])
        if problems:
            raise FomoInputError(f"nnssl checkpoint: {'; '.join(problems)}", path)
        weights = content.get(_NNUNET_WEIGHTS)
        metadata = {"format": FORMAT_NNSSL, "hyper_parameters": {}, "epoch": content.get("current_epoch"),
                    "adaptation_plan": content[NNSSL_PLAN_KEY]}
    elif _NNUNET_WEIGHTS in content:
        weights = content[_NNUNET_WEIGHTS]
        metadata = {"format": FORMAT_NNUNET, "hyper_parameters": {}, "epoch": content.get("current_epoch")}
    else:
        weights = content
        metadata = {"format": FORMAT_STATE_DICT, "hyper_parameters": {}, "epoch": None}
    return strip_model_prefix(_check_state_dict(weights, path)), metadata


def _check_state_dict(weights: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """Refuse anything that is not a non-empty mapping of names to tensors."""
    if not isinstance(weights, Mapping) or not weights:
        raise FomoInputError("not a checkpoint: no state dict (Lightning 'state_dict', nnU-Net "
                             "'network_weights' or a bare name -> tensor dict) found", path)
    not_tensors = [key for key, value in weights.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise FomoInputError(f"not a checkpoint: state dict entries that are not tensors: {not_tensors[:_SHOWN_KEYS]}", path)
    return weights


def strip_model_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the Lightning module's ``model.`` (or compiled ``model._orig_mod.``) prefix, or a compiled bare state
    dict's ``_orig_mod.``, from every key."""
    stripped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        prefix = next((p for p in MODEL_PREFIXES if key.startswith(p)), "")
        name = key[len(prefix):]
        if name in stripped:
            raise FomoInputError(f"the state dict holds {name!r} twice (with and without a compiled prefix)")
        stripped[name] = tensor
    return stripped
