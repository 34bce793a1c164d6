"""Scoring predictions: well -> compound predictions, per-assay metrics, paired bootstrap tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from momil.data.bags import bag_batches
from momil.errors import MomilError
from momil.io.contract import COMPOUND, LabelMatrix
from momil.io.store import InstanceStore
from momil.progress import progress

if TYPE_CHECKING:  # pragma: no cover
    pass


# ---------------------------------------------------------------------------------------------------- metrics
def _rotation_auc(group: pd.DataFrame, score: str) -> float:
    """The mean over rotations (``fold``) of the ROC-AUC within each rotation's test compounds (NaN if none is
    defined): beside the pooled AUC so that a difference in scale between rotations can neither hide nor fake a
    gain."""
    from sklearn.metrics import roc_auc_score

    if "fold" not in group.columns:
        return float("nan")
    values = [roc_auc_score(g["label"], g[score]) for _, g in group.groupby("fold") if g["label"].nunique() == 2]
    return float(np.mean(values)) if values else float("nan")


def assay_metrics(frame: pd.DataFrame, score: str = "probability") -> pd.DataFrame:
    """Per assay: n, positives, negatives, ROC-AUC and PR-AUC of the pooled predictions (NaN where one class),
    ``defined``, and (with a ``fold`` column) the mean per-rotation ROC-AUC."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rows = []
    for assay, group in frame.groupby("assay", sort=True):
        y = group["label"].to_numpy()
        p = group[score].to_numpy()
        n_pos = int(y.sum())
        defined = 0 < n_pos < len(y)
        rows.append(
            {
                "assay": assay,
                "n": len(y),
                "n_pos": n_pos,
                "n_neg": int(len(y) - n_pos),
                "roc_auc": float(roc_auc_score(y, p)) if defined else float("nan"),
                "pr_auc": float(average_precision_score(y, p)) if defined else float("nan"),
                "roc_auc_per_rotation": _rotation_auc(group, score),
                "defined": defined,
            }
        )
    return pd.DataFrame(rows)


def compound_predictions(well_predictions: pd.DataFrame) -> pd.DataFrame:
    """Compound-level probability = mean over the compound's wells (per assay)."""
    keys = [COMPOUND, "assay"] + (["fold"] if "fold" in well_predictions.columns else [])
    grouped = well_predictions.groupby(keys, sort=True)
    out = grouped["probability"].mean().rename("probability").reset_index()
    out["n_wells"] = grouped.size().to_numpy()
    return out


def attach_labels(predictions: pd.DataFrame, labels: LabelMatrix) -> pd.DataFrame:
    """Known labels joined onto (compound, assay) predictions; unlabelled pairs dropped."""
    return predictions.merge(labels.to_long(), on=[COMPOUND, "assay"], how="inner")


def summarise(metrics: pd.DataFrame, primary: set[str]) -> dict:
    mine = metrics[metrics["assay"].isin(primary)]
    defined = mine[mine["defined"]]
    return {
        "mean_roc_auc_primary": float(defined["roc_auc"].mean()) if len(defined) else float("nan"),
        "mean_pr_auc_primary": float(defined["pr_auc"].mean()) if len(defined) else float("nan"),
        "mean_roc_auc_per_rotation_primary": float(defined["roc_auc_per_rotation"].mean())
        if len(defined)
        else float("nan"),
        "primary_assays": int(len(mine)),
        "primary_assays_defined": int(len(defined)),
        "undefined_primary_assays": sorted(mine.loc[~mine["defined"], "assay"].astype(str)),
    }


# ------------------------------------------------------------------------------------------------- prediction
@torch.no_grad()
def predict_wells(
    model,
    store: InstanceStore,
    wells: np.ndarray,
    assays: list[str] | None = None,
    device="cpu",
    batch_wells: int = 64,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Well-level probabilities for every well and assay (all the model's assays by default)."""
    device = torch.device(device) if isinstance(device, str) else device
    names = model.assays if assays is None else list(assays)
    index = [model.assays.index(a) for a in names]
    frames = []
    model.eval()
    with progress(total=len(wells), desc="predict", unit="well", enabled=show_progress) as bar:
        for batch, bags, mask in bag_batches(store, wells, batch_wells, device):
            probs = model.predict(bags, mask, index).float().cpu().numpy()  # (B, T)
            if not np.isfinite(probs).all():
                raise MomilError(
                    "the model gave NaN or infinite predictions -- its weights are not finite "
                    "(training diverged?); train it again with a lower --lr"
                )
            meta = store.wells.iloc[batch]
            frames.append(
                pd.DataFrame(
                    {
                        "Metadata_Plate": np.repeat(meta["Metadata_Plate"].to_numpy(), len(names)),
                        "Metadata_Well": np.repeat(meta["Metadata_Well"].to_numpy(), len(names)),
                        COMPOUND: np.repeat(meta[COMPOUND].to_numpy(), len(names)),
                        "assay": np.tile(np.array(names, dtype=object), len(batch)),
                        "probability": probs.reshape(-1),
                    }
                )
            )
            bar.update(len(batch))
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well", COMPOUND, "assay", "probability"])
    )


# ------------------------------------------------------------------------------------------------ bootstrap
def paired_bootstrap(
    scored_a: pd.DataFrame, scored_b: pd.DataFrame, assays: list[str] | None = None, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Paired one-sided bootstrap of compound-level ROC-AUC: is method A better than method B?

    ``scored_a`` / ``scored_b``: compound predictions with labels (Metadata_Compound, assay, label,
    probability). Per assay the compounds both methods scored are resampled with replacement, the same draws
    for both methods, and p = (1 + #draws with AUC_A - AUC_B <= 0) / (1 + #valid draws); draws with one class
    are skipped. A last row ``mean`` resamples every assay's compounds in each draw and tests the mean
    difference over the assays. Rows: assay, n, auc_a, auc_b, difference, p_value, draws."""
    from sklearn.metrics import roc_auc_score

    keys = [COMPOUND, "assay"]
    merged = scored_a[keys + ["label", "probability"]].merge(
        scored_b[keys + ["probability"]], on=keys, suffixes=("_a", "_b")
    )
    if assays is not None:
        merged = merged[merged["assay"].isin(set(assays))]
    rng = np.random.default_rng(seed)
    rows, per_draw = [], []
    for assay, group in merged.groupby("assay", sort=True):
        y = group["label"].to_numpy()
        pa, pb = group["probability_a"].to_numpy(), group["probability_b"].to_numpy()
        if y.min() == y.max():
            rows.append(
                {
                    "assay": assay,
                    "n": len(y),
                    "auc_a": np.nan,
                    "auc_b": np.nan,
                    "difference": np.nan,
                    "p_value": np.nan,
                    "draws": 0,
                }
            )
            continue
        auc_a, auc_b = roc_auc_score(y, pa), roc_auc_score(y, pb)
        diffs = np.full(n_boot, np.nan)
        for i in range(n_boot):
            take = rng.integers(0, len(y), len(y))
            yt = y[take]
            if yt.min() == yt.max():
                continue
            diffs[i] = roc_auc_score(yt, pa[take]) - roc_auc_score(yt, pb[take])
        valid = diffs[~np.isnan(diffs)]
        rows.append(
            {
                "assay": assay,
                "n": len(y),
                "auc_a": auc_a,
                "auc_b": auc_b,
                "difference": auc_a - auc_b,
                "p_value": (1 + int((valid <= 0).sum())) / (1 + len(valid)),
                "draws": len(valid),
            }
        )
        per_draw.append(diffs)
    if per_draw:
        stacked = np.vstack(per_draw)  # (assays, draws): the mean over assays defined in a draw
        mean_diff = np.nanmean(np.where(np.isnan(stacked).all(0, keepdims=True), 0.0, stacked), axis=0)
        defined = [r for r in rows if not np.isnan(r["difference"])]
        rows.append(
            {
                "assay": "mean",
                "n": int(sum(r["n"] for r in defined)),
                "auc_a": float(np.mean([r["auc_a"] for r in defined])),
                "auc_b": float(np.mean([r["auc_b"] for r in defined])),
                "difference": float(np.mean([r["difference"] for r in defined])),
                "p_value": (1 + int((mean_diff <= 0).sum())) / (1 + len(mean_diff)),
                "draws": len(mean_diff),
            }
        )
    return pd.DataFrame(rows, columns=["assay", "n", "auc_a", "auc_b", "difference", "p_value", "draws"])


def metrics_table(metrics: pd.DataFrame, primary_only: bool = True) -> str:
    frame = metrics[metrics["primary"]] if primary_only and "primary" in metrics else metrics
    lines = [f"{'assay':<14} {'n':>5} {'pos':>5} {'ROC-AUC':>8} {'per rot.':>8} {'PR-AUC':>7}"]
    for _, row in frame.iterrows():
        roc = "undef." if not row["defined"] else f"{row['roc_auc']:.3f}"
        per = (
            "undef."
            if not row["defined"] or np.isnan(row["roc_auc_per_rotation"])
            else f"{row['roc_auc_per_rotation']:.3f}"
        )
        pr = "undef." if not row["defined"] else f"{row['pr_auc']:.3f}"
        lines.append(f"{str(row['assay']):<14} {row['n']:>5} {row['n_pos']:>5} {roc:>8} {per:>8} {pr:>7}")
    defined = frame[frame["defined"]]
    if len(defined):
        lines.append(
            f"{'mean':<14} {'':>5} {'':>5} {defined['roc_auc'].mean():>8.3f} "
            f"{defined['roc_auc_per_rotation'].mean():>8.3f} {defined['pr_auc'].mean():>7.3f}"
        )
    lines.append(
        "ROC-AUC and PR-AUC of the predictions pooled over the rotations; per rot.: the mean of each rotation's ROC-AUC"
    )
    return "\n".join(lines)
