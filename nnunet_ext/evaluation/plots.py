"""Figures for evaluation reports: PNG files meant to be read without the surrounding text.

Figures are drawn on :class:`matplotlib.figure.Figure` objects and rendered with the Agg backend,
without pyplot: no global figure state, no display needed, nothing left open between calls. Each
``plot_*`` function writes its PNG atomically and returns the path.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike
from scipy.ndimage import center_of_mass, label
from sklearn.metrics import ConfusionMatrixDisplay, mean_absolute_error, roc_auc_score, roc_curve

from nnunet_ext.metrics._common import binary_mask, paired_vectors
from nnunet_ext.metrics.calibration import DEFAULT_N_BINS, age_bias, expected_calibration_error, reliability_bins
from nnunet_ext.utils.files import PathLike, atomic_write_bytes

#: Resolution of the PNG files: sharp in a report at page width without making files large.
DPI = 150

#: Colours that stay distinct for the common forms of colour blindness (Okabe-Ito palette).
REFERENCE_COLOUR = "#F0E442"  # yellow
PREDICTION_COLOUR = "#CC79A7"  # reddish purple
HIGHLIGHT_COLOUR = "#0072B2"  # blue
BEST_COLOUR = "#D55E00"  # vermillion
MEDIAN_COLOUR = "#E69F00"  # orange

#: Width of the Bland-Altman limits of agreement, in standard deviations of the differences
#: (95% of differences fall inside for normally distributed errors).
LIMITS_OF_AGREEMENT_SD = 1.96

#: Percentiles of the image intensities mapped to black and white in overlays; robust to a few
#: very bright voxels that would otherwise darken the whole slice.
WINDOW_PERCENTILES = (1.0, 99.0)

#: Planes of the overlay figure and the array axis each is perpendicular to, for (z, y, x) arrays.
PLANES = (("Axial", 0), ("Coronal", 1), ("Sagittal", 2))

#: Half-width of the horizontal spread of the points of a strip plot, in units of the distance between
#: boxes (see BOX_WIDTH): the points stay over their box.
STRIP_JITTER = 0.15
BOX_WIDTH = 0.5


_Plot = TypeVar("_Plot", bound=Callable[..., Path])


def _own_style(plot: _Plot) -> _Plot:
    """Draw with matplotlib's defaults, whatever the process set globally before.

    nnU-Net's training logger calls ``seaborn.set(font_scale=2.5)``, which would blow up every later figure of a
    process that trained (the demo, a notebook).
    """

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(matplotlib.rcParamsDefault):
            return plot(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _save(fig: Figure, out_path: PathLike) -> Path:
    """Render ``fig`` as PNG and write it atomically to ``out_path``."""
    FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot would pick: no display needed
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(out_path, buffer.getvalue())
    return Path(out_path)


def _with_units(quantity: str, units: str) -> str:
    """Axis wording: ``"age (years)"``, or the quantity alone for a unitless one."""
    return f"{quantity} ({units})" if units else quantity


@_own_style
def plot_roc_curves(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    out_path: PathLike,
    highlight: str | None = "ensemble",
    threshold: float | None = None,
    title: str = "ROC curves",
) -> Path:
    """ROC curves of several models (e.g. each fold and the ensemble), AUROC in the legend.

    Parameters
    ----------
    curves : dict
        ``{label: (y_true, y_prob)}``. A set with one class only has no ROC curve; it is listed in the
        legend as such.
    out_path : path
        PNG file to write.
    highlight : str or None, default="ensemble"
        Label drawn thick and on top (the model whose results are reported); the others are thin.
    threshold : float or None
        If given, the operating point of the highlighted model at ``y_prob >= threshold`` is marked.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``out_path``.
    """
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="Chance (AUROC 0.5)")
    for name, (y_true, y_prob) in curves.items():
        labels, probs = paired_vectors(y_true, y_prob, ("y_true", "y_prob"))
        if np.unique(labels).size < 2:
            ax.plot([], [], linestyle="none", label=f"{name} (one class: no ROC curve)")
            continue
        fpr, tpr, _ = roc_curve(labels, probs)
        is_highlight = name == highlight
        style = {"linewidth": 2.5, "color": HIGHLIGHT_COLOUR, "zorder": 3} if is_highlight else {"linewidth": 1}
        ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(labels, probs):.3f})", **style)
        if is_highlight and threshold is not None:
            predicted = probs >= threshold
            point = (np.mean(predicted[labels == 0]), np.mean(predicted[labels == 1]))
            ax.plot(*point, marker="o", markersize=9, color=BEST_COLOUR, linestyle="none", zorder=4,
                    label=f"{name} at threshold {threshold:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=title,
           xlabel="False-positive rate (1 − specificity)", ylabel="True-positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, out_path)


@_own_style
def plot_confusion_matrix(
    counts: Mapping[str, int],
    out_path: PathLike,
    class_names: tuple[str, str] = ("negative", "positive"),
    title: str = "Confusion matrix",
) -> Path:
    """Confusion matrix with counts and the share of each true class annotated in every cell.

    Parameters
    ----------
    counts : dict
        At least ``tn``, ``fp``, ``fn``, ``tp``, as returned by
        :func:`~nnunet_ext.metrics.classification.confusion_counts` or ``classification_metrics``.
    out_path : path
        PNG file to write.
    class_names : (str, str)
        Names of the negative and positive class, e.g. ``("no infarct", "infarct")``.
    title : str
        Figure title; say the threshold in it.

    Returns
    -------
    Path
        ``out_path``.
    """
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    row_totals = matrix.sum(axis=1, keepdims=True)
    fig = Figure(figsize=(4.8, 4.2), layout="constrained")
    ax = fig.add_subplot()
    display = ConfusionMatrixDisplay(matrix, display_labels=list(class_names))
    display.plot(ax=ax, cmap="Blues", colorbar=False, values_format="d")
    # Add the row share (sensitivity and specificity on the diagonal) under each count.
    for (row, column), text in np.ndenumerate(display.text_):
        share = f"{matrix[row, column] / row_totals[row, 0]:.0%}" if row_totals[row, 0] else "–"
        text.set_text(f"{matrix[row, column]}\n({share} of true {class_names[row]})")
        text.set_fontsize("small")
    ax.set(title=title, xlabel="Predicted class", ylabel="True class")
    return _save(fig, out_path)


@_own_style
def plot_predicted_vs_true(
    y_true: ArrayLike, y_pred: ArrayLike, out_path: PathLike, quantity: str = "Age", units: str = "years"
) -> Path:
    """Scatter of predicted against true values with the identity line, MAE and Pearson r in the title.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_cases,)
        True and predicted values.
    out_path : path
        PNG file to write.
    quantity, units : str
        Axis wording, e.g. ``"Age"`` and ``"years"``.

    Returns
    -------
    Path
        ``out_path``.
    """
    truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
    low, high = min(truth.min(), pred.min()), max(truth.max(), pred.max())
    margin = 0.05 * (high - low or 1.0)
    limits = (low - margin, high + margin)
    fig = Figure(figsize=(5.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(limits, limits, linestyle="--", color="grey", label="Identity (perfect prediction)")
    ax.scatter(truth, pred, s=25, alpha=0.8, color=HIGHLIGHT_COLOUR, label=f"Cases (n = {truth.size})")
    mae = mean_absolute_error(truth, pred)
    # Pearson r of a constant is 0 / 0: leave it out of the title rather than print nan.
    correlation = f", r = {np.corrcoef(truth, pred)[0, 1]:.2f}" if np.ptp(truth) and np.ptp(pred) else ""
    axis_label = _with_units(quantity.lower(), units)
    ax.set(xlim=limits, ylim=limits, aspect="equal",
           title=f"Predicted vs true {quantity.lower()}: MAE = {mae:.2f} {units}{correlation}",
           xlabel=f"True {axis_label}", ylabel=f"Predicted {axis_label}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, out_path)


@_own_style
def plot_bland_altman(
    y_true: ArrayLike, y_pred: ArrayLike, out_path: PathLike, quantity: str = "Age", units: str = "years"
) -> Path:
    """Bland-Altman plot: difference (predicted - true) against the mean of the two, per case.

    Draws the mean difference (bias) and the limits of agreement, bias +- 1.96 standard deviations of
    the differences (ddof=1), with their values in the legend. A slope in the cloud shows
    regression to the mean, typical of age predictors.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_cases,)
        True and predicted values.
    out_path : path
        PNG file to write.
    quantity, units : str
        Axis wording.

    Returns
    -------
    Path
        ``out_path``.
    """
    truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
    difference = pred - truth
    bias = difference.mean()
    spread = LIMITS_OF_AGREEMENT_SD * difference.std(ddof=1) if difference.size > 1 else 0.0
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter((truth + pred) / 2, difference, s=25, alpha=0.8, color=HIGHLIGHT_COLOUR,
               label=f"Cases (n = {truth.size})")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axhline(bias, color=BEST_COLOUR, linewidth=2, label=f"Mean difference (bias) {bias:+.2f} {units}")
    for bound in (bias - spread, bias + spread):
        ax.axhline(bound, color=BEST_COLOUR, linestyle="--", linewidth=1.2)
    # One legend entry for both limits.
    limits = f"[{bias - spread:.2f}, {bias + spread:.2f}] {units}"
    ax.plot([], [], color=BEST_COLOUR, linestyle="--",
            label=f"Limits of agreement ±{LIMITS_OF_AGREEMENT_SD} SD: {limits}")
    axis_label = _with_units(quantity.lower(), units)
    ax.set(title=f"Bland-Altman plot of predicted {quantity.lower()}",
           xlabel=f"Mean of true and predicted {axis_label}", ylabel=f"Predicted − true {axis_label}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, out_path)


#: Colours of the two models a before/after calibration figure compares: the uncalibrated one, then the calibrated.
BEFORE_AFTER_COLOURS = (MEDIAN_COLOUR, HIGHLIGHT_COLOUR)


def _require_before_after(curves: Mapping) -> None:
    """Refuse a before/after figure of no model or of more models than it has colours."""
    if not 0 < len(curves) <= len(BEFORE_AFTER_COLOURS):
        raise ValueError(f"one or {len(BEFORE_AFTER_COLOURS)} models per figure, got {len(curves)}")


@_own_style
def plot_reliability_diagram(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], out_path: PathLike, n_bins: int = DEFAULT_N_BINS,
    title: str = "Reliability diagram",
) -> Path:
    """Reliability diagram of one or two models (e.g. before and after calibration), ECE in the legend.

    Top: observed frequency of the positive class against the mean predicted probability in each non-empty bin
    (:func:`nnunet_ext.metrics.calibration.reliability_bins`), with the diagonal of perfect calibration. Bottom: the
    number of cases per bin.

    Parameters
    ----------
    curves : dict
        ``{label: (y_true, y_prob)}``, drawn in the colours of :data:`BEFORE_AFTER_COLOURS` (at most two).
    out_path : path
        PNG file to write.
    n_bins : int, default=10
        Equal-width probability bins.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``out_path``.
    """
    _require_before_after(curves)
    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle=":", color="grey", label="Perfect calibration")
    width = 1.0 / n_bins / len(curves)
    for i, ((name, (y_true, y_prob)), colour) in enumerate(zip(curves.items(), BEFORE_AFTER_COLOURS)):
        bins = reliability_bins(y_true, y_prob, n_bins)
        filled = bins["count"] > 0
        ece = expected_calibration_error(y_true, y_prob, n_bins)
        top.plot(bins["mean_probability"][filled], bins["observed_frequency"][filled], marker="o", color=colour,
                 label=f"{name} (ECE {ece:.3f})")
        bottom.bar(bins["edges"][:-1] + i * width, bins["count"], width=width, align="edge", color=colour)
    top.set(xlim=(0, 1), ylim=(-0.02, 1.02), title=title, ylabel="Observed frequency of the positive class")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="Predicted probability of the positive class", ylabel="Cases")
    bottom.grid(alpha=0.3)
    return _save(fig, out_path)


@_own_style
def plot_error_against_age(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]], out_path: PathLike, quantity: str = "Age",
    units: str = "years",
) -> Path:
    """Error (predicted - true) against the true value of one or two models (e.g. before and after the de-bias),
    each with its least-squares line (:func:`nnunet_ext.metrics.calibration.age_bias`); the slope in the legend.

    Parameters
    ----------
    curves : dict
        ``{label: (y_true, y_pred)}``, drawn in the colours of :data:`BEFORE_AFTER_COLOURS` (at most two).
    out_path : path
        PNG file to write.
    quantity, units : str
        Axis wording.

    Returns
    -------
    Path
        ``out_path``.
    """
    _require_before_after(curves)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0, color="grey", linewidth=0.8)
    for (name, (y_true, y_pred)), colour in zip(curves.items(), BEFORE_AFTER_COLOURS):
        truth, pred = paired_vectors(y_true, y_pred, ("y_true", "y_pred"))
        bias = age_bias(truth, pred)
        ax.scatter(truth, pred - truth, s=25, alpha=0.8, color=colour)
        ends = np.array([truth.min(), truth.max()])
        ax.plot(ends, bias["slope"] * ends + bias["intercept"], color=colour, linewidth=2,
                label=f"{name}: slope {bias['slope']:+.2f}")
    axis_label = _with_units(quantity.lower(), units)
    ax.set(title=f"Error against true {quantity.lower()}", xlabel=f"True {axis_label}",
           ylabel=f"Predicted − true {axis_label}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return _save(fig, out_path)


@_own_style
def plot_dice_per_case(
    per_model: Mapping[str, Sequence[float]], out_path: PathLike, metric_name: str = "Dice", seed: int = 0
) -> Path:
    """Box plot with every case as a point, one box per model (e.g. each fold and the ensemble).

    Parameters
    ----------
    per_model : dict
        ``{model: per-case values}`` of a metric in [0, 1]; NaN values are left out.
    out_path : path
        PNG file to write.
    metric_name : str
        The metric's name for the axis and title (e.g. ``"Dice"`` or ``"NSD"``).
    seed : int
        Seed of the horizontal jitter, so that the same data give the same picture.

    Returns
    -------
    Path
        ``out_path``.
    """
    if not per_model:
        raise ValueError("per_model is empty: nothing to plot")
    values = [np.asarray(v, dtype=float) for v in per_model.values()]
    values = [v[~np.isnan(v)] for v in values]
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(max(4.5, 1.2 * len(values) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(1, len(values) + 1)
    # Points show every case, so the boxes draw no outliers of their own.
    ax.boxplot(values, positions=positions, widths=BOX_WIDTH, showfliers=False, showmeans=True,
               medianprops={"color": MEDIAN_COLOUR, "linewidth": 2},
               meanprops={"marker": "D", "markerfacecolor": BEST_COLOUR, "markeredgecolor": BEST_COLOUR})
    for position, model_values in zip(positions, values):
        jitter = rng.uniform(-STRIP_JITTER, STRIP_JITTER, size=model_values.size)
        ax.scatter(position + jitter, model_values, s=16, alpha=0.6, color=HIGHLIGHT_COLOUR, zorder=3)
    ax.set_xticks(positions, [f"{name}\n(n = {v.size})" for name, v in zip(per_model, values)])
    ax.set(ylim=(-0.02, 1.02), ylabel=f"{metric_name} per case", title=f"{metric_name} per test case")
    ax.legend(handles=[
        Line2D([], [], marker="o", linestyle="none", color=HIGHLIGHT_COLOUR, label="One case"),
        Line2D([], [], marker="D", linestyle="none", color=BEST_COLOUR, label="Mean"),
        Line2D([], [], color=MEDIAN_COLOUR, linewidth=2, label="Median; box: quartiles; whiskers: 1.5 IQR"),
    ], loc="lower left", fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_path)


def _lesion_centre(reference: np.ndarray, prediction: np.ndarray) -> tuple[tuple[int, ...], str]:
    """Voxel through which to slice: the centre of the largest connected lesion and what it belongs to.

    The reference's largest lesion is used; without one, the prediction's (a false alarm is worth
    seeing); without either, the centre of the volume.
    """
    for mask, owner in ((reference, "reference"), (prediction, "prediction")):
        components, n_components = label(mask)
        if n_components:
            sizes = np.bincount(components.ravel())[1:]
            centre = center_of_mass(components == np.argmax(sizes) + 1)
            return tuple(int(round(c)) for c in centre), f"largest {owner} lesion"
    return tuple(s // 2 for s in reference.shape), "volume centre (both masks empty)"


@_own_style
def plot_segmentation_overlay(
    image: ArrayLike,
    reference: ArrayLike,
    prediction: ArrayLike,
    spacing: Sequence[float],
    out_path: PathLike,
    title: str = "Segmentation",
) -> Path:
    """Three orthogonal slices through the largest lesion: image with reference and predicted contours.

    Arrays are in SimpleITK's (z, y, x) order (see :func:`~nnunet_ext.metrics.segmentation.load_mask`),
    so for the usual axial acquisitions the panels are axial, coronal and sagittal. Pixels are drawn
    with their physical aspect ratio from ``spacing``. The reference is a solid yellow line, the
    prediction a dashed purple one, so they differ without colour too.

    Parameters
    ----------
    image : array-like, 3-D
        Intensities (one channel, e.g. FLAIR).
    reference, prediction : array-like, 3-D, {0, 1} or bool
        Masks of the image's shape.
    spacing : sequence of 3 floats
        Voxel size in mm along the array axes.
    out_path : path
        PNG file to write.
    title : str
        Figure title, e.g. the case identifier and its Dice.

    Returns
    -------
    Path
        ``out_path``.
    """
    volume = np.asarray(image, dtype=float)
    ref, pred = binary_mask(reference, "reference"), binary_mask(prediction, "prediction")
    if volume.ndim != 3 or ref.shape != volume.shape or pred.shape != volume.shape or len(spacing) != 3:
        raise ValueError(
            f"need a 3-D image, masks of its shape and 3 spacings; got {volume.shape}, {ref.shape}, "
            f"{pred.shape} and {spacing}"
        )
    centre, centre_name = _lesion_centre(ref, pred)
    vmin, vmax = np.percentile(volume, WINDOW_PERCENTILES)
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    for ax, (plane, axis) in zip(fig.subplots(1, 3), PLANES):
        row_axis, column_axis = (a for a in range(3) if a != axis)
        # Axis 0 (z) runs from inferior to superior in the usual orientations: draw it upwards.
        origin = "lower" if row_axis == 0 else "upper"
        ax.imshow(np.take(volume, centre[axis], axis=axis), cmap="gray", vmin=vmin, vmax=vmax, origin=origin,
                  aspect=spacing[row_axis] / spacing[column_axis], interpolation="nearest")
        for mask, colour, linestyle in ((ref, REFERENCE_COLOUR, "solid"), (pred, PREDICTION_COLOUR, "dashed")):
            section = np.take(mask, centre[axis], axis=axis)
            # A slice that is all one value has no contour (matplotlib would warn). No ``origin`` here: contour
            # puts element [0, 0] at data (0, 0) like imshow does with either origin, whereas contour's own
            # ``origin="upper"`` would flip the contours against the image.
            if section.any() and not section.all():
                ax.contour(section.astype(float), levels=[0.5], colors=colour, linestyles=linestyle, linewidths=2)
        ax.set_title(f"{plane} (slice {centre[axis]} of array axis {axis})")
        ax.set_axis_off()
    fig.legend(
        handles=[
            Line2D([], [], color=REFERENCE_COLOUR, linewidth=2, label="Reference"),
            Line2D([], [], color=PREDICTION_COLOUR, linewidth=2, linestyle="dashed", label="Prediction"),
        ],
        loc="outside lower center", ncol=2, frameon=False,
    )
    fig.suptitle(f"{title}\nslices through the {centre_name} at voxel {centre}")
    return _save(fig, out_path)


@_own_style
def plot_training_curves(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    metric: Sequence[float],
    out_path: PathLike,
    metric_name: str = "Validation metric",
    higher_is_better: bool = True,
) -> Path:
    """Training and validation loss (left) and the task metric on the validation fold (right) per epoch.

    The epoch with the best metric is marked on both panels.

    Parameters
    ----------
    epochs : sequence of int
        Epoch numbers.
    train_loss, val_loss, metric : sequences of float, one value per epoch
        NaN where not computed.
    out_path : path
        PNG file to write.
    metric_name : str
        e.g. ``"Validation AUROC"`` or ``"Validation MAE (years)"``.
    higher_is_better : bool
        False for errors such as MAE, so that the lowest value is marked best.

    Returns
    -------
    Path
        ``out_path``.
    """
    series = [np.asarray(s, dtype=float) for s in (epochs, train_loss, val_loss, metric)]
    if len({s.size for s in series}) != 1 or series[0].size == 0:
        raise ValueError(f"need one value per epoch in each series, got lengths {[s.size for s in series]}")
    x, train, val, scores = series
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    loss_ax.plot(x, train, label="Training loss", color=HIGHLIGHT_COLOUR)
    loss_ax.plot(x, val, label="Validation loss", color=BEST_COLOUR)
    loss_ax.set(title="Loss", xlabel="Epoch", ylabel="Loss")
    metric_ax.plot(x, scores, color="black", marker=".", label=metric_name)
    metric_ax.set(title=metric_name, xlabel="Epoch", ylabel=metric_name)
    if not np.all(np.isnan(scores)):
        best = np.nanargmax(scores) if higher_is_better else np.nanargmin(scores)
        best_label = f"Best {metric_name}: {scores[best]:.3f} (epoch {x[best]:g})"
        for ax in (loss_ax, metric_ax):
            ax.axvline(x[best], color="grey", linestyle=":", label=best_label)
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, out_path)
