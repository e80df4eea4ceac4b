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


#: The process whose guard is installed, or None. Forked children read it to know that the handler they inherit
#: belongs to their parent.
_guard_owner: Optional[int] = None
_TERM = {signal.SIGTERM}


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(EXIT_SIGNAL_BASE + signum)


def _block_sigterm_across_fork() -> None:
    # A SIGTERM that reached a child between fork() and the reset below would be caught by the inherited handler's C
    # part and then dropped (CPython ignores a noted signal whose handler became SIG_DFL): the child would live on
    # and its parent wait forever. Held blocked across the fork, it stays pending and is acted on after the reset.
    if _guard_owner is not None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _TERM)


def _unblock_sigterm_in_parent() -> None:
    if _guard_owner is not None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERM)


def _restore_default_sigterm_in_child() -> None:
    # nnU-Net's fork pools end their workers with SIGTERM (Pool.terminate) and join them. A Python-level handler runs
    # only between bytecodes: a SIGTERM landing just before a worker blocks in a semaphore wait is noted and never
    # acted on, and the pool's join hangs for good. Children therefore never run with the guard's handler.
    global _guard_owner
    if _guard_owner is not None:
        _guard_owner = None
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERM)


os.register_at_fork(before=_block_sigterm_across_fork, after_in_parent=_unblock_sigterm_in_parent,
                    after_in_child=_restore_default_sigterm_in_child)


@contextlib.contextmanager
def terminate_gracefully() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs (in the main thread; elsewhere a no-op), in this
    process only: children forked meanwhile start with SIGTERM's default action, before any of their code runs."""
    global _guard_owner
    if threading.current_thread() is not threading.main_thread() or _guard_owner is not None:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    _guard_owner = os.getpid()
    try:
        yield
    finally:
        _guard_owner = None
        signal.signal(signal.SIGTERM, previous)


#: How the commands' log lines look (the level first, so warnings stand out in a step's log).
LOG_FORMAT = "%(levelname)s %(message)s"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not to the stream of the moment it was made.

    ``fomo_demo`` runs the commands in one process, each with its output redirected into its own log file; a
    handler holding the first command's stream wrote into that file after it was closed ("I/O operation on
    closed file") and every later command's messages were lost.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


def configure_command_logging() -> None:
    """Our messages from INFO up, other libraries' from WARNING up, to the current ``sys.stderr``, once per
    process; a root logger that already has handlers (an embedding application, pytest) is left as it is."""
    root = logging.getLogger()
    if not root.handlers:
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
        # nnU-Net's own INFO lines (a line per copied file while planning) would drown ours
        log.setLevel(logging.INFO)


def cli_entry(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a console-script ``main``: its log messages go to the current stderr (:func:`configure_command_logging`);
    refused input ends with one ``error: <file>: <what>`` line and exit status
    :data:`EXIT_BAD_INPUT`; Ctrl-C and SIGTERM clean up and exit with 128 + the signal's number.

    Anything else (a bug) keeps its traceback: hiding it would make it impossible to report.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        configure_command_logging()
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
