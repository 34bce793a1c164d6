"""Fitting a model's output calibration on its validation fold (see :mod:`momil.model.calibration`)."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from momil.data.pairs import WellPairs
from momil.io.store import InstanceStore
from momil.training.inference import predict_all

MIN_SLOPE = 0.1  # a model that ranks its validation pairs backwards keeps its order, on a flat scale


@torch.no_grad()
def calibrate(model, store: InstanceStore, val_wells: np.ndarray, pairs: WellPairs, device, batch_wells: int = 64):
    """Set ``model.calibration`` from ``val_wells``: each assay's logits standardised over all of them, then the
    labelled pairs' labels regressed on the standardised logits. Returns the model."""
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
    if len(np.unique(label)) == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = LogisticRegression(C=1.0).fit(x.reshape(-1, 1), label.astype(int))
        slope, bias = max(float(fitted.coef_[0, 0]), MIN_SLOPE), float(fitted.intercept_[0])
    calibration.shift.copy_(torch.from_numpy(shift).float())
    calibration.scale.copy_(torch.from_numpy(scale).float())
    calibration.slope_bias.copy_(torch.tensor([slope, bias]))
    return model
