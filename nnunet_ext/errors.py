"""Errors raised for bad user input, and the command-line wrapper that reports them."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Optional, Union

log = logging.getLogger("nnunet_ext")

#: Exit status of a command that refused its input (argparse uses 2 for bad arguments as well).
EXIT_BAD_INPUT = 2


class FomoInputError(ValueError):
    """Input that we refuse to process. The message names the file and what is wrong with it."""

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


def cli_entry(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console-script ``main`` so that refused input ends with one clear line and a non-zero exit.

    Anything else (a bug) keeps its traceback: hiding it would make it impossible to report.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except FomoInputError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper
