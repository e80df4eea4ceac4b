"""Metrics, bootstrap confidence intervals, cross-validation summaries, report tables and figures.

Conventions shared by all metrics: undefined values are NaN, announced by an
:class:`sklearn.exceptions.UndefinedMetricWarning` that gives the reason, and written as ``null``
in JSON (:func:`json_safe`); every task's metrics function returns a flat dict whose performance
metrics are named in :data:`TASK_METRICS`.
"""

from nnunet_ext.evaluation.aggregate import (
    TASK_METRICS,
    TaskMetrics,
    cross_validation_summary,
    fold_mean_std,
    mean_case_metrics,
    task_metrics,
)
from nnunet_ext.evaluation.bootstrap import ConfidenceInterval, bootstrap_ci, bootstrap_cis, metrics_with_ci
from nnunet_ext.evaluation.classification import (
    CLASSIFICATION_METRICS,
    DEFAULT_THRESHOLD,
    classification_metrics,
    confusion_counts,
    youden_threshold,
)
from nnunet_ext.evaluation.plots import (
    plot_bland_altman,
    plot_confusion_matrix,
    plot_dice_per_case,
    plot_predicted_vs_true,
    plot_roc_curves,
    plot_segmentation_overlay,
    plot_training_curves,
)
from nnunet_ext.evaluation.regression import REGRESSION_METRICS, regression_metrics
from nnunet_ext.evaluation.report import format_metrics_table, json_safe
from nnunet_ext.evaluation.segmentation import (
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
    "format_metrics_table",
    "json_safe",
    "load_mask",
    "mean_case_metrics",
    "metrics_with_ci",
    "plot_bland_altman",
    "plot_confusion_matrix",
    "plot_dice_per_case",
    "plot_predicted_vs_true",
    "plot_roc_curves",
    "plot_segmentation_overlay",
    "plot_training_curves",
    "regression_metrics",
    "segmentation_metrics",
    "surface_distances",
    "surface_voxels",
    "task_metrics",
    "youden_threshold",
]
