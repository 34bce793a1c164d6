"""Representation quality by the field's metric: copairs mean average precision (mAP) of well profiles.

* **Phenotypic activity**: each treatment compound's replicate wells retrieved against the negative-control
  (DMSO) wells: for a treatment well the positives are the compound's other wells and the negatives every negcon
  well (copairs' ``pos_sameby`` = compound, ``neg_diffby`` = the negcon flag). A compound is *retrieved* when its
  mAP's permutation p-value, corrected over the compounds (Benjamini-Hochberg, copairs'
  ``below_corrected_p``), is below the threshold.
* **Phenotypic consistency**: wells of different compounds that share a class (a target, a mechanism)
  retrieved together: positives are the wells of other compounds of the class (``pos_sameby`` = class,
  ``pos_diffby`` = compound), negatives the wells of other classes; one mAP per class.

Both read the well profiles of :func:`momil.io.profiles.well_profiles` (or any table in pycytominer's shape) and
record the null size and seed, as copairs' p-values depend on them. copairs does the retrieval; this module only
chooses the pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from momil.errors import MomilError
from momil.io.contract import COMPOUND, CONTROL

NEGCON_FLAG = "Metadata_momil_negcon"
NULL_SIZE = 5000
THRESHOLD = 0.05


def _summary(scores: pd.DataFrame, what: str, null_size: int, seed: int, threshold: float) -> dict:
    scored = scores.dropna(subset=["mean_average_precision"])
    return {
        f"{what}_map": float(scored["mean_average_precision"].mean()) if len(scored) else float("nan"),
        f"{what}_retrieved": float(scored["below_corrected_p"].mean()) if len(scored) else float("nan"),
        f"{what}_groups": int(len(scored)),
        "null_size": int(null_size),
        "seed": int(seed),
        "threshold": float(threshold),
    }


def phenotypic_activity(
    profiles: pd.DataFrame,
    features: list[str],
    null_size: int = NULL_SIZE,
    threshold: float = THRESHOLD,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Per treatment compound: mAP of its replicate wells against the negcon wells, p-value and corrected p-value
    (copairs); and a summary (mean mAP, fraction retrieved, null size, seed)."""
    from copairs.map import average_precision, mean_average_precision

    if CONTROL not in profiles.columns or not (profiles[CONTROL] == "negcon").any():
        raise MomilError("phenotypic activity needs negative-control wells (Metadata_ControlType == 'negcon')")
    table = profiles[profiles[CONTROL] != "poscon"].reset_index(drop=True)
    meta = table[[COMPOUND, CONTROL]].astype(str).assign(**{NEGCON_FLAG: (table[CONTROL] == "negcon").astype(int)})
    replicated = meta[meta[NEGCON_FLAG] == 0].groupby(COMPOUND).size()
    if not (replicated >= 2).any():
        raise MomilError("phenotypic activity needs compounds with at least two replicate wells")
    ap = average_precision(
        meta,
        table[features].to_numpy(np.float64),
        pos_sameby=[COMPOUND],
        pos_diffby=[],
        neg_sameby=[],
        neg_diffby=[NEGCON_FLAG],
        progress_bar=False,
    )
    ap = ap[ap[NEGCON_FLAG] == 0]
    scores = mean_average_precision(
        ap, [COMPOUND], null_size=null_size, threshold=threshold, seed=seed, progress_bar=False
    )
    return scores, _summary(scores, "activity", null_size, seed, threshold)


def phenotypic_consistency(
    profiles: pd.DataFrame,
    features: list[str],
    classes: pd.Series,
    null_size: int = NULL_SIZE,
    threshold: float = THRESHOLD,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Per class (``classes``: class per compound, indexed by ``Metadata_Compound``): mAP of retrieving the wells
    of the class's other compounds, p-values (copairs); and a summary. Wells of compounds without a class, and
    classes of one compound, are left out."""
    from copairs.map import average_precision, mean_average_precision

    column = "Metadata_momil_class"
    table = profiles[profiles[COMPOUND].isin(classes.index)].reset_index(drop=True)
    table = table.assign(**{column: classes.reindex(table[COMPOUND]).astype(str).to_numpy()})
    compounds_per_class = table.groupby(column)[COMPOUND].nunique()
    table = table[table[column].isin(compounds_per_class.index[compounds_per_class >= 2])].reset_index(drop=True)
    if table[column].nunique() < 2:
        raise MomilError("phenotypic consistency needs at least two classes with two compounds each")
    ap = average_precision(
        table[[COMPOUND, column]].astype(str),
        table[features].to_numpy(np.float64),
        pos_sameby=[column],
        pos_diffby=[COMPOUND],
        neg_sameby=[],
        neg_diffby=[column],
        progress_bar=False,
    )
    scores = mean_average_precision(
        ap, [column], null_size=null_size, threshold=threshold, seed=seed, progress_bar=False
    )
    return scores.rename(columns={column: "class"}), _summary(scores, "consistency", null_size, seed, threshold)
