"""Atomic writes: readable results, nothing half-written, nothing of the user's lost."""

from __future__ import annotations

import os
import stat

import pytest

from nnunet_ext.utils.files import atomic_directory, atomic_write_json, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_gets_the_mode_of_a_normal_file(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(tmp_path / "a.json") == 0o666 & ~umask
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.md"]


def test_atomic_directory_is_complete_or_absent(tmp_path):
    final = tmp_path / "Dataset001_X"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as d:
            (d / "half").write_text("x")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []

    with atomic_directory(final) as d:
        atomic_write_text(d / "dataset.json", "{}")
    assert (final / "dataset.json").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(final) == 0o777 & ~umask


def test_atomic_directory_keeps_existing_unless_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        with atomic_directory(final):
            pass
    assert (final / "mine.txt").read_text() == "user data"

    with pytest.raises(RuntimeError):
        with atomic_directory(final, overwrite=True) as d:
            raise RuntimeError("interrupted")
    assert (final / "mine.txt").read_text() == "user data"

    with atomic_directory(final, overwrite=True) as d:
        (d / "new.txt").write_text("new")
    assert sorted(os.listdir(final)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
