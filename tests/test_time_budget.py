"""The time budget per case: the choice of folds and mirroring from given timings (a pure function), the folds'
out-of-fold ranking, and fomo_challenge_predict --time-budget once on a tiny model (the chosen folds and mirroring
are the ones predicted with: the value equals fomo_predict's with them)."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import pytest
import SimpleITK as sitk
from test_container import TASK_FLAGS, run, session_files
from trained_models import use_model

from nnunet_ext.dataset_conversion.fomo_reader import to_ras
from nnunet_ext.errors import FomoInputError
from nnunet_ext.inference.predict import main as fomo_predict
from nnunet_ext.inference.submission import FOLD_RANKING_KEY, MANIFEST, TIME_BUDGET_KEY
from nnunet_ext.inference.submission import main as export_main
from nnunet_ext.inference.time_budget import InferencePlan, Measurement, choose_plan, rank_folds

FIVE_FOLDS = (3, 0, 4, 1, 2)  # best out-of-fold first
#: 1 s per pass, one pass per fold (a case-level network), 8 mirrored copies (three axes), 2 s already spent.
CASE_LEVEL = Measurement(seconds_per_pass=1.0, passes_per_fold=1, mirrorings=8, elapsed_s=2.0)


@pytest.mark.parametrize("budget, folds, mirrored, fits", [
    (42.0, FIVE_FOLDS, True, True),  # 2 + 5 x 8: exactly the budget
    (41.9, FIVE_FOLDS, False, True),  # more folds before mirroring: 5 plain (7 s) beats 4 mirrored (34 s)
    (6.5, FIVE_FOLDS[:4], False, True),
    (3.0, FIVE_FOLDS[:1], False, True),
    (2.5, FIVE_FOLDS[:1], False, False),  # nothing fits: the cheapest, said so
])
def test_the_best_plan_that_fits_is_chosen(budget, folds, mirrored, fits) -> None:
    choice = choose_plan(FIVE_FOLDS, CASE_LEVEL, budget)
    assert (choice.plan, choice.fits) == (InferencePlan(folds, mirrored), fits)
    assert choice.predicted_s == pytest.approx(2.0 + len(folds) * (8 if mirrored else 1))


def test_segmentation_counts_every_tile_and_a_model_without_mirroring_is_never_mirrored() -> None:
    tiles = Measurement(seconds_per_pass=0.5, passes_per_fold=12, mirrorings=4, elapsed_s=10.0)
    # two folds mirrored: 10 + 2 x 12 x 4 x 0.5 = 58 s; plain: 10 + 2 x 12 x 0.5 = 22 s; one fold plain: 16 s
    assert choose_plan((1, 0), tiles, 58.0).plan == InferencePlan((1, 0), True)
    assert choose_plan((1, 0), tiles, 57.9).plan == InferencePlan((1, 0), False)
    assert choose_plan((1, 0), tiles, 21.9).plan == InferencePlan((1,), False)
    unmirrorable = Measurement(1.0, 1, 1, 0.0)
    assert choose_plan((0, 1), unmirrorable, 100.0).plan == InferencePlan((0, 1), False)


def write_summary(folder: Path, fold, summary: dict) -> None:
    path = folder / f"fold_{fold}" / "validation" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(summary))


def test_folds_rank_by_their_out_of_fold_metric_in_its_direction(tmp_path: Path) -> None:
    for fold, auroc in enumerate([0.7, math.nan, 0.9, 0.8]):
        write_summary(tmp_path / "cls", fold, {"metrics": {"auroc": auroc}})
    assert rank_folds(tmp_path / "cls", [0, 1, 2, 3], "classification") == [2, 3, 0, 1]  # undefined last
    for fold, mae in enumerate([7.0, 5.0, 6.0]):
        write_summary(tmp_path / "reg", fold, {"metrics": {"mae": mae}})
    assert rank_folds(tmp_path / "reg", [0, 1, 2], "regression") == [1, 2, 0]  # lower is better
    for fold, dice in enumerate([0.5, 0.6]):
        write_summary(tmp_path / "seg", fold, {"foreground_mean": {"Dice": dice}})
    assert rank_folds(tmp_path / "seg", [0, 1], "segmentation") == [1, 0]
    with pytest.raises(FomoInputError, match="no validation summary"):
        rank_folds(tmp_path / "seg", [0, 1, 2], "segmentation")


CHOICE = re.compile(r"time budget \S+ s per case: (\d) of 2 fold\(s\) \[([\d, ]+)\].*?, (mirrored|no mirroring)")


def test_the_container_predicts_with_what_the_budget_chose(trained_model, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """A budget nothing fits, from the export's manifest: the best out-of-fold fold alone, not mirrored, exactly
    fomo_predict's value with that fold and --disable_tta. A generous budget given as the flag: both folds, mirrored."""
    caplog.set_level(logging.INFO)
    model = trained_model("classification")
    use_model(monkeypatch, model)
    model_dir = tmp_path / "models"
    assert export_main(["--task", "1", "-d", model.dataset_id, "-tr", model.trainer, "-f", "0", "1",
                        "-o", str(model_dir), "--time-budget", "0.001"]) == 0
    best = rank_folds(model.model_folder, [0, 1], "classification")[0]
    manifest = json.loads((model_dir / "task1" / MANIFEST).read_text())
    assert manifest[FOLD_RANKING_KEY][0] == best and manifest[TIME_BUDGET_KEY] == 0.001
    monkeypatch.setenv("FOMO_MODEL_DIR", str(model_dir))
    files = session_files(model, 1, tmp_path / "input" / "ses_1")

    assert run(files, tmp_path / "out" / "sub_1.txt") == 0
    assert CHOICE.search(caplog.text).groups() == ("1", str(best), "no mirroring")
    assert "does NOT fit" in caplog.text
    caplog.clear()
    assert run(files, tmp_path / "out" / "sub_2.txt", "--time-budget", "1000") == 0  # the flag before the manifest
    assert CHOICE.search(caplog.text).groups() == ("2", ", ".join(map(str, manifest[FOLD_RANKING_KEY])), "mirrored")

    nnunet_style = tmp_path / "nnunet_style"
    nnunet_style.mkdir()
    for index, flag in enumerate(TASK_FLAGS[1][:2]):
        sitk.WriteImage(to_ras(sitk.ReadImage(str(files[flag]))), str(nnunet_style / f"sub_1_{index:04d}.nii.gz"))
    use_model(monkeypatch, model)
    assert fomo_predict(["-i", str(nnunet_style), "-o", str(tmp_path / "reference"), "-d", model.dataset_id,
                         "-tr", model.trainer, "-device", "cpu", "-f", str(best), "--disable_tta"]) == 0
    (expected,) = json.loads((tmp_path / "reference" / "predictions.json").read_text())
    assert float((tmp_path / "out" / "sub_1.txt").read_text()) == pytest.approx(expected["prediction"], abs=1e-6)
