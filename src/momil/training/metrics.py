"""Metrics of a fit: ROC-AUC and the validation score that selects the epoch."""

from __future__ import annotations

import math

import numpy as np


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC, NaN when ``y`` holds one class (undefined, never 0.5)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, score))


def validation_score(assay: np.ndarray, label: np.ndarray, prob: np.ndarray, primary: np.ndarray) -> tuple[float, dict]:
    """Mean well-level ROC-AUC over primary assays with both classes (all assays if no primary has them)."""
    per_assay = {}
    for t in np.unique(assay):
        mine = assay == t
        per_assay[int(t)] = roc_auc(label[mine], prob[mine])
    chosen = [v for t, v in per_assay.items() if primary[t] and not math.isnan(v)]
    if not chosen:
        chosen = [v for v in per_assay.values() if not math.isnan(v)]
    return (float(np.mean(chosen)) if chosen else float("nan")), per_assay
