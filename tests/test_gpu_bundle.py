"""``benchmarks/with_gpu_bundle.sh``: on a lent GPU it unpacks the parts that ``benchmarks/gpu_bundle.sh`` made and
carried there one per call, gzips the images again and runs a command with the bundled packages importable; a part
missing (a machine that went back between the calls) is said in one line. ``gpu_bundle.sh`` itself needs PyPI and
minutes (run by hand: benchmarks/README.md); here only its refusal of a folder that every call would send."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WITH_BUNDLE = REPO / "benchmarks" / "with_gpu_bundle.sh"
IMAGE_BYTES = b"a stand-in for a NIfTI image" * 100
#: Small enough for three parts or more.
PART_BYTES = 64


def make_parts(folder: Path, part_size: int) -> None:
    """The layout ``gpu_bundle.sh`` writes: ``gpu_bundle/{site,data}`` as one xz stream cut into ``part_*``."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for name, content in (("gpu_bundle/site/bundled_marker.py", b"WHERE = 'bundle'\n"),
                              ("gpu_bundle/data/unlabelled_mri/sub_1/ses_1/t1.nii", IMAGE_BYTES)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    packed = lzma.compress(stream.getvalue())
    folder.mkdir()
    for index, start in enumerate(range(0, len(packed), part_size)):
        (folder / f"part_a{'abcdefgh'[index]}").write_bytes(packed[start:start + part_size])


def run_with_bundle(parts: Path, into: Path, *command: str, python: str = "true") -> subprocess.CompletedProcess:
    """``python`` answers the script's import check (nnU-Net's imports take seconds): ``true`` passes it."""
    return subprocess.run(["bash", str(WITH_BUNDLE), "--parts", str(parts), "--into", str(into), *command],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": python})


def test_the_parts_are_unpacked_once_and_the_command_imports_the_bundled_packages(tmp_path: Path):
    make_parts(tmp_path / "parts", part_size=PART_BYTES)
    assert len(list((tmp_path / "parts").iterdir())) >= 3
    into = tmp_path / "into"
    into.mkdir()
    done = run_with_bundle(tmp_path / "parts", into, sys.executable, "-c",
                           "import bundled_marker; print(bundled_marker.WHERE)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "bundle"
    image = into / "gpu_bundle" / "data" / "unlabelled_mri" / "sub_1" / "ses_1" / "t1.nii.gz"
    assert gzip.decompress(image.read_bytes()) == IMAGE_BYTES  # the reader's name and bytes again
    for part in (tmp_path / "parts").iterdir():  # unpacked already: the parts are not read again
        part.unlink()
    assert run_with_bundle(tmp_path / "parts", into, "true").returncode == 0
    (into / "gpu_bundle" / ".unpacked").unlink()  # as if the first call's time limit cut the unpacking short
    assert run_with_bundle(tmp_path / "parts", into, "true").returncode == 2  # unpacked again: the parts are asked for
    assert not (into / "gpu_bundle").exists()


def test_a_missing_part_is_said_in_one_line_and_nothing_is_left_half_unpacked(tmp_path: Path):
    make_parts(tmp_path / "parts", part_size=PART_BYTES)
    (tmp_path / "parts" / "part_ab").unlink()
    into = tmp_path / "into"
    into.mkdir()
    done = run_with_bundle(tmp_path / "parts", into, "true")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"with_gpu_bundle.sh: the parts in {tmp_path / 'parts'} (part_aa part_ac")
    assert not (into / "gpu_bundle").exists()


def test_a_bundle_whose_packages_do_not_import_runs_nothing(tmp_path: Path):
    make_parts(tmp_path / "parts", part_size=PART_BYTES)
    done = run_with_bundle(tmp_path / "parts", tmp_path, "touch", str(tmp_path / "ran"), python="false")
    assert done.returncode == 2 and "the bundle's packages do not import with false" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_no_parts_or_no_command_is_refused(tmp_path: Path):
    done = run_with_bundle(tmp_path / "nothing", tmp_path, "true")
    assert done.returncode == 2 and "no parts in" in done.stderr
    done = run_with_bundle(tmp_path / "nothing", tmp_path)
    assert done.returncode == 2 and "no COMMAND to run" in done.stderr


def test_the_bundle_is_refused_in_a_folder_that_git_does_not_ignore():
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_bundle.sh"), "benchmarks"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "benchmarks is not ignored by git" in done.stderr
