"""The device the inference commands run on, checked before any heavy work.

A CPU user who leaves the device option out gets the CPU (``auto``), with one line saying which device was picked;
a device asked for by name that this machine lacks is refused naming the option, instead of failing deep inside
torch.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict

import torch

from nnunet_ext.errors import FomoInputError

log = logging.getLogger(__name__)

#: The device option's value that picks what the machine has: CUDA when a GPU is visible, else the CPU.
AUTO_DEVICE = "auto"
CUDA, CPU, MPS = "cuda", "cpu", "mps"
#: Whether this machine has each device that can be named (the CPU always); looked up at each call, as torch's own
#: checks are.
DEVICE_AVAILABLE: Dict[str, Callable[[], bool]] = {
    CUDA: lambda: torch.cuda.is_available(),
    MPS: lambda: torch.backends.mps.is_available(),
    CPU: lambda: True,
}
DEVICE_CHOICES = (AUTO_DEVICE, *DEVICE_AVAILABLE)


def resolve_device(requested: str, option: str = "-device") -> torch.device:
    """The device ``requested`` on the command line (``option``): ``auto`` picks CUDA when available, else the CPU,
    and says which; a named device this machine lacks is refused naming the option."""
    if requested == AUTO_DEVICE:
        picked = CUDA if DEVICE_AVAILABLE[CUDA]() else CPU
        log.info("%s %s: predicting on %s (%s)", option, AUTO_DEVICE, picked,
                 "a CUDA GPU is available" if picked == CUDA else "no CUDA GPU found")
        return torch.device(picked)
    if requested not in DEVICE_AVAILABLE:
        raise FomoInputError(f"{option} {requested}: unknown device; choose one of {', '.join(DEVICE_CHOICES)}")
    if not DEVICE_AVAILABLE[requested]():
        raise FomoInputError(f"{option} {requested}: this machine has no {requested} device (torch sees none); "
                             f"use {option} {CPU}, or {option} {AUTO_DEVICE} to take a GPU when there is one")
    return torch.device(requested)
