"""Linear models on frozen features: the linear probe's (``fomo_linear_probe``) and the closed-form start of the
image-level heads (``trainers/case_level.py``).

Ridge regression (regression) or L2-regularised logistic regression (classification) on standardised features; the
penalty is chosen inside the data given (leave-one-out for ridge, stratified inner folds for the logistic model), so
a caller that fits on a training part never lets a validation case choose it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION
from nnunet_ext.errors import FomoInputError

#: Ridge penalties tried by leave-one-out (the features are standardised first).
RIDGE_ALPHAS = np.logspace(-2, 6, 17)
#: Inverse penalties of the logistic model, tried by inner cross-validation.
LOGISTIC_CS = np.logspace(-4, 2, 13)
#: Inner folds of the logistic model's penalty choice (fewer where a class has fewer cases).
INNER_FOLDS = 5
LOGISTIC_MAX_ITER = 5000
#: Cases of each class the logistic model's inner cross-validation needs.
MIN_CASES_PER_CLASS = 2


class LinearMap(NamedTuple):
    """``y = features @ weight + bias`` on the raw (unstandardised) features: the fitted model's decision function
    (the value for ridge, the log-odds of class 1 for the logistic model)."""

    weight: np.ndarray
    bias: float
    penalty: float


def fit_linear_model(task_type: str, features: np.ndarray, targets: np.ndarray, seed: int):
    """The fitted scikit-learn model (a standardising pipeline; for classification the inner search around it)."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task_type == CLASSIFICATION:
        classes, counts = np.unique(targets.astype(int), return_counts=True)
        if len(classes) < 2 or counts.min() < MIN_CASES_PER_CLASS:
            raise FomoInputError(f"fewer than {MIN_CASES_PER_CLASS} cases of a class: too few for a linear model")
        inner = StratifiedKFold(min(INNER_FOLDS, int(counts.min())), shuffle=True, random_state=seed)
        model = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=LOGISTIC_MAX_ITER)),
                             {"logisticregression__C": LOGISTIC_CS}, cv=inner, scoring="neg_log_loss")
        return model.fit(features, targets.astype(int))
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(features, targets)


def predict_linear_model(task_type: str, model, features: np.ndarray) -> np.ndarray:
    """P(class 1) or the value for every row of ``features``."""
    return model.predict_proba(features)[:, 1] if task_type == CLASSIFICATION else model.predict(features)


def as_linear_map(task_type: str, model) -> LinearMap:
    """The fitted model as one affine map of the raw features (the standardisation folded into the weights)."""
    pipeline = model.best_estimator_ if task_type == CLASSIFICATION else model
    scaler, linear = pipeline[0], pipeline[-1]
    coefficients = np.ravel(linear.coef_) / scaler.scale_
    bias = float(np.ravel(linear.intercept_)[0] - coefficients @ scaler.mean_)
    penalty = float(1.0 / linear.C if task_type == CLASSIFICATION else linear.alpha_)
    return LinearMap(coefficients, bias, penalty)
