"""What every benchmark script does around its measurement: its common options checked before anything is created,
a work folder and a log for the libraries' output under ``--out``, then its figures as JSON (for machines) and as a
printed table (for people)."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from nnunet_ext.errors import FomoInputError


#: The device option that needs a GPU.
CUDA = "cuda"


def check_out_folder(out: Path) -> Path:
    """``--out`` as a folder to write into, refusing (without creating anything) a file or a folder that cannot be
    written: the benchmark would fail after minutes of work otherwise."""
    from nnunet_ext.utils.files import check_writable_folder

    return check_writable_folder(out, "--out")


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` on a machine where torch sees no CUDA GPU (torch would fail at the first tensor)."""
    if device == CUDA:
        import torch

        if not torch.cuda.is_available():
            raise FomoInputError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu")


@contextlib.contextmanager
def quiet_work_folder(out: Path, stem: str) -> Iterator[Path]:
    """A temporary work folder under ``out`` (removed afterwards) while stdout and stderr go to ``out/<stem>.log``
    at the file-descriptor level (worker processes and C libraries included): nnU-Net prints plans, progress bars
    and warnings that would bury the table."""
    from nnunet_ext.demo import output_to

    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{stem}.log"
    log.unlink(missing_ok=True)  # output_to appends: the log of this run only
    print(f"{Path(sys.argv[0]).name}: the libraries' output goes to {log}", flush=True)
    with tempfile.TemporaryDirectory(dir=out) as work, output_to(log):
        yield Path(work)


def write_report(out: Path, stem: str, report: Mapping[str, Any], table: str) -> Path:
    """``out/<stem>.json`` written atomically, then ``table`` printed; returns the JSON's path."""
    from nnunet_ext.evaluation.report import json_safe
    from nnunet_ext.utils.files import atomic_write_json

    path = out / f"{stem}.json"
    atomic_write_json(path, json_safe(dict(report)))
    print(table)
    print(f"Wrote {path}.")
    return path
