"""How well instance features separate known compound classes: a cross-validated linear probe on well means.

Used to judge a feature extractor (a pretrained backbone against random weights, one checkpoint against
another): each well's instance features are averaged, and a standardised logistic regression predicts the well's
compound class (a mechanism of action, a target, or the simulator's classes from
:func:`momil.simulate.compound_classes`) in stratified folds. Wells of compounds without a class are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from momil.errors import MomilError
from momil.io.store import InstanceStore


def well_means(store: InstanceStore, classes: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(wells x D mean features, class per well) for the wells whose compound has a class in ``classes``
    (indexed by Metadata_Compound)."""
    compounds = store.wells["Metadata_Compound"].to_numpy()
    keep = np.flatnonzero(pd.Series(compounds).isin(classes.index).to_numpy())
    if len(keep) == 0:
        raise MomilError("no well of the store belongs to a compound with a known class")
    x = np.stack([np.asarray(store.bag(int(i)), dtype=np.float64).mean(0) for i in keep])
    return x, classes.loc[compounds[keep]].to_numpy()


def linear_probe(store: InstanceStore, classes: pd.Series, c: float = 1.0, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated accuracy (and ROC-AUC for two classes) of a logistic regression on well means."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = well_means(store, classes)
    counts = pd.Series(y).value_counts()
    if len(counts) < 2 or counts.min() < folds:
        raise MomilError(f"the probe needs at least two classes with {folds} wells each, got {counts.to_dict()}")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=c))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    result = {
        "wells": len(y),
        "classes": int(len(counts)),
        "accuracy": float(cross_val_score(model, x, y, cv=split, scoring="accuracy").mean()),
        "majority": float(counts.max() / len(y)),
    }
    if len(counts) == 2:
        result["roc_auc"] = float(cross_val_score(model, x, y, cv=split, scoring="roc_auc").mean())
    return result


def compare_backbones(
    load_data,
    wells,
    backbones: dict[str, str],
    targets: dict[str, pd.Series],
    work,
    field,
    extract_settings,
    cs=(0.01, 0.1, 1.0),
    folds: int = 5,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Extracts the fields of ``load_data`` once per backbone (name -> weights file, "" for random weights) into
    ``work``/store-<name> and probes every target (name -> class per compound) at each regularisation strength
    C. Rows: features, target, C, wells, classes, accuracy, majority, roc_auc (NaN for more than two classes)."""
    import dataclasses
    from pathlib import Path

    from momil.imaging.extract import extract
    from momil.io.atomic import safe_name

    rows = []
    for name, weights in backbones.items():
        settings = dataclasses.replace(extract_settings, weights=weights, overwrite=True)
        store = extract(
            load_data, wells, Path(work) / f"store-{safe_name(name, 20)}", field, settings, show_progress=show_progress
        ).store
        for target, classes in targets.items():
            for c in cs:
                result = linear_probe(store, classes, c=c, folds=folds)
                rows.append(
                    {
                        "features": name,
                        "target": target,
                        "C": c,
                        "wells": result["wells"],
                        "classes": result["classes"],
                        "accuracy": result["accuracy"],
                        "majority": result["majority"],
                        "roc_auc": result.get("roc_auc", float("nan")),
                    }
                )
    return pd.DataFrame(rows)


def retrieval_scores(store: InstanceStore, classes: pd.Series, null_size: int, seed: int = 0) -> dict:
    """copairs mAP of the store's well means (:mod:`momil.protocol.retrieval`): phenotypic activity (replicate
    wells against negcon wells; NaN where the store has no negcon wells or no replicates) and phenotypic
    consistency by ``classes`` (NaN with fewer than two classes of two compounds): mean mAP and the fraction of
    compounds / classes retrieved at corrected p < 0.05."""
    from momil.io.profiles import feature_columns, well_profiles
    from momil.protocol.retrieval import phenotypic_activity, phenotypic_consistency

    profiles = well_profiles(store)
    features = feature_columns(profiles)
    out = {}
    for what, compute in (
        ("activity", lambda: phenotypic_activity(profiles, features, null_size, seed=seed)),
        ("consistency", lambda: phenotypic_consistency(profiles, features, classes, null_size, seed=seed)),
    ):
        try:
            _, summary = compute()
        except MomilError:  # the store cannot answer this question (no controls, no replicates, one class)
            summary = {f"{what}_map": float("nan"), f"{what}_retrieved": float("nan")}
        out[f"{what}_map"], out[f"{what}_retrieved"] = summary[f"{what}_map"], summary[f"{what}_retrieved"]
    return out
