"""argparse types that check an option's range, so that a bad value is an argparse error (exit 2, one line naming
the option) before any work starts, never a traceback from deep inside."""

from __future__ import annotations

import argparse
import math
from typing import Callable, Union

#: nnU-Net's name for training on every case (no held-out fold).
ALL_FOLDS = "all"


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An integer in ``[low, high]``."""

    def parse(text: str) -> int:
        value = int_at_least(low)(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {value}")
        return value

    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def float_in(low: float, high: float) -> Callable[[str], float]:
    """A finite number in ``[low, high]``."""

    def parse(text: str) -> float:
        value = _finite_float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {value:g}")
        return value

    return parse


def fraction(text: str) -> float:
    """A share in (0, 1]: more than nothing, at most all."""
    value = _finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def fold(text: str) -> Union[int, str]:
    """A cross-validation fold as nnU-Net takes it: a non-negative integer or ``all``."""
    if text == ALL_FOLDS:
        return text
    try:
        return int_at_least(0)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"a fold is a non-negative integer or {ALL_FOLDS!r}, got {text!r}") from None
