"""The FOMO26 container contract on tiny trained models: the three tasks exported into one MODEL_DIR from one
pretrained checkpoint (another checkpoint refused), then, as FOMO26's validator (fomo26/container_templates) calls an
instance, ``python /app/predict.py`` once per subject with FOMO26's flags (``--dwi``; brain age from ``--t1`` alone)
on read-only input, every output into one folder and checked with the validator's rules; an empty mask is valid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fomo_files import brain_volume, write_nifti
from fresh_process import run_fresh
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from test_container import DIRECTION, TASK_TYPES, model_root, session_files
from test_submission import CALL_TIMEOUT_S, PREDICT_PY, export, read_only_subject, writable_cleanup  # noqa: F401
from trained_models import NNUNET_DIRS

from nnunet_ext.dataset_conversion.fomo_reader import to_ras
from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.inference.container import as_file_stems, main
from nnunet_ext.inference.inputs import session_from_files
from nnunet_ext.inference.predict import FoldEnsemble
from nnunet_ext.inference.submission import MANIFEST, PRETRAINED_KEY
from nnunet_ext.inference.submission import main as export_main

#: FOMO26's flags per task; the tiny models' two channels are the first two flags' files (T1 alone for Task 3).
FOMO26_FLAGS = {1: ("dwi", "flair", "adc", "swi"), 2: ("dwi", "flair", "t2s"), 3: ("t1",)}
#: The FOMO25 file names session_files writes that FOMO26 calls otherwise.
FOMO26_NAMES = {"dwi_b1000": "dwi"}


def fomo26_subject(model, task_id: int, root: Path, number: int) -> Path:
    """``root/sub_<N>/ses_1/`` holding exactly the files of FOMO26's flags for the task, read-only."""
    subject = read_only_subject(model, task_id, root, number)
    folder = subject / "ses_1"
    folder.chmod(0o755)
    for path in list(folder.iterdir()):
        flag = path.name[: -len(".nii.gz")]
        if FOMO26_NAMES.get(flag, flag) not in FOMO26_FLAGS[task_id]:
            path.unlink()
        elif flag in FOMO26_NAMES:
            path.rename(folder / f"{FOMO26_NAMES[flag]}.nii.gz")
    folder.chmod(0o555)
    return subject


def instance_exec(subject: Path, task_id: int, output: Path, model_dir: Path) -> subprocess.CompletedProcess:
    """``apptainer exec instance://... python /app/predict.py <flags> --output /output/<sub>.<ext>``: a new process
    in the running instance, which holds no nnU-Net folders."""
    files = {path.name[: -len(".nii.gz")]: path for path in (subject / "ses_1").iterdir()}
    argv = [arg for flag in FOMO26_FLAGS[task_id] for arg in (f"--{flag}", str(files[flag]))]
    environment = {k: v for k, v in os.environ.items() if k not in NNUNET_DIRS}
    environment.update(FOMO_MODEL_DIR=str(model_dir), nnUNet_def_n_proc="1")
    return run_fresh([sys.executable, str(PREDICT_PY), *argv, "--output", str(output), "--device", "cpu"],
                     env=environment, timeout=CALL_TIMEOUT_S)


def check_as_fomo26_validator(output: Path, task_id: int, inputs: list) -> None:
    """FOMO26's output checks: a ``.txt`` is one finite float ([0, 1] for classification); a mask is 3D,
    integer-valued, labels within 0..1, finite, the shape of an input, its affine neither all zero nor NaN."""
    if output.suffix == ".txt":
        value = float(output.read_text())
        assert np.isfinite(value)
        if task_id == 1:
            assert 0.0 <= value <= 1.0
        return
    mask = nib.load(output)
    data = np.asanyarray(mask.dataobj)
    assert data.ndim == 3 and np.issubdtype(data.dtype, np.integer) and np.all(np.isfinite(data))
    assert set(np.unique(data).tolist()) <= {0, 1}
    assert any(data.shape == nib.load(path).shape for path in inputs)
    assert not np.all(mask.affine == 0) and not np.any(np.isnan(mask.affine))


@pytest.mark.parametrize("task_id", [1, 2, 3])
def test_fomo26_validator_calls_each_task(task_id: int, trained_model, tmp_path: Path, monkeypatch,
                                          writable_cleanup) -> None:  # noqa: F811
    model_dir = tmp_path / "models"
    for task in (1, 2, 3):  # one MODEL_DIR, one pretrained checkpoint for every task (FOMO26's rule, the default)
        export(trained_model(TASK_TYPES[task]), task, model_dir, monkeypatch)
    model = trained_model(TASK_TYPES[task_id])
    out = tmp_path / "output"
    out.mkdir()
    subject = fomo26_subject(model, task_id, tmp_path / "input", task_id)
    output = out / f"sub_{task_id}{'.nii.gz' if task_id == 2 else '.txt'}"
    done = instance_exec(subject, task_id, output, model_dir)
    assert done.returncode == 0, done.stderr
    assert "following FOMO26's container rules" in done.stderr
    check_as_fomo26_validator(output, task_id, sorted((subject / "ses_1").iterdir()))
    if task_id == 3:  # the model was trained on T1 and T2: the T2 is a zero image, as fomo_convert writes one
        assert "no T2 image; predicting with a zero image in its place" in done.stderr
    else:  # --dwi fills the DWI channel
        assert "predicting with a zero image" not in done.stderr
        text = output.read_text() if output.suffix == ".txt" else None
        assert text is None or text == f"{float(text)!r}\n"  # full precision
    assert sorted(p.name for p in out.iterdir()) == [output.name]


@pytest.mark.parametrize("challenge, empty_line", [(None, "a valid answer under FOMO26's rules"),
                                                   ("fomo25", "the FOMO25 validator's {0, 1} check reports it")])
def test_an_empty_mask_is_written_and_valid_under_fomo26(challenge, empty_line, trained_model, tmp_path: Path,
                                                          monkeypatch, caplog) -> None:
    model = trained_model("segmentation")
    model_root(model, 2, tmp_path, monkeypatch)
    files = session_files(model, 2, tmp_path / "input" / "ses_1")
    files = {FOMO26_NAMES.get(flag, flag): path for flag, path in files.items()}  # --dwi: FOMO26's flags

    def segment_nothing(self, data, properties, output_truncated):  # logits of a network that finds nothing
        return self.write_segmentation(torch.zeros((len(self.dataset_json["labels"]), *data.shape[1:])), properties,
                                       output_truncated)

    monkeypatch.setattr(FoldEnsemble, "segment", segment_nothing)
    output = tmp_path / "output" / "sub_4.nii.gz"
    caplog.set_level("INFO")
    extra = ["--challenge", challenge] if challenge else []
    assert main([*(a for flag, path in files.items() for a in (f"--{flag}", str(path))), "--output", str(output),
                 *extra]) == 0
    assert empty_line in caplog.text
    assert ("following FOMO25's container rules (--challenge)" if challenge else
            "following FOMO26's container rules (the flags --dwi --flair --t2s are FOMO26's)") in caplog.text
    assert np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(output)))).tolist() == [0]
    check_as_fomo26_validator(output, 2, [files["dwi"]])


def test_a_model_from_another_pretrained_checkpoint_is_refused_under_fomo26(trained_model, tmp_path: Path,
                                                                             monkeypatch, capsys) -> None:
    model_dir = tmp_path / "models"
    export(trained_model("classification"), 1, model_dir, monkeypatch)
    regression = trained_model("regression")
    other = tmp_path / "other_checkpoint_model"
    shutil.copytree(regression.model_folder, other)
    plans = json.loads((other / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["fomo"]["pretrained"]["sha256"] = "0" * 64
    (other / "plans.json").write_text(json.dumps(plans))
    monkeypatch.setattr("nnunet_ext.inference.submission.trained_model_folder", lambda *args: other)
    argv = ["--task", "3", "-d", regression.dataset_id, "-tr", regression.trainer, "-f", "0", "-o", str(model_dir)]
    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "FOMO26 asks one pretrained checkpoint for every task" in capsys.readouterr().err
    assert not (model_dir / "task3").exists()
    assert export_main([*argv, "--challenge", "fomo25"]) == 0  # FOMO25 had no such rule
    assert json.loads((model_dir / "task3" / MANIFEST).read_text())[PRETRAINED_KEY]["sha256"] == "0" * 64


@pytest.mark.parametrize("channels, zero_t2", [({"0": "T1"}, False), ({"0": "T1", "1": "T2"}, True)],
                         ids=["T1-only model", "T1+T2 model"])
def test_brain_age_from_the_t1_alone(channels: dict, zero_t2: bool, tmp_path: Path, caplog) -> None:
    """FOMO26's ``--t1``: a model trained on T1 alone reads it as its one channel; a T1+T2 model gets a zero T2, as
    fomo_convert's default --missing-modality zeros writes one (said in the log)."""
    t1 = write_nifti(tmp_path / "t1.nii.gz", brain_volume((12, 14, 10), 0), direction=DIRECTION)
    dataset_json = {"channel_names": channels, "file_ending": ".nii.gz", "fomo": {"task_id": 3}}
    images, _ = session_from_files("sub_1", as_file_stems({"t1": t1}), dataset_json).read(SimpleITKIO())
    assert images.shape[0] == len(channels)
    np.testing.assert_array_equal(images[0], sitk.GetArrayFromImage(to_ras(sitk.ReadImage(str(t1)))))
    if zero_t2:
        assert not np.any(images[1])
    assert ("no T2 image; predicting with a zero image in its place" in caplog.text) == zero_t2
