"""The task metrics, their bootstrap confidence intervals and cross-validation summaries: pure functions of arrays.

The lowest package of the evaluation chain: the trainers (per-epoch validation) and ``nnunet_ext.evaluation``
(reports, figures, commands) both import it; it imports neither, nor nnU-Net, nor a plotting library.

Conventions shared by all metrics: undefined values are NaN, announced by an
:class:`sklearn.exceptions.UndefinedMetricWarning` that gives the reason, and written as ``null``
in JSON (``nnunet_ext.evaluation.report.json_safe``); every task's metrics function returns a flat dict whose
performance metrics are named in :data:`TASK_METRICS`.
"""

from nnunet_ext.metrics.aggregate import (
    TASK_METRICS,
    TaskMetrics,
    cross_validation_summary,
    fold_mean_std,
    mean_case_metrics,
    task_metrics,
)
from nnunet_ext.metrics.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_cis, metrics_with_ci
from nnunet_ext.metrics.classification import (
    CLASSIFICATION_METRICS,
    DEFAULT_THRESHOLD,
    classification_metrics,
    confusion_counts,
    youden_threshold,
)
from nnunet_ext.metrics.regression import REGRESSION_METRICS, regression_metrics
from nnunet_ext.metrics.segmentation import (
    DEFAULT_NSD_TOLERANCE_MM,
    SEGMENTATION_METRICS,
    load_mask,
    segmentation_metrics,
    surface_distances,
    surface_voxels,
)

__all__ = [
    "CLASSIFICATION_METRICS",
    "DEFAULT_NSD_TOLERANCE_MM",
    "DEFAULT_THRESHOLD",
    "REGRESSION_METRICS",
    "SEGMENTATION_METRICS",
    "TASK_METRICS",
    "ConfidenceInterval",
    "TaskMetrics",
    "bootstrap_ci",
    "bootstrap_cis",
    "classification_metrics",
    "confusion_counts",
    "cross_validation_summary",
    "fold_mean_std",
    "load_mask",
    "mean_case_metrics",
    "metrics_with_ci",
    "regression_metrics",
    "segmentation_metrics",
    "surface_distances",
    "surface_voxels",
    "task_metrics",
    "youden_threshold",
]
