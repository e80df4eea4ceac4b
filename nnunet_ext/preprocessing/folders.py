"""nnU-Net's data folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ...) checked before any work starts.

nnU-Net reads them from the environment and, given a file or a folder it cannot write, fails deep inside its
planning with a multi-line "could not find a dataset" message or an OSError traceback; here the variable is named.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnunet_ext.errors import FomoInputError
from nnunet_ext.utils.files import check_writable_folder


def _variable(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise FomoInputError(f"{name} is not set: export it (e.g. eval \"$(fomo_env --data-root DIR)\")")
    return Path(value)


def require_input_folder(name: str) -> Path:
    """The folder named by environment variable ``name``, refused unless it is an existing, readable folder."""
    path = _variable(name)
    if not path.is_dir():
        raise FomoInputError(f"{name} must name a folder, but this " + ("is a file" if path.exists() else
                                                                         "does not exist"), path)
    if not os.access(path, os.R_OK | os.X_OK):
        raise FomoInputError(f"{name} names a folder that cannot be read", path)
    return path


def require_writable_folder(name: str) -> Path:
    """The folder named by environment variable ``name``, refused unless nnU-Net can write into it: an existing,
    writable folder, or a missing one whose nearest existing parent is a writable folder (nnU-Net creates it)."""
    return check_writable_folder(_variable(name), name)
