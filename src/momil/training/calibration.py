"""Fitting a model's output calibration on its validation fold (see :mod:`momil.model.calibration`)."""

from __future__ import annotations

import numpy as np
import torch

from momil.data.bags import load_bags
from momil.data.pairs import WellPairs
from momil.io.store import InstanceStore

MIN_SLOPE = 0.1  # a model that ranks its validation pairs backwards keeps its order, on a flat scale
MAX_SLOPE = 20.0
RATE_CLIP = 0.02  # assays' training active rates kept in [0.02, 0.98]


def training_rates(pairs: WellPairs, train_wells: np.ndarray) -> np.ndarray:
    """Each assay's active rate among the labelled training pairs, clipped to [RATE_CLIP, 1 - RATE_CLIP]; assays
    without training pairs get the rate over all of them."""
    _, assay, label = pairs.pairs(pairs.labelled_wells(np.asarray(train_wells, np.int64)))
    n = len(pairs.assays)
    counts = np.bincount(assay, minlength=n).astype(np.float64)
    actives = np.bincount(assay, weights=label, minlength=n)
    overall = float(label.mean()) if len(label) else 0.5
    rates = np.where(counts > 0, actives / np.maximum(counts, 1), overall)
    return np.clip(rates, RATE_CLIP, 1 - RATE_CLIP)


def _slope(z: np.ndarray, offset: np.ndarray, y: np.ndarray) -> float:
    """The slope s of y ~ sigmoid(s * z + offset) that minimises the log loss, in [MIN_SLOPE, MAX_SLOPE]."""
    from scipy.optimize import minimize_scalar

    def loss(s: float) -> float:
        t = s * z + offset
        return float(np.mean(np.logaddexp(0.0, t) - y * t))

    return float(minimize_scalar(loss, bounds=(MIN_SLOPE, MAX_SLOPE), method="bounded").x)


@torch.no_grad()
def calibrate(
    model,
    store: InstanceStore,
    val_wells: np.ndarray,
    pairs: WellPairs,
    device,
    train_wells: np.ndarray | None = None,
    batch_wells: int = 64,
):
    """Set ``model.calibration`` from ``val_wells``: each assay's logits standardised over all of them, offset by
    the log-odds of its active rate among the training pairs of ``train_wells`` (none: the validation pairs'),
    and one slope fitted to the labelled validation pairs. Returns the model."""
    calibration = model.calibration
    calibration.shift.zero_()
    calibration.scale.fill_(1.0)
    calibration.slope_bias.copy_(torch.tensor([1.0, 0.0]))
    calibration.rate_logit.zero_()
    wells = np.asarray(val_wells, dtype=np.int64)
    if len(wells) < 2:
        return model
    model.eval()
    chunks = []
    for start in range(0, len(wells), batch_wells):
        bags, mask = load_bags(store, wells[start : start + batch_wells], device)
        chunks.append(model.predict(bags, mask).double().cpu().numpy())
    p = np.clip(np.concatenate(chunks), 1e-12, 1 - 1e-12)  # (wells, T)
    logits = np.log(p) - np.log1p(-p)
    shift = logits.mean(axis=0)
    scale = logits.std(axis=0)
    scale = np.where(scale > 1e-6, scale, 1.0)
    z = (logits - shift) / scale
    labelled = pairs.labelled_wells(wells)
    rows, assay, label = pairs.pairs(labelled)
    position = {int(w): i for i, w in enumerate(wells)}
    x = z[[position[int(w)] for w in labelled[rows]], assay]
    rates = training_rates(pairs, train_wells if train_wells is not None else wells)
    rate_logit = np.log(rates) - np.log1p(-rates)
    slope = _slope(x, rate_logit[assay], label.astype(np.float64)) if len(np.unique(label)) == 2 else 1.0
    calibration.shift.copy_(torch.from_numpy(shift).float())
    calibration.scale.copy_(torch.from_numpy(scale).float())
    calibration.rate_logit.copy_(torch.from_numpy(rate_logit).float())
    calibration.slope_bias.copy_(torch.tensor([slope, 0.0]))
    return model
