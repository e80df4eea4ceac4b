"""``fomo_embed`` and ``fomo_linear_probe``: one fixed-length embedding per case from a frozen encoder, and a linear
model fitted on them with the dataset's own subject-grouped folds."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from case_level_datasets import planned_case_level_dataset
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, REGRESSION
from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.evaluation import linear_probe
from nnunet_ext.inference import embed
from nnunet_ext.networks import FomoUNet
from nnunet_ext.pretrained import load_fomo_state_dict, transfer_fomo_weights
from nnunet_ext.pretrained.testing import make_fomo_checkpoint, make_resenc_checkpoint, resenc_layout_for
from nnunet_ext.trainers.case_validation import pad_to_multiple
from nnunet_ext.utils.linear_models import as_linear_map, fit_linear_model

N_CASES = 15
FILTERS = 4
#: The residual-encoder checkpoint embedded: FOMO26's smallest size (2 blocks per stage) at 1/32 width, so that 30
#: scans padded to 64^3 (the 6-stage encoder's least) take seconds.
RESENC_MODEL, RESENC_FILTERS = "resenc_unet_s", 1
#: Channels of the test datasets: each is embedded on its own by a 1-channel encoder.
N_CHANNELS = 2


def load_case(dataset, case: str) -> np.ndarray:
    """One preprocessed case ``[C, X, Y, Z]`` of the planned dataset, as the embedder reads it."""
    preprocessed = dataset.root / "nnUNet_preprocessed" / dataset.name / "nnUNetPlans_3d_fullres"
    return infer_dataset_class(str(preprocessed))(str(preprocessed)).load_case(case)[0][:]


@pytest.fixture()
def regression(tmp_path, tmp_path_factory, monkeypatch):
    return planned_case_level_dataset(tmp_path_factory, tmp_path, "regression", N_CASES, monkeypatch)


def test_every_case_gets_one_embedding_of_one_length_the_encoders_deepest_average(regression, tmp_path):
    checkpoint = make_fomo_checkpoint(tmp_path / "model.ckpt", starting_filters=FILTERS, seed=3)
    out = tmp_path / "embeddings"
    assert embed.main(["-d", str(regression.dataset_id), "--checkpoint", str(checkpoint), "-o", str(out),
                       "-device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "embeddings.csv").open()))
    assert sorted(r["case"] for r in rows) == sorted(regression.targets)
    folds = {case: i for i, fold in enumerate(regression.splits) for case in fold["val"]}
    assert all(int(r["fold"]) == folds[r["case"]] for r in rows)
    deepest = FILTERS * 2 ** 4
    vectors = {r["case"]: np.load(out / f"{r['case']}.npy") for r in rows}
    assert {(v.dtype, v.shape) for v in vectors.values()} == {(np.dtype(np.float32), (N_CHANNELS * deepest,))}
    # an independent forward pass: the checkpoint's encoder, one channel, the deepest level averaged over the volume
    network = FomoUNet(1, 1, starting_filters=FILTERS, task_type="classification")
    transfer_fomo_weights(network, load_fomo_state_dict(checkpoint)[0])
    case = sorted(vectors)[0]
    data = load_case(regression, case)
    with torch.no_grad():
        second_channel = network.eval().encoder(pad_to_multiple(torch.from_numpy(data[1:2]))[None])[-1]
    np.testing.assert_allclose(vectors[case][deepest:], second_channel.mean(dim=(2, 3, 4))[0].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_a_fomo26_residual_encoder_embeds_each_case_as_fomo26s_own_network_does(regression, tmp_path):
    gardening = pytest.importorskip("gardening_tools.modules.networks.resunet")  # FOMO26's network library
    layout = resenc_layout_for(RESENC_MODEL, RESENC_FILTERS)
    checkpoint = make_resenc_checkpoint(tmp_path / f"{RESENC_MODEL}.ckpt", layout, seed=3)
    out = tmp_path / "embeddings"
    assert embed.main(["-d", str(regression.dataset_id), "--checkpoint", str(checkpoint), "-o", str(out),
                       "-device", "cpu"]) == 0
    index = json.loads((out / "embeddings.json").read_text())
    deepest_level, deepest = layout.n_stages - 1, layout.features[-1]
    assert index["architecture"] == "resenc_unet" and index["pool_levels"] == [deepest_level]
    assert index["dimension"] == N_CHANNELS * deepest and len(index["cases"]) == len(regression.targets)
    case = sorted(regression.targets)[0]
    vector = np.load(out / f"{case}.npy")
    # FOMO26's own network on the checkpoint's weights: its encoder's deepest stage averaged over the volume, the
    # volume padded to a multiple of its 2^5 downsampling and to two bottleneck voxels per axis
    theirs = gardening.ResidualEncoderUNet(
        input_channels=1, output_channels=1, features_per_stage=layout.features, n_blocks_per_stage=layout.blocks,
        n_conv_per_stage_decoder=(layout.decoder_convs,) * deepest_level, dimensions="3D", kernel_size=3,
        stride=2).eval()
    theirs.load_state_dict({key[len("model."):]: v for key, v in torch.load(checkpoint)["state_dict"].items()})
    multiple = 2 ** deepest_level
    with torch.no_grad():
        second_channel = theirs.encoder(pad_to_multiple(torch.from_numpy(load_case(regression, case)[1:2]), multiple,
                                                        minimum=2 * multiple)[None])[-1]
    np.testing.assert_allclose(vector[deepest:], second_channel.mean(dim=(2, 3, 4))[0].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_a_random_encoder_is_the_baseline_and_a_segmentation_dataset_is_refused(regression, tmp_path):
    out = tmp_path / "random"
    assert embed.main(["-d", str(regression.dataset_id), "--random-encoder", str(FILTERS), "-o", str(out),
                       "-device", "cpu", "--pool-levels", "3", "4", "--pooling", "avgmax"]) == 0
    index = json.loads((out / "embeddings.json").read_text())
    assert index["encoder"] == "random" and index["dimension"] == N_CHANNELS * 2 * (FILTERS * 8 + FILTERS * 16)
    dataset_json = regression.root / "nnUNet_preprocessed" / regression.name / "dataset.json"
    content = json.loads(dataset_json.read_text())
    content["fomo"]["task_type"] = "segmentation"
    dataset_json.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as refused:
        embed.main(["-d", str(regression.dataset_id), "--random-encoder", "4", "-o", str(tmp_path / "x")])
    assert refused.value.code == EXIT_BAD_INPUT and not (tmp_path / "x").exists()


def write_embeddings(folder, task_type, vectors, targets, folds):
    folder.mkdir()
    rows = [{"case": f"c{i}", "subject": f"s{i}", "target": float(t), "fold": int(f)}
            for i, (t, f) in enumerate(zip(targets, folds))]
    for row, vector in zip(rows, vectors):
        np.save(folder / f"{row['case']}.npy", vector.astype(np.float32))
    (folder / "embeddings.json").write_text(json.dumps({
        "task_type": task_type, "dimension": vectors.shape[1], "cases": rows, "encoder": "test", "starting_filters": 0,
        "pool_levels": [4], "pooling": "avg"}))


def test_the_probe_recovers_a_linear_signal_out_of_fold_and_not_noise(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    vectors = rng.standard_normal((n, 20))
    folds = np.arange(n) % 5
    ages = 50 + 10 * vectors[:, 3]
    write_embeddings(tmp_path / "signal", "regression", vectors, ages, folds)
    write_embeddings(tmp_path / "noise", "regression", vectors, rng.permutation(ages), folds)
    signal, records = linear_probe.linear_probe(*linear_probe.read_embeddings(tmp_path / "signal"), n_resamples=200)
    noise, _ = linear_probe.linear_probe(*linear_probe.read_embeddings(tmp_path / "noise"), n_resamples=200)
    assert {r["fold"] for r in records} == set(range(5)) and len(records) == n
    mean_mae = float(np.mean(np.abs(ages - ages.mean())))
    assert signal["pooled_with_ci"]["mae"]["value"] < 0.2 * mean_mae
    assert noise["pooled_with_ci"]["mae"]["value"] > 0.8 * mean_mae


def test_the_classification_probe_separates_separable_classes(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.arange(40) % 2
    vectors = rng.standard_normal((40, 8)) + 3.0 * labels[:, None] * np.eye(8)[0]
    write_embeddings(tmp_path / "e", "classification", vectors, labels, (np.arange(40) // 2) % 4)
    assert linear_probe.main(["-e", str(tmp_path / "e"), "-o", str(tmp_path / "probe"), "--n-bootstrap", "100"]) == 0
    summary = json.loads((tmp_path / "probe" / "linear_probe.json").read_text())
    assert summary["pooled_with_ci"]["auroc"]["value"] > 0.85  # Bayes-optimal: 0.98 (d = 3 on one feature of 8)
    assert (tmp_path / "probe" / "linear_probe.md").read_text().startswith("# Linear probe")
    assert summary["feature_spread"]["median_std_between_cases"] == pytest.approx(1.0, abs=0.3)


def test_the_spread_of_the_embeddings_is_that_of_the_cases_not_of_the_features():
    rng = np.random.default_rng(2)
    means, spreads = np.linspace(-3.0, 3.0, 9), np.logspace(-3, 1, 9)  # medians: |mean| 1.5, spread 0.1
    vectors = means + spreads * rng.standard_normal((4000, 9))
    spread = linear_probe.feature_spread(vectors)
    assert spread["median_std_between_cases"] == pytest.approx(0.1, rel=0.05)
    assert spread["median_abs_mean"] == pytest.approx(1.5, rel=0.05)


@pytest.mark.parametrize("task_type", [CLASSIFICATION, REGRESSION])
def test_the_fitted_model_as_one_affine_map_of_the_raw_features(task_type: str):
    """``as_linear_map`` folds the standardisation into the weights: on raw features it gives scikit-learn's own
    decision function (the log-odds of class 1, or the value)."""
    rng = np.random.default_rng(0)
    features = rng.normal(loc=5.0, scale=[0.01, 1.0, 100.0], size=(40, 3))
    signal = features[:, 0] / 0.01 + features[:, 2] / 100.0
    targets = (signal > np.median(signal)).astype(int) if task_type == CLASSIFICATION else 3.0 * signal + 40.0
    model = fit_linear_model(task_type, features, targets, seed=0)
    linear_map = as_linear_map(task_type, model)
    expected = model.decision_function(features) if task_type == CLASSIFICATION else model.predict(features)
    assert np.std(expected) > 0.5
    np.testing.assert_allclose(features @ linear_map.weight + linear_map.bias, expected, rtol=1e-6, atol=1e-6)
    assert linear_map.penalty > 0
