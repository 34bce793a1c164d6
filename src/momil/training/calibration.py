"""Fitting a model's output calibration on its validation fold (see :mod:`momil.model.calibration`)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from momil.data.pairs import WellPairs
from momil.io.store import InstanceStore
from momil.training.inference import predict_all

MIN_SLOPE = 0.1  # a model that ranks its validation pairs backwards keeps its order, on a flat scale
MAX_SLOPE = 10.0


def label_levels(pairs: WellPairs, wells: np.ndarray | None = None) -> np.ndarray:
    """Each assay's log-odds of an active label among the labelled pairs of ``wells`` (default: every well of the
    pairs), smoothed ((pos + 1) / (n + 2))."""
    if wells is None:
        assay, label = pairs.assay, pairs.label
    else:
        _, assay, label = pairs.pairs(pairs.labelled_wells(np.asarray(wells, np.int64)))
    n = np.bincount(assay, minlength=len(pairs.assays)).astype(np.float64)
    pos = np.bincount(assay, weights=label.astype(np.float64), minlength=len(pairs.assays))
    rate = (pos + 1.0) / (n + 2.0)
    return np.log(rate) - np.log1p(-rate)


def fitted_slope(x: np.ndarray, offset: np.ndarray, label: np.ndarray) -> float:
    """The slope s in [MIN_SLOPE, MAX_SLOPE] of the most likely logistic model sigmoid(s * x + offset) of ``label``:
    scipy's bounded scalar search (scikit-learn's logistic regression has no fixed offsets)."""
    from scipy.optimize import minimize_scalar

    y = label.astype(np.float64)

    def log_loss(s: float) -> float:
        z = s * x + offset
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    return float(minimize_scalar(log_loss, bounds=(MIN_SLOPE, MAX_SLOPE), method="bounded").x)


@torch.no_grad()
def calibrate(
    model,
    store: InstanceStore,
    val_wells: np.ndarray,
    pairs: WellPairs,
    device,
    batch_wells: int = 64,
    level: np.ndarray | None = None,
    fit_level: np.ndarray | None = None,
):
    """Set ``model.calibration`` from ``val_wells``: each assay's logits standardised over all of them, then the
    labelled pairs' labels regressed on the standardised logits. With ``level`` (T,) each assay's probability is
    centred on that log-odds and only the slope comes from the validation pairs, fitted with ``fit_level`` (default
    ``level``) as each assay's offset; the level is folded into the shift, the bias left 0. Without, one slope and
    one bias from the validation pairs. Returns the model."""
    from sklearn.linear_model import LogisticRegression

    calibration = model.calibration
    calibration.shift.zero_()
    calibration.scale.fill_(1.0)
    calibration.slope_bias.copy_(torch.tensor([1.0, 0.0]))
    wells = np.asarray(val_wells, dtype=np.int64)
    if len(wells) < 2:
        return model
    model.eval()
    p = np.clip(
        predict_all(model, store, wells, device, batch_wells).astype(np.float64), 1e-12, 1 - 1e-12
    )  # (wells, T)
    logits = np.log(p) - np.log1p(-p)
    shift = logits.mean(axis=0)
    scale = logits.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    z = (logits - shift) / scale
    labelled = pairs.labelled_wells(wells)
    rows, assay, label = pairs.pairs(labelled)
    position = {int(w): i for i, w in enumerate(wells)}
    x = z[[position[int(w)] for w in labelled[rows]], assay]
    slope, bias = 1.0, 0.0
    if level is not None:
        level = np.asarray(level, np.float64)
        offset = level if fit_level is None else np.asarray(fit_level, np.float64)
        if len(label):
            slope = fitted_slope(x, offset[assay], label)
        shift = shift - level * scale / slope  # slope * (logit - shift') / scale = slope * z + level
    elif len(np.unique(label)) == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = LogisticRegression(C=1.0).fit(x.reshape(-1, 1), label.astype(int))
        slope, bias = max(float(fitted.coef_[0, 0]), MIN_SLOPE), float(fitted.intercept_[0])
    calibration.shift.copy_(torch.from_numpy(shift).float())
    calibration.scale.copy_(torch.from_numpy(scale).float())
    calibration.slope_bias.copy_(torch.tensor([slope, bias]))
    return model
