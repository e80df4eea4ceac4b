"""nnU-Net's dataset fingerprint with a foreground-intensity sample sized for what FOMO plans use of it.

nnU-Net samples 10^8 foreground voxels per dataset (10^8 / n_cases per case, with replacement, whatever the
cases hold) for the intensity statistics of its fingerprint. Those statistics feed only nnU-Net's CT
normalisation; FOMO plans normalise every channel with :class:`FomoPretrainingNormalization`, per case, and never
read them. Drawing the 10^8 costs 10-15 CPU seconds and 2-3 GB per planning whatever the dataset's size (a third of
a small dataset's planning time on 2 cores). 10^6 voxels still estimate the stored statistics (mean, standard deviation, median, 0.5 and
99.5 percentiles) closely, so the fingerprint stays meaningful for anyone who reads it.
"""

from __future__ import annotations

from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor

#: Foreground voxels sampled for the intensity statistics, over the whole dataset (nnU-Net: 10^8).
FOREGROUND_INTENSITY_SAMPLES = 10 ** 6


class FomoFingerprintExtractor(DatasetFingerprintExtractor):
    """:class:`DatasetFingerprintExtractor` sampling :data:`FOREGROUND_INTENSITY_SAMPLES` foreground voxels."""

    def __init__(self, dataset_name_or_id, num_processes: int = 8, verbose: bool = False):
        super().__init__(dataset_name_or_id, num_processes, verbose)
        # the per-case number is derived from this in run(), in this process, and handed to the workers
        self.num_foreground_voxels_for_intensitystats = FOREGROUND_INTENSITY_SAMPLES
