"""The intensity normalisation the FOMO25 encoder was pretrained with, as an nnU-Net normalisation scheme.

Per channel and per volume (fomo_reference.md, section 3):

1. background = the volume's minimum; foreground = every voxel brighter than it;
2. clip at the 99th percentile of the foreground;
3. z-score with the mean and standard deviation of the (clipped) foreground;
4. min-max rescale the whole volume to [0, 1].

Steps 3 and 4 together equal a min-max rescale of the clipped volume (a z-score is an increasing affine map,
which min-max undoes); we keep the pretraining's four steps so the code reads like the reference.

nnU-Net applies the scheme on the cropped native grid, before resampling to 1 mm (its preprocessor's order,
chosen so the non-zero mask fits the image); the cubic resampling may then overshoot [0, 1] by a little.

Edge case: a channel without foreground (constant, e.g. a zero-filled missing modality) carries no
information and becomes all zeros, which is also what background maps to in a normal volume.
"""

from __future__ import annotations

from typing import Optional, Type

import numpy as np
from nnunetv2.preprocessing.normalization.default_normalization_schemes import ImageNormalization

from nnunet_ext.errors import FomoInputError

#: Foreground intensities above this percentile are clipped (bright outliers, e.g. vessels or artefacts).
CLIP_PERCENTILE = 99.0

#: Smallest standard deviation we divide by (a foreground of one single intensity has std 0).
STD_EPS = 1e-8


def fomo_normalize(image: np.ndarray, dtype: Type[np.floating] = np.float32) -> np.ndarray:
    """Normalise one channel of one volume the way the FOMO25 encoder saw its pretraining data.

    Returns a new array of ``dtype`` with values in [0, 1]; the background (the minimum) maps to 0.
    Raises :class:`FomoInputError` for NaN or infinite intensities, which would poison every statistic.
    """
    if not np.all(np.isfinite(image)):
        raise FomoInputError("image channel holds NaN or infinite intensities")
    image = np.array(image, dtype=dtype)  # a copy: callers' arrays stay untouched
    background = image.min()
    foreground = image > background
    if not foreground.any():
        return np.zeros_like(image)

    np.minimum(image, np.percentile(image[foreground], CLIP_PERCENTILE), out=image)
    foreground_values = image[foreground]
    image -= foreground_values.mean()
    image /= max(foreground_values.std(), STD_EPS)

    # the clipped volume spans (background, percentile] with percentile > background, so the range is > 0
    image -= image.min()
    image /= image.max()
    return image


class FomoPretrainingNormalization(ImageNormalization):
    """nnU-Net normalisation scheme wrapping :func:`fomo_normalize`.

    nnU-Net finds schemes by class name inside its own package: call
    :func:`nnunet_ext.preprocessing.registration.register_with_nnunet` before it preprocesses.
    The scheme defines its own foreground (brighter than the minimum), so nnU-Net's non-zero mask is not used.
    """

    leaves_pixels_outside_mask_at_zero_if_use_mask_for_norm_is_true = False

    def run(self, image: np.ndarray, seg: Optional[np.ndarray] = None) -> np.ndarray:
        if self.use_mask_for_norm:
            # silently ignoring the flag would hide a plans file that asks for something we do not do
            raise ValueError(f"{type(self).__name__} defines its own foreground; plans must set use_mask_for_norm "
                             "to false for its channels")
        return fomo_normalize(image, self.target_dtype)
