"""The FOMO pretraining normalisation and its registration with nnU-Net's by-name lookups."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
from nnunetv2.preprocessing.normalization import default_normalization_schemes
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ZScoreNormalization
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_ext.errors import FomoInputError
from nnunet_ext.preprocessing import registration
from nnunet_ext.preprocessing.normalization import FomoPretrainingNormalization, fomo_normalize
from nnunet_ext.preprocessing.registration import register_with_nnunet

SCHEME = FomoPretrainingNormalization.__name__


def brain_with_outliers(seed: int = 0, background: float = 0.0) -> np.ndarray:
    """A zero-background 'brain' whose top 2 % of voxels are very bright outliers (clipping must matter)."""
    rng = np.random.default_rng(seed)
    image = np.full((20, 18, 16), background, dtype=np.float32)
    brain = rng.gamma(4.0, 50.0, size=(12, 10, 8)).astype(np.float32) + background + 1
    outliers = rng.random(brain.shape) < 0.02
    brain[outliers] *= 20
    image[4:16, 4:14, 4:12] = brain
    return image


def reference_min_max_of_clipped(image: np.ndarray) -> np.ndarray:
    """Independent formula: min-max rescale of the volume clipped at the foreground's 99th percentile."""
    x = image.astype(np.float64)
    foreground = x[x > x.min()]
    clipped = np.minimum(x, np.percentile(foreground, 99))
    return (clipped - clipped.min()) / (clipped.max() - clipped.min())


def reference_zscore_then_min_max(image: np.ndarray) -> np.ndarray:
    """The pretraining's literal steps, in float64: clip, z-score with foreground statistics, min-max."""
    x = image.astype(np.float64)
    mask = x > x.min()
    clipped = np.minimum(x, np.percentile(x[mask], 99))
    z = (clipped - clipped[mask].mean()) / clipped[mask].std()
    return (z - z.min()) / (z.max() - z.min())


@pytest.mark.parametrize("background", [0.0, -300.0])
def test_matches_both_reference_formulas(background: float) -> None:
    image = brain_with_outliers(background=background)
    result = fomo_normalize(image)
    assert result.dtype == np.float32 and result.shape == image.shape
    np.testing.assert_allclose(reference_zscore_then_min_max(image), reference_min_max_of_clipped(image), atol=1e-12)
    np.testing.assert_allclose(result, reference_min_max_of_clipped(image), atol=1e-6)
    assert result.min() == 0.0 and result.max() == pytest.approx(1.0)
    assert np.all(result[image == image.min()] == 0.0)
    # the clip is active: the brightest 1 % of the foreground all map to 1
    assert np.count_nonzero(np.isclose(result, 1.0)) >= 0.01 * np.count_nonzero(image > image.min())


def test_input_is_left_untouched() -> None:
    image = brain_with_outliers()
    copy = image.copy()
    fomo_normalize(image)
    np.testing.assert_array_equal(image, copy)


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_constant_channel_becomes_zeros(value: float) -> None:
    """A zero-filled missing modality (or any constant channel) has no foreground: all zeros, no NaN."""
    result = fomo_normalize(np.full((6, 5, 4), value, dtype=np.float32))
    assert np.all(result == 0.0)


def test_single_foreground_intensity_gives_zero_and_one() -> None:
    image = np.zeros((6, 5, 4), dtype=np.float32)
    image[2:4, 2:4, 1:3] = 42.0
    np.testing.assert_array_equal(fomo_normalize(image), (image > 0).astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_intensities_are_refused(bad: float) -> None:
    image = brain_with_outliers()
    image[5, 5, 5] = bad
    with pytest.raises(FomoInputError, match="NaN or infinite"):
        fomo_normalize(image)


def test_scheme_wraps_the_function_and_refuses_the_nonzero_mask() -> None:
    image = brain_with_outliers(seed=3)
    scheme = FomoPretrainingNormalization(use_mask_for_norm=False, intensityproperties={})
    np.testing.assert_array_equal(scheme.run(image.copy(), None), fomo_normalize(image))
    with pytest.raises(ValueError, match="use_mask_for_norm"):
        FomoPretrainingNormalization(use_mask_for_norm=True, intensityproperties={}).run(image)


@pytest.fixture
def unregistered(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net as a fresh interpreter sees it: our scheme absent, multiprocessing's reducers untouched."""
    monkeypatch.delattr(default_normalization_schemes, SCHEME, raising=False)
    monkeypatch.setattr(ForkingPickler, "_extra_reducers", dict(ForkingPickler._extra_reducers))
    ForkingPickler._extra_reducers.pop(ConfigurationManager, None)


def normalize_with_nnunet(image: np.ndarray) -> np.ndarray:
    """nnU-Net's own normalisation step (DefaultPreprocessor._normalize) with a plans entry naming our scheme."""
    configuration = ConfigurationManager({"architecture": {}, "normalization_schemes": [SCHEME],
                                          "use_mask_for_norm": [False]})
    seg = np.zeros((1, *image.shape), dtype=np.int8)
    return DefaultPreprocessor(verbose=False)._normalize(image[None].copy(), seg, configuration, {"0": {}})[0]


def test_unregistered_scheme_fails_loudly_instead_of_z_scoring(unregistered: None) -> None:
    with pytest.raises(RuntimeError, match=f"Unable to locate class '{SCHEME}'"):
        normalize_with_nnunet(brain_with_outliers())


def test_registration_is_idempotent_and_reaches_nnunet_lookup(unregistered: None) -> None:
    register_with_nnunet()
    register_with_nnunet()
    assert getattr(default_normalization_schemes, SCHEME) is FomoPretrainingNormalization
    image = brain_with_outliers(seed=1)
    result = normalize_with_nnunet(image)
    np.testing.assert_array_equal(result, fomo_normalize(image))
    zscored = ZScoreNormalization(use_mask_for_norm=False, intensityproperties={}).run(image.copy())
    assert not np.allclose(result, zscored)


def test_registration_refuses_to_shadow_another_class(unregistered: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(default_normalization_schemes, SCHEME, ZScoreNormalization, raising=False)
    with pytest.raises(RuntimeError, match="refusing to shadow"):
        register_with_nnunet()


def test_workers_unpickle_configurations_through_our_registration(unregistered: None,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What multiprocessing sends to a spawned worker names our module, whose rebuild registers first."""
    configuration = ConfigurationManager({"architecture": {}, "normalization_schemes": [SCHEME]})
    assert b"nnunet_ext" not in bytes(ForkingPickler.dumps(configuration))
    register_with_nnunet()
    payload = bytes(ForkingPickler.dumps(configuration))
    assert b"nnunet_ext.preprocessing.registration" in payload

    # a worker process has not registered yet: unpickling must do it
    monkeypatch.delattr(default_normalization_schemes, SCHEME)
    calls = []
    monkeypatch.setattr(registration, "register_with_nnunet", lambda: calls.append(True))
    restored = pickle.loads(payload)
    assert calls == [True]
    assert type(restored) is ConfigurationManager and restored.configuration == configuration.configuration
