"""Self-supervised pretraining inside nnU-Net, end to end on a tiny synthetic pool: ``fomo_make_synthetic --task
pretrain`` -> ``fomo_convert --task pretrain`` -> ``fomo_plan_and_preprocess`` -> nnU-Net's ``run_training`` of
``FomoPretrainTrainer_debug`` -> ``fomo_export_pretrained`` -> a checkpoint in the layout of ``epoch=12.ckpt``, which
``fomo_inspect_checkpoint`` accepts and from which continued pretraining starts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.run.run_training import run_training

from nnunet_ext.dataset_conversion import convert, synthetic
from nnunet_ext.env import EXT_TRAINER_VAR, TRAINER_LOOKUP_FOLDER
from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.pretrained import export, fomo_layout, inspect
from nnunet_ext.pretrained.checkpoint_io import MODEL_PREFIX
from nnunet_ext.pretrained.testing import make_fomo_checkpoint
from nnunet_ext.trainers.pretraining import VALIDATION_LOSS_KEY, held_out_subjects

DATASET_ID = 961
DATASET = f"Dataset{DATASET_ID:03d}_FOMOPretrainingPool"
TRAINER = "FomoPretrainTrainer_debug"
SUBJECTS = 6
STARTING_FILTERS = 4
#: Small heads: about 25 voxels per axis at the 2 mm the pool is planned at.
SCALE = 0.35
SHAPE = (40, 48, 40)
NNUNET_DIRS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
TRAINING_ENV = {"nnUNet_def_n_proc": "1", "nnUNet_n_proc_DA": "0", EXT_TRAINER_VAR: str(TRAINER_LOOKUP_FOLDER)}


@dataclass(frozen=True)
class Pool:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "nnUNet_raw" / DATASET

    @property
    def fold_folder(self) -> Path:
        return self.root / "nnUNet_results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_all"


def use(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    for name in NNUNET_DIRS:
        (root / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(root / name))
    for name, value in TRAINING_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("FOMO_PRETRAINED", raising=False)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Pool:
    """The pool converted, planned (2 mm, 4 filters) and pretrained for a few iterations, once for the module."""
    from nnunet_ext.preprocessing.plan_and_preprocess import main as plan

    root = tmp_path_factory.mktemp("pretraining")
    with pytest.MonkeyPatch.context() as monkeypatch:
        use(monkeypatch, root)
        synthetic.make_synthetic_pool(root / "pool", SUBJECTS, seed=0, shape=SHAPE, scale=SCALE)
        assert convert.main(["--task", "pretrain", "-i", str(root / "pool"), "-d", str(DATASET_ID)]) == 0
        assert plan(["-d", str(DATASET_ID), "--spacing", "2", "--starting-filters", str(STARTING_FILTERS),
                     "-np", "1"]) == 0
        run_training(str(DATASET_ID), "3d_fullres", "all", TRAINER, device=torch.device("cpu"))
    return Pool(root)


def test_every_scan_becomes_one_single_channel_case_with_its_brain_mask(pool):
    scans = sorted(pool.root.glob("pool/sub_*/ses_*/*.nii.gz"))
    dataset_json = json.loads((pool.raw / "dataset.json").read_text())
    assert dataset_json["channel_names"] == {"0": "MRI"} and dataset_json["numTraining"] == len(scans)
    fomo = dataset_json["fomo"]
    assert fomo["task_type"] == "pretraining"
    expected = {f"{s.parts[-3]}_{s.parts[-2]}_{s.name.split('.')[0].replace('_', '')}" for s in scans}
    assert set(fomo["subjects"]) == expected
    assert all(case.startswith(subject + "_") for case, subject in fomo["subjects"].items())
    case = sorted(expected)[0]
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(pool.raw / "imagesTr" / f"{case}_0000.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(pool.raw / "labelsTr" / f"{case}.nii.gz")))
    assert np.array_equal(label, (image != 0).astype(label.dtype)) and 0 < label.mean() < 1
    assert not (pool.raw / "imagesTr" / f"{case}_0001.nii.gz").exists()


def test_folds_and_the_held_out_scans_are_whole_subjects(pool):
    subjects = json.loads((pool.raw / "dataset.json").read_text())["fomo"]["subjects"]
    for fold in json.loads((pool.raw / "splits_final.json").read_text()):
        assert not {subjects[c] for c in fold["train"]} & {subjects[c] for c in fold["val"]}
    held_out = held_out_subjects(list(subjects.values()))
    summary = json.loads((pool.fold_folder / "validation" / "summary.json").read_text())
    assert set(summary["per_case"]) == {case for case, subject in subjects.items() if subject in held_out}
    assert summary["metrics"]["reconstruction_mse"] == pytest.approx(np.mean(list(summary["per_case"].values())))


def test_the_trainer_logs_the_held_out_loss_and_records_the_fomo_recipe(pool):
    checkpoint = torch.load(pool.fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    history = checkpoint["logging"][VALIDATION_LOSS_KEY]
    assert len(history) == 2 and all(np.isfinite(history))
    recipe = json.loads((pool.fold_folder / "pretraining_recipe.json").read_text())
    assert (recipe["mask_patch_size"], recipe["mask_ratio"], recipe["rec_loss_masked_only"]) == (4, 0.6, False)
    # the network has exactly the FOMO layout: no deep-supervision output convs besides the reconstruction
    assert not [key for key in checkpoint["network_weights"] if "seg_layers" in key and ".3." not in key]


def test_the_export_has_the_layout_of_epoch_12(pool, tmp_path, monkeypatch):
    use(monkeypatch, pool.root)
    out = tmp_path / "model.ckpt"
    assert export.main(["-d", str(DATASET_ID), "-tr", TRAINER, "-o", str(out)]) == 0
    exported = torch.load(out, map_location="cpu", weights_only=False)
    reference = torch.load(make_fomo_checkpoint(tmp_path / "reference.ckpt", STARTING_FILTERS), map_location="cpu",
                           weights_only=False)
    # the same top-level Lightning keys; MixedPrecision holds a GPU run's gradient scaler, which a CPU run has not
    assert set(exported) == set(reference) - {"MixedPrecision"}
    spec = fomo_layout.FomoLayout(STARTING_FILTERS, decoder_convs=1).expected_shapes()
    assert {key: tuple(t.shape) for key, t in exported["state_dict"].items()} == \
        {MODEL_PREFIX + key: shape for key, shape in spec.items()}
    trained = torch.load(pool.fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert torch.equal(exported["state_dict"]["model.encoder.in_conv.conv1.conv.weight"],
                       trained["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"])
    hparams = exported["hyper_parameters"]
    assert hparams["model_name"] == f"unet_f{STARTING_FILTERS}_lw_dec"
    assert (hparams["mask_ratio"], hparams["mask_patch_size"], hparams["input_channels"]) == (0.6, 4, 1)
    info = inspect.inspect_checkpoint(out)
    assert not inspect.checkpoint_problems(info)
    # never overwritten without being asked
    with pytest.raises(SystemExit) as refused:
        export.main(["-d", str(DATASET_ID), "-tr", TRAINER, "-o", str(out)])
    assert refused.value.code == EXIT_BAD_INPUT


def test_continued_pretraining_starts_from_the_exported_checkpoint(pool, tmp_path, monkeypatch):
    use(monkeypatch, pool.root)
    out = tmp_path / "model.ckpt"
    assert export.main(["-d", str(DATASET_ID), "-tr", TRAINER, "-o", str(out)]) == 0
    monkeypatch.setenv("FOMO_PRETRAINED", str(out))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    (tmp_path / "results").mkdir()
    run_training(str(DATASET_ID), "3d_fullres", "all", TRAINER, device=torch.device("cpu"))
    fold = tmp_path / "results" / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres" / "fold_all"
    report = json.loads((fold / "pretrained_transfer_report.json").read_text())
    loaded = [e for e in report["entries"] if e["status"] == "loaded"]
    assert len(loaded) == len(fomo_layout.FomoLayout(STARTING_FILTERS, 1).expected_shapes())  # all 66, out_conv too
    assert report["sha256"] == export.sha256_of_file(out)


def test_options_a_pool_cannot_keep_are_refused(tmp_path, monkeypatch, capsys):
    use(monkeypatch, tmp_path)
    synthetic.make_synthetic_pool(tmp_path / "pool", 2, shape=(16, 16, 16), scale=SCALE)
    for option in ("--test-fraction", "--train-fraction"):
        with pytest.raises(SystemExit) as refused:
            convert.main(["--task", "pretrain", "-i", str(tmp_path / "pool"), "-d", "5", option, "0.2"])
        assert refused.value.code == EXIT_BAD_INPUT and option in capsys.readouterr().err
    assert not list((tmp_path / "nnUNet_raw").iterdir())


def test_two_ranks_pretrain_in_step_under_ddp(pool, tmp_path, monkeypatch):
    """nnU-Net's ``-num_gpus 2`` path with two gloo ranks: training proceeds, the ranks end with identical weights
    and log the same held-out loss (each scores its share of the held-out scans; the sums are gathered)."""
    from ddp_gloo import train_ddp_on_cpu

    use(monkeypatch, pool.root)
    (tmp_path / "results").mkdir()
    env = {**{name: str(pool.root / name) for name in NNUNET_DIRS}, **TRAINING_ENV,
           "nnUNet_results": str(tmp_path / "results"), "nnUNet_compile": "false"}
    ranks = train_ddp_on_cpu(str(DATASET_ID), "3d_fullres", "all", TRAINER, tmp_path, env)
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])
    losses = [rank["logging"][VALIDATION_LOSS_KEY] for rank in ranks]
    assert len(losses[0]) == 2 and losses[0] == losses[1] and all(np.isfinite(losses[0]))
    single = torch.load(pool.fold_folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert not all(torch.equal(single["network_weights"][k], ranks[0]["state"][k]) for k in ranks[0]["state"])
