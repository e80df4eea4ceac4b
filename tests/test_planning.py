"""fomo_plan_and_preprocess on a converted FOMO dataset: FOMO plans, the same intensities in training and
prediction, and nnU-Net's stock trainer building and training FomoUNet from the plans.

The dataset is a tiny hand-made FOMO tree (conftest's FomoTree), not ``make_synthetic_dataset``: its phantoms
have a real brain's size in millimetres, i.e. about 150^3 voxels at 1 mm, too slow to preprocess here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pydoc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import nibabel as nib
import numpy as np
import pytest
import torch
from nnunetv2.inference.data_iterators import preprocessing_iterator_fromfiles
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from conftest import FomoTree
from nnunet_ext.dataset_conversion.convert import convert_fomo_dataset
from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError
from nnunet_ext.networks import FomoUNet
from nnunet_ext.preprocessing.fomo_plans import FOMO_PLANS_KEY, LEGACY_CHANNEL_ADAPTATION, FomoPlansBlock
from nnunet_ext.preprocessing.normalization import FomoPretrainingNormalization, fomo_normalize
from nnunet_ext.preprocessing.plan_and_preprocess import main
from nnunet_ext.preprocessing.planner import (FULLRES, NETWORK_CLASS_NAME, PATCH_DIVISOR, FomoPlanner,
                                              FomoPlanSettings, check_patch_fits_median, default_patch_size,
                                              pretrained_spec, task_from_dataset_json)
from nnunet_ext.pretrained.key_mapping import DEFAULT_CHANNEL_ADAPTATION
from nnunet_ext.pretrained.testing import make_fomo_checkpoint

#: Planning, preprocessing and nnU-Net's prediction preprocessing in workers spawned as nnU-Net spawns them, which
#: must find our normalisation scheme by themselves (see ``worker_pools``).
pytestmark = pytest.mark.real_spawn

DATASET_ID = 2
PATCH = 32
FILTERS = 4
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
N_CASES = 6
SHAPE = (36, 40, 32)
#: One case with 3 mm slices: resampling to 1 mm changes its grid, which the equality test needs.
ANISOTROPIC_SHAPE = (36, 40, 12)
ANISOTROPIC_SPACING = (1.0, 1.0, 3.0)


@dataclass
class Planned:
    raw: Path
    preprocessed: Path
    plans_file: Path
    checkpoint: Path

    @property
    def plans(self) -> dict:
        return json.loads(self.plans_file.read_text())

    @property
    def dataset_json(self) -> dict:
        return json.loads((self.preprocessed / "dataset.json").read_text())


def write_fomo_task2(root: Path) -> Path:
    """A tiny FOMO Task 2 folder: isotropic 1 mm cases and one anisotropic case missing its SWI."""
    tree = FomoTree(root / "fomo-task2", 2)
    for subject in range(1, N_CASES):
        tree.add_case(f"sub_{subject}", shape=SHAPE, seed=subject)
    tree.add_case(f"sub_{N_CASES}", shape=ANISOTROPIC_SHAPE, spacing=ANISOTROPIC_SPACING, seed=N_CASES,
                  stems=["dwi_b1000", "flair"])
    return tree.root


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planned]:
    """A converted Task 2 dataset (segmentation, 3 channels), planned once through the console script's main()."""
    root = tmp_path_factory.mktemp("planning")
    with pytest.MonkeyPatch.context() as mp:
        for var in NNUNET_ENV:
            (root / var).mkdir()
            mp.setenv(var, str(root / var))
        mp.setenv("nnUNet_def_n_proc", "1")
        # what CPU users export for training; nnU-Net's own planning fails with it (torch.set_num_threads(0))
        mp.setenv("nnUNet_n_proc_DA", "0")
        raw = convert_fomo_dataset(2, write_fomo_task2(root), DATASET_ID)
        checkpoint = make_fomo_checkpoint(root / "epoch=12.ckpt", starting_filters=FILTERS)
        assert main(["-d", str(DATASET_ID), "--patch-size", *[str(PATCH)] * 3, "--starting-filters", str(FILTERS),
                     "--pretrained", str(checkpoint), "-np", "1"]) == 0
        preprocessed = root / "nnUNet_preprocessed" / raw.name
        yield Planned(raw, preprocessed, preprocessed / "nnUNetPlans.json", checkpoint)


def test_plans_hold_the_fomo_configuration_only(planned: Planned) -> None:
    plans = planned.plans
    assert list(plans["configurations"]) == [FULLRES]
    config = plans["configurations"][FULLRES]
    assert config["spacing"] == [1.0, 1.0, 1.0]
    assert config["patch_size"] == [PATCH] * 3 and config["batch_size"] == 2
    n_channels = len(planned.dataset_json["channel_names"])
    assert config["normalization_schemes"] == [FomoPretrainingNormalization.__name__] * n_channels
    assert config["use_mask_for_norm"] == [False] * n_channels
    assert config["preprocessor_name"] == "DefaultPreprocessor"
    architecture = config["architecture"]
    assert architecture["network_class_name"] == NETWORK_CLASS_NAME and pydoc.locate(NETWORK_CLASS_NAME) is FomoUNet
    assert architecture["_kw_requires_import"] == []
    assert architecture["arch_kwargs"]["starting_filters"] == FILTERS
    assert architecture["arch_kwargs"]["decoder_convs"] == 1
    # deep-supervision scales 1, 1/2, 1/4, 1/8 for FomoUNet's four decoder outputs
    assert ConfigurationManager(config).pool_op_kernel_sizes == [[1, 1, 1]] + [[2, 2, 2]] * 4


def test_plans_store_what_trainers_need(planned: Planned) -> None:
    block = FomoPlansBlock.from_configuration(planned.plans["configurations"][FULLRES])
    assert (block.task_type, block.num_outputs) == ("segmentation", 2)
    assert block.normalization == FomoPretrainingNormalization.__name__
    assert block.pretrained is not None
    assert block.pretrained.path == str(planned.checkpoint.resolve())
    assert block.pretrained.sha256 == hashlib.sha256(planned.checkpoint.read_bytes()).hexdigest()
    assert (block.pretrained.model, block.pretrained.decoder_layout, block.pretrained.starting_filters) == \
        ("unet_b", "unet_b_lw_dec", FILTERS)
    assert block.channel_adaptation == DEFAULT_CHANNEL_ADAPTATION == "first"


def test_plans_from_before_the_channel_adaptation_option_keep_averaging(planned: Planned) -> None:
    configuration = copy.deepcopy(planned.plans["configurations"][FULLRES])
    del configuration[FOMO_PLANS_KEY]["channel_adaptation"]
    assert FomoPlansBlock.from_configuration(configuration).channel_adaptation == LEGACY_CHANNEL_ADAPTATION == "average"


def normalise_then_resample_by_hand(files: List[str], plans_manager: PlansManager,
                                    configuration: ConfigurationManager) -> np.ndarray:
    """Our normaliser called directly, around nnU-Net's reading, cropping and resampling primitives."""
    data, properties = plans_manager.image_reader_writer_class().read_images(files)
    data = data.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]]).astype(np.float32)
    spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    data, _, _ = crop_to_nonzero(data)
    normalised = np.stack([fomo_normalize(channel) for channel in data])
    new_shape = compute_new_shape(data.shape[1:], spacing, configuration.spacing)
    return configuration.resampling_fn_data(normalised, new_shape, spacing, configuration.spacing)


def test_same_intensities_in_training_and_prediction(planned: Planned) -> None:
    """(a) preprocessed training data, (b) nnU-Net's prediction preprocessing in a spawned worker and in the
    sequential path, (c) a plain call of our normaliser: identical tensors."""
    plans_manager = PlansManager(str(planned.plans_file))
    configuration = plans_manager.get_configuration(FULLRES)
    dataset_json = planned.dataset_json
    case = f"sub_{N_CASES}_ses_1"  # anisotropic, with a zero-filled SWI channel
    files = [str(p) for p in sorted((planned.raw / "imagesTr").glob(f"{case}_*.nii.gz"))]

    dataset = nnUNetDatasetBlosc2(str(planned.preprocessed / configuration.data_identifier), [case])
    training = np.asarray(dataset.load_case(case)[0][:])
    spawned = next(iter(preprocessing_iterator_fromfiles([files], None, None, plans_manager, dataset_json,
                                                         configuration, num_processes=1)))["data"].numpy()
    sequential = configuration.preprocessor_class(verbose=False).run_case(files, None, plans_manager, configuration,
                                                                          dataset_json)[0]
    by_hand = normalise_then_resample_by_hand(files, plans_manager, configuration)

    assert training.shape[0] == len(files) and training.shape[1:] != nib.load(files[0]).shape
    assert np.all(training[-1] == 0.0)  # the missing modality
    for other in (spawned, sequential, by_hand):
        np.testing.assert_array_equal(training, other)
    # what reaches the network is the pretraining's [0, 1] range (cubic resampling may overshoot slightly)
    assert -0.1 < training.min() <= 0.0 and 1.0 <= training.max() < 1.1


def test_stock_trainer_builds_fomo_unet_and_trains_one_step(planned: Planned, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # augmentation in this process: no workers on 2 shared cores
    plans = planned.plans
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, FULLRES, 0, planned.dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.network, FomoUNet) and trainer.network.starting_filters == FILTERS

    dataloader_train, _ = trainer.get_dataloaders()
    batch = next(dataloader_train)
    assert tuple(batch["data"].shape) == (2, 3, PATCH, PATCH, PATCH)
    assert [tuple(t.shape[2:]) for t in batch["target"]] == [(PATCH // s,) * 3 for s in (1, 2, 4, 8)]
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(batch)["loss"]
    assert np.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.network.parameters()))


@pytest.mark.parametrize("layout, option", [({"starting_filters": 2 * FILTERS}, f"has {2 * FILTERS} starting filters"),
                                            ({"decoder_layout": "unet_b"}, r"and 2 conv\(s\) per decoder block")])
def test_a_checkpoint_that_does_not_fit_the_planned_network_is_refused(tmp_path: Path, layout: dict,
                                                                        option: str) -> None:
    checkpoint = make_fomo_checkpoint(tmp_path / "other.ckpt", **{"starting_filters": FILTERS, **layout})
    with pytest.raises(FomoInputError, match=option):
        pretrained_spec(FomoPlanSettings(starting_filters=FILTERS, pretrained=checkpoint))


def nan_checkpoint(path: Path) -> Path:
    checkpoint = torch.load(make_fomo_checkpoint(path, starting_filters=FILTERS), weights_only=False)
    next(iter(checkpoint["state_dict"].values())).fill_(float("nan"))
    torch.save(checkpoint, path)
    return path


def foreign_checkpoint(path: Path) -> Path:
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, path)
    return path


@pytest.mark.parametrize("make, message", [(nan_checkpoint, "hold NaN/Inf weights"),
                                           (foreign_checkpoint, "")], ids=["NaN weights", "fits no task"])
def test_planning_refuses_an_unusable_checkpoint_before_any_preprocessing(planned: Planned, tmp_path: Path, make,
                                                                           message: str, capsys) -> None:
    checkpoint = make(tmp_path / "bad.ckpt")
    fingerprint = planned.preprocessed / "dataset_fingerprint.json"
    before = {path: path.stat().st_mtime_ns for path in planned.preprocessed.rglob("*")}
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", str(DATASET_ID), "--starting-filters", str(FILTERS), "--pretrained", str(checkpoint), "-np", "1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"error: {checkpoint}: ") and message in error
    assert fingerprint in before and {p: p.stat().st_mtime_ns for p in planned.preprocessed.rglob("*")} == before


def test_the_fingerprint_intensity_statistics_hold_with_the_smaller_sample(planned: Planned) -> None:
    # nnU-Net draws the same number of foreground voxels from every case, so the sample's mean estimates the mean
    # of the per-case foreground means; with FOREGROUND_INTENSITY_SAMPLES it must still do so closely
    fingerprint = json.loads((planned.preprocessed / "dataset_fingerprint.json").read_text())
    for channel, stats in fingerprint["foreground_intensity_properties_per_channel"].items():
        case_means, case_stds = [], []
        for label in sorted((planned.raw / "labelsTr").glob("*.nii.gz")):
            case = label.name[:-len(".nii.gz")]
            image = np.asarray(nib.load(planned.raw / "imagesTr" / f"{case}_{int(channel):04d}.nii.gz").dataobj)
            foreground = image[np.asarray(nib.load(label).dataobj) > 0]
            if foreground.size == 0:  # nnU-Net samples nothing from a case without foreground
                continue
            case_means.append(float(foreground.mean()))
            case_stds.append(float(foreground.std()))
        assert stats["mean"] == pytest.approx(np.mean(case_means), abs=0.01 * float(np.mean(case_stds)))


def test_a_dataset_without_fomo_key_is_planned_as_segmentation(caplog: pytest.LogCaptureFixture) -> None:
    labels = {"background": 0, "tumour": 1, "oedema": 2}
    assert task_from_dataset_json({"labels": labels}, Path("dataset.json")) == ("segmentation", 3)
    assert "planning it as segmentation" in caplog.text


def test_an_invalid_fomo_key_is_refused() -> None:
    dataset_json = {"labels": {"background": 0, "brain": 1}, "fomo": {"task_type": "survival", "num_classes": 2}}
    with pytest.raises(FomoInputError, match="task_type must be one of"):
        task_from_dataset_json(dataset_json, Path("dataset.json"))


def test_default_patch_is_capped_by_the_median_shape() -> None:
    assert default_patch_size([300, 300, 300]) == (160, 192, 160)
    assert default_patch_size([141, 100, 33]) == (144, 112, 48)


def test_default_patch_covers_the_same_field_at_another_spacing() -> None:
    assert default_patch_size([300, 300, 300], (2.0, 2.0, 2.0)) == (80, 96, 80)
    assert default_patch_size([300, 300, 300], (3.0, 3.0, 3.0)) == (64, 64, 64)  # 53.3 -> rounded up
    # never below what the network can train on
    assert default_patch_size([10, 12, 9], (2.0, 2.0, 2.0)) == (32, 32, 32)


def test_planning_at_another_spacing(planned: Planned) -> None:
    planner = FomoPlanner(DATASET_ID, plans_name="SpacingPlans",
                          settings=FomoPlanSettings(spacing=(2.0, 2.0, 2.0), starting_filters=FILTERS))
    plans = planner.plan_experiment()
    config = plans["configurations"][FULLRES]
    assert config["spacing"] == [2.0, 2.0, 2.0]
    median = np.asarray(planned.plans["configurations"][FULLRES]["median_image_size_in_voxels"]) / 2
    assert config["patch_size"] == list(default_patch_size(median, (2.0, 2.0, 2.0)))
    assert plans["transpose_forward"] == [0, 1, 2]


def test_an_explicit_patch_far_larger_than_the_median_shape_is_refused(planned: Planned) -> None:
    median = planned.plans["configurations"][FULLRES]["median_image_size_in_voxels"]
    huge = tuple(PATCH_DIVISOR * math.ceil(30 * edge / PATCH_DIVISOR) for edge in median)
    planner = FomoPlanner(DATASET_ID, plans_name="HugePatchPlans",
                          settings=FomoPlanSettings(patch_size=huge, starting_filters=FILTERS))
    with pytest.raises(FomoInputError, match=r"--patch-size .* the median image shape"):
        planner.plan_experiment()
    assert not (planned.preprocessed / "HugePatchPlans.json").exists()


def test_a_patch_up_to_twice_the_median_shape_is_accepted() -> None:
    check_patch_fits_median((80, 80, 32), (40, 36.5, 10))  # 2 x 36.5 = 73 -> 80; the minimum edge is always allowed
    with pytest.raises(FomoInputError, match=r"median image shape \[40.0, 36.5, 10.0\]"):
        check_patch_fits_median((96, 80, 32), (40, 36.5, 10))


@pytest.mark.parametrize("spacing", [["0"], ["-1"], ["1", "1", "nan"], ["1", "2"]])
def test_cli_refuses_a_bad_spacing(spacing: List[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "999", "--spacing", *spacing])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "spacing" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--patch-size", "30", "32", "32"], "multiples of 16"),
    (["--patch-size", "16", "16", "16"], "at least 32"),
    (["--head-dropout", "1.5"], "head dropout"),
    (["--channel-adaptation", "mean"], "invalid choice"),
    (["--pretrained", "/nonexistent/epoch=12.ckpt"], "not found"),
])
def test_cli_refuses_bad_options(argv: List[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "999", *argv])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err


def test_cli_refuses_an_unknown_dataset(nnunet_dirs, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "999", "-np", "1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert "999" in capsys.readouterr().err


@pytest.mark.parametrize("variable, make, message", [
    ("nnUNet_raw", lambda p: p.write_text(""), "nnUNet_raw must name a folder, but this is a file"),
    ("nnUNet_preprocessed", lambda p: p.write_text(""), "nnUNet_preprocessed is a file, not a folder"),
    ("nnUNet_preprocessed", lambda p: (p.parent / "file").write_text("") or p.parent / "file" / "sub",
     "cannot create nnUNet_preprocessed"),
], ids=["raw is a file", "preprocessed is a file", "preprocessed under a file"])
def test_cli_names_the_nnunet_variable_that_is_not_a_folder(nnunet_dirs, tmp_path: Path, variable: str, make,
                                                            message: str, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "not_a_folder"
    path = make(path) or path
    monkeypatch.setenv(variable, str(path))
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "999", "-np", "1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1


def test_cli_names_an_unwritable_preprocessed_folder(nnunet_dirs, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # tests may run as root, whom permission bits do not stop: the folder is made unwritable for the check only
    read_only = nnunet_dirs["nnUNet_preprocessed"]
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and (
        Path(p) != read_only or not mode & os.W_OK))
    with pytest.raises(SystemExit) as exit_info:
        main(["-d", "999", "-np", "1"])
    assert exit_info.value.code == EXIT_BAD_INPUT
    error = capsys.readouterr().err
    assert error.startswith(f"error: {read_only}: cannot write into nnUNet_preprocessed") and error.count("\n") == 1
    assert list(read_only.iterdir()) == []


def plan_through_the_command(planned: Planned, monkeypatch: pytest.MonkeyPatch, plans_name: str,
                             *flags: str) -> torch.nn.Module:
    """fomo_plan_and_preprocess's ``main`` with ``flags``, planning only (the fixture's fingerprint; preprocessing
    again would only cost time), then the network nnU-Net builds from the plans written."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    import nnunet_ext.preprocessing.plan_and_preprocess as command

    def plan_only(dataset_id, settings, plans_name, num_processes, verify_dataset_integrity):
        FomoPlanner(dataset_id, plans_name=plans_name, settings=settings).plan_experiment()
        return planned.preprocessed / f"{plans_name}.json"

    monkeypatch.setattr(command, "fomo_plan_and_preprocess", plan_only)
    assert main(["-d", str(DATASET_ID), "--plans-name", plans_name, "--patch-size", *[str(PATCH)] * 3,
                 "-np", "1", *flags]) == 0
    plans = PlansManager(json.loads((planned.preprocessed / f"{plans_name}.json").read_text()))
    configuration = plans.get_configuration(FULLRES)
    return get_network_from_plans(configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
                                  configuration.network_arch_init_kwargs_req_import, 3, 2, deep_supervision=False)


def test_model_and_decoder_layout_flags_shape_the_planned_network(planned: Planned,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    default = plan_through_the_command(planned, monkeypatch, "DefaultFlagPlans")
    assert default.starting_filters == 32 and "decoder.stages.0.convs.1.conv.weight" not in default.state_dict()
    network = plan_through_the_command(planned, monkeypatch, "XlPlans", "--model", "unet_xl",
                                       "--decoder-layout", "unet_b")
    assert network.starting_filters == 64
    assert network.state_dict()["encoder.stages.0.0.convs.0.conv.weight"].shape[0] == 64
    assert "decoder.stages.0.convs.1.conv.weight" in network.state_dict()  # two convs per decoder block


def test_head_flags_shape_the_planned_head(planned: Planned, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset_json_file = planned.raw / "dataset.json"
    original = dataset_json_file.read_text()
    classification = json.loads(original)
    classification["fomo"].update(task_type="classification", num_classes=2)
    dataset_json_file.write_text(json.dumps(classification))
    try:
        default = plan_through_the_command(planned, monkeypatch, "HeadDefaultPlans", "--starting-filters", "4")
        network = plan_through_the_command(planned, monkeypatch, "HeadPlans", "--starting-filters", "4",
                                           "--head-pool-levels", "3", "4", "--head-pooling", "avgmax")
    finally:
        dataset_json_file.write_text(original)
    assert (default.head.pool_levels, default.head.pooling, default.head.linear.in_features) == ((4,), "avg", 64)
    # levels 3 and 4 hold 32 and 64 channels; avgmax pools each twice
    assert (network.head.pool_levels, network.head.pooling) == ((3, 4), "avgmax")
    assert network.head.linear.in_features == 2 * (32 + 64)
    skips = [torch.rand(1, 4 * 2 ** level, 2, 2, 2) for level in range(5)]
    expected = torch.cat([torch.cat([s.flatten(2).mean(-1), s.flatten(2).amax(-1)], 1) for s in skips[3:]], 1)
    torch.testing.assert_close(network.head.pooled_features(skips), expected)
