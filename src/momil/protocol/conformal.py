"""Conformal calls for new compounds: Mondrian (class-conditional) inductive conformal prediction on a model's
compound-level probabilities, with crepes.

The calibration set is the predicting model's own validation fold: the compound-level predictions of the
validation compounds with a known label, which ``momil train`` and every rotation of ``momil cv`` save beside the
model (:func:`save_validation_predictions`). The compounds being predicted are never among them (they would be
if one predicted the validation fold itself; the caller's choice, named in the provenance).

Per assay, with p a compound's probability of being active:

    nonconformity of "active" = 1 - p,   of "inactive" = p
    p-value of a class        = crepes' Mondrian p-value, the calibration compounds of that class only

so that, for each class separately, a compound of that class falls outside its prediction set with probability at
most the significance (the guarantee holds per assay and class, over exchangeable calibration and test
compounds). The prediction set at significance e holds the classes with p-value > e; a call is ``confident``
when the set holds exactly one class. Written here because crepes gives the p-values but not the bookkeeping
of many assays and two nonconformity functions over one probability.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from momil.errors import MomilError
from momil.io.atomic import atomic_path
from momil.io.contract import COMPOUND, LabelMatrix
from momil.io.store import InstanceStore
from momil.protocol.scoring import attach_labels, compound_predictions, predict_wells

VALIDATION_COLUMNS = [COMPOUND, "assay", "label", "probability"]


def validation_path(model_path) -> Path:
    """Where the validation-fold predictions of ``model_path`` (``x.pt``) lie: ``x_validation.parquet``."""
    path = Path(model_path)
    return path.with_name(path.stem + "_validation.parquet")


def validation_predictions(
    model, store: InstanceStore, val_wells: np.ndarray, labels: LabelMatrix, device="cpu"
) -> pd.DataFrame:
    """Compound-level predictions of the model's assays for its validation compounds with a known label."""
    frame = predict_wells(model, store, np.asarray(val_wells, np.int64), None, device)
    scored = attach_labels(compound_predictions(frame), labels)
    return scored[VALIDATION_COLUMNS].sort_values([COMPOUND, "assay"], ignore_index=True)


def save_validation_predictions(
    model, store: InstanceStore, val_wells: np.ndarray, labels: LabelMatrix, model_path, device="cpu"
) -> Path:
    """Write :func:`validation_predictions` beside ``model_path`` (atomically); returns the path."""
    path = validation_path(model_path)
    frame = validation_predictions(model, store, val_wells, labels, device)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def read_validation_predictions(model_path) -> pd.DataFrame:
    path = validation_path(model_path)
    if not path.exists():
        raise MomilError(
            f"{path}: no validation-fold predictions beside the model, so --calibrate has nothing to calibrate on "
            "-- train the model again with this version of `momil train` or `momil cv`, which write them"
        )
    frame = pd.read_parquet(path)
    missing = [c for c in VALIDATION_COLUMNS if c not in frame.columns]
    if missing:
        raise MomilError(f"{path}: missing column {missing[0]} -- write it again with `momil train`")
    return frame


def conformal_calls(
    calibration: pd.DataFrame, predictions: pd.DataFrame, significance: float = 0.1, seed: int = 0
) -> pd.DataFrame:
    """``predictions`` (compound level: ``Metadata_Compound``, ``assay``, ``probability``, ...) with, per row,
    ``p_active``, ``p_inactive``, ``prediction_set`` ("active", "inactive", "active|inactive" or "" for the empty
    set), ``confident`` (one class in the set), ``call`` (that class, else "") and the calibration counts
    ``n_cal_active``, ``n_cal_inactive``. An assay without calibration compounds of a class cannot reject that
    class (its p-value is 1). Smoothed p-values with a fixed ``seed``: the same inputs give the same calls."""
    from crepes import ConformalClassifier

    if not 0 < significance < 1:
        raise MomilError(f"--significance must lie in (0, 1), not {significance}")
    out = predictions.copy()
    for column in ("p_active", "p_inactive"):
        out[column] = 1.0
    out["n_cal_active"], out["n_cal_inactive"] = 0, 0
    by_assay = {a: g for a, g in calibration.groupby("assay", sort=False)}
    for assay, rows in out.groupby("assay", sort=False).groups.items():
        cal = by_assay.get(assay)
        if cal is None:
            continue
        y = cal["label"].to_numpy().astype(int)
        p = cal["probability"].to_numpy(np.float64)
        alphas = np.where(y == 1, 1.0 - p, p)  # each calibration compound's nonconformity under its own class
        counts = np.bincount(y, minlength=2)
        out.loc[rows, "n_cal_active"], out.loc[rows, "n_cal_inactive"] = int(counts[1]), int(counts[0])
        test = out.loc[rows, "probability"].to_numpy(np.float64)
        for label, column, alpha in ((1, "p_active", 1.0 - test), (0, "p_inactive", test)):
            if counts[label] == 0:
                continue
            classifier = ConformalClassifier().fit(alphas[y == label], bins=np.full(counts[label], label))
            p_values = classifier.predict_p(alpha.reshape(-1, 1), bins=np.full(len(alpha), label), seed=seed)
            out.loc[rows, column] = np.asarray(p_values).reshape(-1)
    active, inactive = out["p_active"] > significance, out["p_inactive"] > significance
    sets = np.select([active & inactive, active, inactive], ["active|inactive", "active", "inactive"], "")
    out["prediction_set"] = sets
    out["confident"] = active ^ inactive
    out["call"] = np.where(out["confident"], np.where(active, "active", "inactive"), "")
    out["significance"] = significance
    return out
