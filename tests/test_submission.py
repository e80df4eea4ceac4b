"""From trained folds to challenge outputs as the FOMO25 validator produces and checks them: fomo_export_submission,
then container/predict.py in a fresh process per subject, on read-only subject folders, each output checked with
the validator's rules (one float; a {0, 1} mask with the first image's shape) plus affine and dtype."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from fresh_process import run_fresh
from test_container import TASK_FLAGS, TASK_TYPES, session_files
from trained_models import FOLDS, NNUNET_DIRS, TrainedModel, use_model

from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.inference.submission import MANIFEST, PREDICTION_CHECKPOINT_KEYS
from nnunet_ext.inference.submission import main as export_main

REPO = Path(__file__).resolve().parents[1]
PREDICT_PY = REPO / "container" / "predict.py"
#: A fresh process imports torch and nnU-Net and loads the folds: a few seconds on a CPU.
CALL_TIMEOUT_S = 180
#: Task 2 subjects that are not 1 mm RAS: 2.5 mm slices, and the test_container grid (axes swapped, one flipped).
ANISOTROPIC_SPACING = (1.0, 1.0, 2.5)


def export(model: TrainedModel, task_id: int, model_dir: Path, monkeypatch) -> Path:
    use_model(monkeypatch, model)
    assert export_main(["--task", str(task_id), "-d", model.dataset_id, "-tr", model.trainer,
                        "-f", *map(str, FOLDS), "-o", str(model_dir)]) == 0
    return model_dir / f"task{task_id}"


def read_only_subject(model: TrainedModel, task_id: int, root: Path, number: int, **geometry) -> Path:
    """``root/sub_<N>/ses_1/<seq>.nii.gz``, made read-only like the validator's ``--bind ...:/input:ro``."""
    folder = root / f"sub_{number}" / "ses_1"
    session_files(model, task_id, folder, **geometry)
    for path in (*folder.iterdir(), folder, folder.parent):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return folder.parent


def validator_call(subject: Path, task_id: int, output: Path, model_dir: Path) -> subprocess.CompletedProcess:
    """One ``python /app/predict.py --<seq> FILE ... --output FILE`` in a fresh process, files matched to sequences
    by a case-insensitive substring of their names, no nnU-Net folders in the environment."""
    files = sorted((subject / "ses_1").iterdir())
    argv = [arg for flag in TASK_FLAGS[task_id]
            for arg in (f"--{flag}", str(next(p for p in files if flag in p.name.lower())))]
    environment = {k: v for k, v in os.environ.items() if k not in NNUNET_DIRS}
    environment.update(FOMO_MODEL_DIR=str(model_dir), nnUNet_def_n_proc="1")
    return run_fresh([sys.executable, str(PREDICT_PY), *argv, "--output", str(output), "--device", "cpu"],
                     env=environment, timeout=CALL_TIMEOUT_S)


@pytest.fixture
def writable_cleanup(tmp_path):
    """Give write permission back so that pytest can remove the read-only subject folders."""
    yield
    for path in tmp_path.rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_export_holds_exactly_what_prediction_needs(trained_model, tmp_path, monkeypatch, capsys):
    model = trained_model("classification")
    folder = export(model, 1, tmp_path / "models", monkeypatch)
    assert "exported task 1 (2 fold(s), checkpoint_final.pth)" in capsys.readouterr().out
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["dataset.json", "fold_0/checkpoint_final.pth", "fold_1/checkpoint_final.pth", MANIFEST,
                     "plans.json"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["trainer"] == model.trainer and manifest["folds"] == list(FOLDS)
    assert sorted(manifest["sha256"]) == sorted(set(files) - {MANIFEST})
    assert all(len(digest) == 64 for digest in manifest["sha256"].values())
    for fold in FOLDS:  # only what the predictor reads, the weights unchanged; the optimizer state stays behind
        exported = torch.load(folder / f"fold_{fold}/checkpoint_final.pth", weights_only=False)
        trained = torch.load(model.model_folder / f"fold_{fold}/checkpoint_final.pth", weights_only=False)
        assert sorted(exported) == sorted(PREDICTION_CHECKPOINT_KEYS) and "optimizer_state" in trained
        assert exported["network_weights"].keys() == trained["network_weights"].keys()
        assert all(torch.equal(exported["network_weights"][k], v) for k, v in trained["network_weights"].items())
        assert exported["trainer_name"] == trained["trainer_name"] == model.trainer


def test_export_refuses_an_unreadable_checkpoint(trained_model, tmp_path, monkeypatch, capsys):
    model = trained_model("classification")
    broken = tmp_path / "broken_model"
    shutil.copytree(model.model_folder, broken)
    checkpoint = broken / "fold_1" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a copy cut short
    monkeypatch.setattr("nnunet_ext.inference.submission.trained_model_folder", lambda *args: broken)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--task", "1", "-d", model.dataset_id, "-tr", model.trainer, "-f", *map(str, FOLDS),
                     "-o", str(tmp_path / "models")])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert f"{checkpoint}: unreadable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "models" / "task1").exists()


@pytest.mark.parametrize("argv, message", [
    (["--task", "3"], "holds a task 1 model, not task 3"),
    (["--task", "1", "-f", "0", "4"], "fold(s) [4] have no checkpoint_final.pth"),
], ids=["other task", "missing fold"])
def test_export_refuses_the_wrong_task_or_missing_folds(argv, message, trained_model, tmp_path, monkeypatch, capsys):
    model = trained_model("classification")
    use_model(monkeypatch, model)
    with pytest.raises(SystemExit) as exit_info:
        export_main([*argv, "-d", model.dataset_id, "-tr", model.trainer, "-o", str(tmp_path / "models")])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("task_id", [1, 3])
def test_case_level_outputs_parse_as_one_float(task_id, trained_model, tmp_path, monkeypatch, writable_cleanup):
    model = trained_model(TASK_TYPES[task_id])
    model_dir = export(model, task_id, tmp_path / "models", monkeypatch).parent
    out = tmp_path / "out"
    out.mkdir()
    subject = read_only_subject(model, task_id, tmp_path / "input", 1)
    done = validator_call(subject, task_id, out / "sub_1.txt", model_dir)
    assert done.returncode == 0, done.stderr
    text = (out / "sub_1.txt").read_text()
    value = float(text)  # the validator's check
    assert text == f"{value!r}\n"  # every digit of the double: no 3-decimal rounding that ties AUROC
    if task_id == 1:
        assert 0.0 <= value <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["sub_1.txt"]  # writes only its --output


@pytest.mark.parametrize("geometry", [{}, {"spacing": ANISOTROPIC_SPACING}], ids=["non-RAS", "anisotropic non-RAS"])
def test_masks_have_the_first_images_shape_affine_and_binary_uint8_values(geometry, trained_model, tmp_path,
                                                                          monkeypatch, writable_cleanup):
    model = trained_model("segmentation")
    model_dir = export(model, 2, tmp_path / "models", monkeypatch).parent
    out = tmp_path / "out"
    out.mkdir()
    subject = read_only_subject(model, 2, tmp_path / "input", 2, **geometry)
    done = validator_call(subject, 2, out / "sub_2.nii.gz", model_dir)
    assert done.returncode == 0, done.stderr
    mask, first = nib.load(out / "sub_2.nii.gz"), nib.load(sorted((subject / "ses_1").iterdir())[0])
    values = np.unique(np.asanyarray(mask.dataobj))
    assert mask.shape == first.shape  # the validator's shape check
    assert set(values.tolist()) <= {0, 1}  # its binary check passes whenever the mask is not empty
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, first.affine, atol=1e-5)
    if values.tolist() == [0]:
        assert "the predicted mask is empty" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sub_2.nii.gz"]


def test_a_missing_file_fails_with_one_line_and_status_2(trained_model, tmp_path, monkeypatch, writable_cleanup):
    model = trained_model("regression")
    model_dir = export(model, 3, tmp_path / "models", monkeypatch).parent
    subject = read_only_subject(model, 3, tmp_path / "input", 3)
    done = run_fresh([sys.executable, str(PREDICT_PY), "--t1", str(subject / "ses_1" / "t1.nii.gz"),
                      "--t2", str(subject / "ses_1" / "absent.nii.gz"), "--output", str(tmp_path / "sub_3.txt"),
                      "--device", "cpu"], timeout=CALL_TIMEOUT_S, env={**os.environ, "FOMO_MODEL_DIR": str(model_dir)})
    assert done.returncode == EXIT_BAD_INPUT and "Traceback" not in done.stderr
    assert f"error: {subject / 'ses_1' / 'absent.nii.gz'}: image file does not exist" in done.stderr
    assert not (tmp_path / "sub_3.txt").exists()
