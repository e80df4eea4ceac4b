"""The real T1-only IXI brain-age data (PSR orientation, uint8, 2 mm) converts as Task 3 and passes nnU-Net's check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset
from nnunet_ext.dataset_conversion.fomo_reader import RAS_DIRECTION
from nnunet_ext.dataset_conversion.tasks import FOMO_KEY

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi_brain_age"  # <repo>/../shared
#: A subset keeps the test fast; enough subjects for five folds.
N_SUBJECTS = 12

pytestmark = pytest.mark.skipif(not IXI.is_dir(), reason=f"{IXI} not present")


@pytest.fixture
def ixi_subset(tmp_path: Path) -> Path:
    """The first subjects of the IXI folder, linked (not copied) into a FOMO task folder."""
    subjects = sorted(p.name for p in (IXI / "preprocessed").iterdir())[:N_SUBJECTS]
    for part in ("preprocessed", "labels"):
        (tmp_path / "ixi" / part).mkdir(parents=True)
        for subject in subjects:
            (tmp_path / "ixi" / part / subject).symlink_to(IXI / part / subject)
    return tmp_path / "ixi"


def test_ixi_converts_as_t1_only_task3(ixi_subset, nnunet_dirs):
    out = convert_fomo_dataset(3, ixi_subset, 43)
    verify_dataset_integrity(str(out), num_processes=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1"}
    fomo = meta[FOMO_KEY]
    assert len(fomo["targets"]) == N_SUBJECTS
    subject = next(iter(fomo["targets"]))[: -len("_ses_1")]
    assert fomo["targets"][f"{subject}_ses_1"] == float((IXI / "labels" / subject / "ses_1/label.txt").read_text())
    source = sitk.ReadImage(str(IXI / "preprocessed" / subject / "ses_1/t1.nii.gz"))
    written = sitk.ReadImage(str(out / "imagesTr" / f"{subject}_ses_1_0000.nii.gz"))
    # stored as PSR at 2 mm; converted to RAS by permuting and flipping the voxels, nothing resampled
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(source.GetDirection()) == "PSR"
    assert written.GetDirection() == RAS_DIRECTION and written.GetSpacing() == source.GetSpacing()
    np.testing.assert_allclose(sitk.GetArrayFromImage(written),
                               sitk.GetArrayFromImage(sitk.DICOMOrient(source, "RAS")), rtol=1e-5)
