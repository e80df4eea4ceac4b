"""Errors raised for bad user input, and the command-line wrapper that reports them."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

log = logging.getLogger("nnunet_ext")

#: Exit status of a command that refused its input (argparse uses 2 for bad arguments as well).
EXIT_BAD_INPUT = 2
#: A process ended by a signal exits with 128 + the signal's number (the shell's convention).
EXIT_SIGNAL_BASE = 128


class FomoInputError(ValueError):
    """Input that we refuse to process. The message names the file and what is wrong with it."""

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class Terminated(SystemExit):
    """SIGTERM, raised as an exception so that ``finally`` blocks and ``except BaseException`` clean-ups run
    (half-built folders are removed) before the process exits, as they do on Ctrl-C."""


def _raise_terminated(owner_pid: int, signum: int, frame: object) -> None:
    if os.getpid() != owner_pid:
        # A child forked inside the block (nnU-Net's and multiprocessing's fork pools) inherits the handler. Its
        # parent ends it with SIGTERM (Pool.terminate) and waits: an exception would run the child's exit clean-up,
        # which can block on the pool's locks, and the parent would wait forever. It dies as a child should.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(EXIT_SIGNAL_BASE + signum)


@contextlib.contextmanager
def terminate_gracefully() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (in the main thread; elsewhere a no-op), in this
    process only: children forked meanwhile keep SIGTERM's default action."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, functools.partial(_raise_terminated, os.getpid()))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cli_entry(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console-script ``main``: refused input ends with one ``error: <file>: <what>`` line and exit status
    :data:`EXIT_BAD_INPUT`; Ctrl-C and SIGTERM clean up and exit with 128 + the signal's number.

    Anything else (a bug) keeps its traceback: hiding it would make it impossible to report.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            with terminate_gracefully():
                return main(*args, **kwargs)
        except FomoInputError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(EXIT_SIGNAL_BASE + signal.SIGINT) from None
        except Terminated as e:
            print("terminated", file=sys.stderr)
            raise SystemExit(e.code) from None

    return wrapper
