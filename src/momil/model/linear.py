"""The linear floor: ``FM -> Mean -> LR``, a logistic regression per assay on compound-mean profiles.

Every learned method must beat this: it reads the same corrected store, averages each well's instances, then
each compound's replicate wells (the compound-mean profile), standardises the profiles and fits one
scikit-learn logistic regression per assay, with the inverse regularisation strength C chosen by an inner
stratified cross-validation (ROC-AUC) on the training compounds. Nothing of a validation or test compound reaches
the scaling, the choice of C or the fit. Written here and not as a network because scikit-learn does it exactly
(a convex fit, no epochs, no early stopping); the well-level rows it returns have the shape of
:func:`momil.protocol.scoring.predict_wells`, so the protocol scores it like every other method.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from momil.data.pairs import WellPairs
from momil.io.contract import COMPOUND, CONTROL, PLATE, WELL, LabelMatrix
from momil.io.store import InstanceStore

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths the inner cross-validation chooses from
INNER_FOLDS = 3


def well_means(store: InstanceStore, wells: np.ndarray) -> np.ndarray:
    """(len(wells), D) float64 mean of each well's instances."""
    out = np.zeros((len(wells), store.dim), dtype=np.float64)
    for row, well in enumerate(np.asarray(wells, dtype=np.int64)):
        out[row] = store.bag(int(well)).astype(np.float64).mean(axis=0)
    return out


def compound_profiles(store: InstanceStore, wells: np.ndarray) -> pd.DataFrame:
    """Compound-mean profiles of the treatment wells in ``wells``: the mean of the compound's well means."""
    wells = np.asarray(wells, dtype=np.int64)
    meta = store.wells.iloc[wells]
    keep = (meta[CONTROL] == "trt").to_numpy()
    wells, meta = wells[keep], meta[keep]
    means = pd.DataFrame(well_means(store, wells))
    means[COMPOUND] = meta[COMPOUND].astype(str).to_numpy()
    return means.groupby(COMPOUND, sort=True).mean()


def fit_assay(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """A standardise + logistic-regression pipeline for one assay, C by inner stratified CV on (x, y); None when
    y holds one class."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y)) < 2:
        return None
    folds = min(INNER_FOLDS, int(np.bincount(y.astype(int)).min()))
    if folds >= 2:
        inner = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        model = LogisticRegressionCV(Cs=list(C_GRID), cv=inner, scoring="roc_auc", max_iter=2000)
    else:  # a class with one compound: no inner split is possible, the middle of the grid
        model = LogisticRegression(C=C_GRID[len(C_GRID) // 2], max_iter=2000)
    with warnings.catch_warnings():  # scikit-learn 1.8 announces new LogisticRegressionCV defaults; ours are set
        warnings.simplefilter("ignore", FutureWarning)
        return make_pipeline(StandardScaler(), model).fit(x, y.astype(int))


def mean_lr_predictions(
    store: InstanceStore,
    labels: LabelMatrix,
    assays: list[str],
    train_wells: np.ndarray,
    test_wells: np.ndarray,
    seed: int = 0,
) -> pd.DataFrame:
    """Well-level probabilities of the test wells for each assay (rows as ``predict_wells``): a logistic
    regression per assay fitted on the compound-mean profiles of the training compounds with a label. An assay
    whose training labels hold one class predicts its training active rate."""
    train_profiles = compound_profiles(store, train_wells)
    test_wells = np.asarray(test_wells, dtype=np.int64)
    meta = store.wells.iloc[test_wells]
    test_profiles = compound_profiles(store, test_wells)
    test_compounds = meta[COMPOUND].astype(str).to_numpy()
    frames = []
    for assay in assays:
        pairs = WellPairs.build(store.wells, labels, [assay])
        labelled = pairs.labelled_wells(np.asarray(train_wells, np.int64))
        _, _, y_wells = pairs.pairs(labelled)
        if len(y_wells) == 0:
            continue
        by_compound = pd.Series(y_wells, index=store.wells[COMPOUND].astype(str).to_numpy()[labelled])
        y = by_compound.groupby(level=0).first()
        x = train_profiles.loc[y.index].to_numpy()
        model = fit_assay(x, y.to_numpy(), seed)
        if model is None:
            probability = np.full(len(test_wells), float(y.mean()))
        else:
            per_compound = pd.Series(model.predict_proba(test_profiles.to_numpy())[:, 1], index=test_profiles.index)
            probability = per_compound.reindex(test_compounds).to_numpy()
        frames.append(
            pd.DataFrame(
                {
                    PLATE: meta[PLATE].to_numpy(),
                    WELL: meta[WELL].to_numpy(),
                    COMPOUND: meta[COMPOUND].to_numpy(),
                    "assay": assay,
                    "probability": probability,
                }
            )
        )
    columns = [PLATE, WELL, COMPOUND, "assay", "probability"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def instance_count_predictions(
    store: InstanceStore, labels: LabelMatrix, assays: list[str], train_wells: np.ndarray, test_wells: np.ndarray
) -> pd.DataFrame:
    """The sanity baseline: a logistic regression per assay on log(1 + instances per well), nothing else.

    Fitted on the training wells with a label; an assay whose training labels hold one class predicts its
    training active rate. Rows as :func:`momil.protocol.scoring.predict_wells`."""
    from sklearn.linear_model import LogisticRegression

    feature = np.log1p(store.counts.astype(np.float64))[:, None]
    frames = []
    meta = store.wells.iloc[test_wells]
    for assay in assays:
        pairs = WellPairs.build(store.wells, labels, [assay])
        wells = pairs.labelled_wells(np.asarray(train_wells, np.int64))
        _, _, y = pairs.pairs(wells)
        if len(y) == 0:
            continue
        if y.min() == y.max():
            prob = np.full(len(test_wells), float(y.mean()))
        else:
            model = LogisticRegression(max_iter=1000).fit(feature[wells], y.astype(int))
            prob = model.predict_proba(feature[test_wells])[:, 1]
        frames.append(
            pd.DataFrame(
                {
                    "Metadata_Plate": meta["Metadata_Plate"].to_numpy(),
                    "Metadata_Well": meta["Metadata_Well"].to_numpy(),
                    COMPOUND: meta[COMPOUND].to_numpy(),
                    "assay": assay,
                    "probability": prob,
                }
            )
        )
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well", COMPOUND, "assay", "probability"])
    )
