"""Atomic writes: a crash never leaves a half-written file or a dataset folder that looks complete."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Sequence, Union

from nnunet_ext.errors import FomoInputError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
#: Ending of a folder being built by :func:`atomic_directory`.
PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file: mkstemp makes 0600 files, which would hide results from colleagues."""
    return 0o666 & ~_umask()


def _default_dir_mode() -> int:
    """The mode ``mkdir`` would give a new folder (mkdtemp makes 0700 ones)."""
    return 0o777 & ~_umask()


def check_writable_folder(path: PathLike, what: str = "output path") -> Path:
    """``path`` as a folder to write into, refusing one that (or whose parent) is a file, or whose nearest existing
    folder cannot be written; ``what`` names it in the error (``nnUNet_raw``). Creates nothing."""
    path = Path(path)
    for part in (path, *path.parents):
        if not part.exists():
            continue
        if not part.is_dir():
            raise FomoInputError(f"{what} is a file, not a folder: choose another" if part == path else
                                 f"cannot create {what} {path}: {part} is a file", part)
        if not os.access(part, os.W_OK | os.X_OK):
            raise FomoInputError(f"cannot write into {what}: {part} is not writable", path)
        break
    return path


def require_output_folder(path: PathLike) -> Path:
    """``path`` as a folder to write into (see :func:`check_writable_folder`): created if missing, then proven
    writable by creating and removing a file in it (permission bits tell nothing to root, nor of /proc). Anything
    the system refuses is one error naming the path."""
    path = check_writable_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write_test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FomoInputError(f"cannot write the output here ({e.strerror or e})", path) from None
    return path


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_csv(path: PathLike, records: Sequence[Mapping[str, Any]]) -> None:
    """Write ``records`` as a CSV table (columns from the first record's keys) to ``path`` atomically."""
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(path, table.getvalue())


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON atomically (see :func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def _partial_prefix(final: Path, pid: int) -> str:
    return f".{final.name}.{pid}."


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(final: Path) -> List[Path]:
    """Remove the half-built folders of ``final`` left by runs that were killed (SIGKILL, power loss); returns them.

    A partial folder names the process that builds it: one whose process still runs is left alone, with a warning.
    """
    removed = []
    for partial in sorted(final.parent.glob(f".{glob.escape(final.name)}.*{PARTIAL_SUFFIX}")):
        match = re.fullmatch(rf"\.{re.escape(final.name)}\.(\d+)\..*{re.escape(PARTIAL_SUFFIX)}", partial.name)
        if match and _process_alive(int(match.group(1))) and int(match.group(1)) != os.getpid():
            log.warning("%s is being built by process %s; leaving it alone", partial, match.group(1))
            continue
        log.warning("removing %s, left by an interrupted run", partial)
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    return removed


def _new_partial(final: Path) -> Path:
    """A fresh partial folder beside ``final``, named by this process, once stale ones are removed."""
    remove_stale_partials(final)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=_partial_prefix(final, os.getpid()), suffix=PARTIAL_SUFFIX))


def _move_into_place(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing folder there is moved aside first and removed only afterwards."""
    if not (target.is_dir() and not target.is_symlink()):
        os.replace(source, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``final`` and rename it into place on success.

    On any error the temporary folder is removed and an existing ``final`` is left untouched.
    With ``overwrite``, an existing ``final`` is replaced only once the new one is complete.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_partial(final)
    try:
        yield tmp
        os.chmod(tmp, _default_dir_mode())
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_directory(final: PathLike) -> Iterator[Path]:
    """Write a command's output into a temporary folder beside ``final``; only on success move its entries into
    ``final`` (created if missing), each replacing the entry of the same name.

    A command that fails half-way (refused input, a crash, Ctrl-C) thus leaves no half-written output, and
    whatever else ``final`` holds is never touched.
    """
    final = Path(final)
    require_output_folder(final.parent)
    if final.exists():
        require_output_folder(final)
    tmp = _new_partial(final)
    try:
        yield tmp
        final.mkdir(exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            _move_into_place(entry, final / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
