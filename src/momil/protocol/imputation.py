"""`momil impute`: adaptive conformal label imputation and self-training (paper section 2.3).

After a first MoMIL fit, for each assay t of the model:

* the validation wells with a measured label in t that the model classifies correctly (probability >= 0.5 for
  actives, < 0.5 for inactives) give the empirical thresholds ``th_pos`` = the p-th and ``th_neg`` = the
  (1 - p)-th percentile of their predicted probabilities (linear interpolation, numpy's default); secondary
  assays use the stricter p + alpha and 1 - p - alpha, so they cannot swamp the primary ones;
* ``th_pos`` is never below 0.5 and ``th_neg`` never above 0.5 (where one class dominates the correct wells the
  raw percentile can fall on the other side of 0.5, and imputing an active below 0.5 would contradict the
  model's own call); an assay with fewer than ``min_correct`` correct validation wells gets no thresholds, and
  one without a correctly called active (inactive) gets no ``th_pos`` (``th_neg``);
* training wells without a label in t whose probability is above ``th_pos`` become active, below ``th_neg``
  inactive.

The model is then trained again from scratch on measured plus imputed labels, and the round repeats up to
``rounds`` times, stopping early when a round adds no label. The last round's model is kept, as in the paper's
loop; ``keep_best_round`` keeps the round whose model has the best validation AUC instead (the first fit counts
as round 0). Imputed labels belong to single wells (a
compound's replicate wells may differ), are kept apart from the measured ones (``imputed_labels.parquet``, with
round, probability and thresholds), are counted per assay and round, and only ever touch training wells:
validation keeps measured labels only, and test wells are never seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.data.pairs import WellPairs
from momil.device import resolve_device
from momil.errors import MomilError
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.contract import COMPOUND, LabelMatrix
from momil.io.provenance import provenance
from momil.io.store import InstanceStore
from momil.progress import progress
from momil.training.checkpoints import save_model
from momil.training.fit import FitResult, fit
from momil.training.inference import predict_all, predict_pairs
from momil.training.settings import TrainSettings


@dataclasses.dataclass
class ImputeSettings(Settings):
    confidence: float = setting(
        0.9,
        "p: thresholds are the p-th / (1-p)-th percentiles over correct validation wells",
        low=0.5,
        high=1,
        high_open=True,
    )
    alpha: float = setting(
        0.05, "secondary assays use p + alpha and 1 - p - alpha (stricter)", low=0, high=0.5, high_open=True
    )
    rounds: int = setting(1, "imputation + retraining rounds (stops early when a round adds no label)", low=0)
    min_correct: int = setting(10, "correctly classified validation wells an assay needs to get thresholds", low=1)
    keep_best_round: bool = setting(
        False, "keep the round with the best validation AUC instead of the last (the paper's)"
    )
    max_ratio: float = setting(
        0.0,
        "at most this many imputed labels per assay and class, over all rounds, per measured training label of that "
        "assay and class, the most confident first (0: no cap, the paper's)",
        low=0,
    )

    def check(self) -> None:
        if not self.alpha < 1.0 - self.confidence:
            raise MomilError(f"--alpha must be in [0, 1 - confidence) = [0, {1 - self.confidence:g}), not {self.alpha}")


def conformal_thresholds(
    assay: np.ndarray,
    label: np.ndarray,
    probability: np.ndarray,
    assays: list[str],
    secondary: np.ndarray,
    settings: ImputeSettings,
) -> pd.DataFrame:
    """Per assay: the thresholds from correctly classified validation wells.

    ``assay`` (index into ``assays``), ``label`` and ``probability`` are the validation pairs; ``secondary``
    (T,) marks the assays that get the stricter quantiles. Rows: assay, role, n_val, n_correct, quantile,
    th_pos, th_neg (NaN where the assay has fewer than ``min_correct`` correct wells)."""
    rows = []
    for t, name in enumerate(assays):
        mine = assay == t
        y, p = label[mine], probability[mine]
        correct = (p >= 0.5) == (y >= 0.5)
        q = settings.confidence + (settings.alpha if secondary[t] else 0.0)
        row = {
            "assay": name,
            "role": "secondary" if secondary[t] else "primary",
            "n_val": int(mine.sum()),
            "n_correct": int(correct.sum()),
            "quantile": q,
            "th_pos": float("nan"),
            "th_neg": float("nan"),
        }
        if correct.sum() >= max(1, settings.min_correct):
            if (correct & (y >= 0.5)).any():  # no active called right: no active is imputed
                row["th_pos"] = max(0.5, float(np.quantile(p[correct], q)))
            if (correct & (y < 0.5)).any():
                row["th_neg"] = min(0.5, float(np.quantile(p[correct], 1.0 - q)))
        rows.append(row)
    return pd.DataFrame(rows)


def impute_round(
    model, store: InstanceStore, pairs: WellPairs, train_wells: np.ndarray, thresholds: pd.DataFrame, device
) -> pd.DataFrame:
    """New labels for the unlabelled (well, assay) pairs of ``train_wells`` (``pairs`` holds every label the
    model trained on, measured and imputed, so nothing is labelled twice). Rows: well, assay, label,
    probability, th_pos, th_neg."""
    probs = predict_all(model, store, train_wells, device)  # (wells, T)
    known = np.zeros(probs.shape, dtype=bool)
    rows, assay, _ = pairs.pairs(train_wells)
    known[rows, assay] = True
    th_pos = thresholds["th_pos"].to_numpy(float)
    th_neg = thresholds["th_neg"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        positive = ~known & (probs > th_pos[None, :])
        negative = ~known & (probs < th_neg[None, :])
    frames = []
    for flag, value in ((positive, 1.0), (negative, 0.0)):
        r, t = np.nonzero(flag)
        frames.append(
            pd.DataFrame(
                {
                    "well": train_wells[r],
                    "assay": np.array(pairs.assays, dtype=object)[t],
                    "label": np.float32(value),
                    "probability": probs[r, t],
                    "th_pos": th_pos[t],
                    "th_neg": th_neg[t],
                }
            )
        )
    return pd.concat(frames, ignore_index=True).sort_values(["well", "assay"], kind="stable").reset_index(drop=True)


def cap_imputed(new: pd.DataFrame, imputed: pd.DataFrame, measured: pd.DataFrame, ratio: float) -> pd.DataFrame:
    """``new`` (one round's imputed labels) cut so that, per assay and class, all imputed labels (``imputed``
    from earlier rounds plus the kept new ones) are at most ``ratio`` x the measured training labels
    (``measured``: assay, label); the new labels farthest beyond their threshold are kept first."""
    if ratio <= 0 or new.empty:
        return new
    allowed = (measured.groupby(["assay", "label"]).size() * ratio).astype(int)
    used = imputed.groupby(["assay", "label"]).size() if len(imputed) else pd.Series(dtype=int)
    margin = np.where(new["label"] >= 0.5, new["probability"] - new["th_pos"], new["th_neg"] - new["probability"])
    ranked = new.assign(_margin=margin).sort_values(["assay", "label", "_margin"], ascending=[True, True, False])
    keep = []
    for (assay, label), group in ranked.groupby(["assay", "label"], sort=False):
        room = int(allowed.get((assay, label), 0)) - int(used.get((assay, label), 0))
        keep.append(group.head(max(0, room)))
    kept = pd.concat(keep) if keep else ranked.head(0)
    return kept.drop(columns="_margin").sort_values(["well", "assay"], kind="stable").reset_index(drop=True)


@dataclasses.dataclass
class ImputationResult:
    fit: FitResult  # the kept round's fit
    imputed: (
        pd.DataFrame
    )  # every imputed label: round, well, plate, well name, compound, assay, label, probability, thresholds
    thresholds: pd.DataFrame  # per round and assay: thresholds and how many labels each added
    rounds: pd.DataFrame  # per round: validation AUC, labels added, total imputed, kept

    def summary(self) -> dict:
        kept = int(self.rounds.loc[self.rounds["kept"], "round"].iloc[0]) if len(self.rounds) else 0
        return {
            "rounds_run": int(self.rounds["round"].max()) if len(self.rounds) else 0,
            "kept_round": kept,
            "imputed_labels": int(len(self.imputed)),
            "imputed_labels_in_kept_model": int((self.imputed["round"] <= kept).sum()),
            "imputed_positive": int((self.imputed["label"] == 1).sum()),
            "imputed_negative": int((self.imputed["label"] == 0).sum()),
            "val_auc_before": float(self.rounds["val_auc"].iloc[0]) if len(self.rounds) else float("nan"),
            "val_auc_kept": float(self.rounds.loc[self.rounds["kept"], "val_auc"].iloc[0])
            if len(self.rounds)
            else float("nan"),
        }


def self_train(
    store: InstanceStore,
    labels: LabelMatrix,
    model_assays: list[str],
    primary: list[str],
    train_wells: np.ndarray,
    val_wells: np.ndarray,
    train: TrainSettings,
    settings: ImputeSettings,
    out,
    first: FitResult | None = None,
    show_progress: bool = True,
) -> ImputationResult:
    """Imputation rounds after a first fit (trained here when ``first`` is None); writes ``out``/.

    Each round's fit is checkpointed under ``out``/round<r>, so an interrupted run resumes with the same
    numbers. ``train_wells`` and ``val_wells`` are store rows of one rotation; only training wells get labels."""
    settings.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(train.device)
    train_wells = np.asarray(train_wells, np.int64)
    val_wells = np.asarray(val_wells, np.int64)
    if np.intersect1d(train_wells, val_wells).size:
        raise MomilError("training and validation wells overlap -- imputation needs disjoint folds")
    is_primary = np.array([a in set(primary) for a in model_assays])
    measured = WellPairs.build(store.wells, labels, model_assays)
    if first is None:
        first = fit(
            store, measured, train_wells, val_wells, is_primary, train, out / "round0", show_progress=show_progress
        )
    current, pairs = first, measured
    _, m_assay, m_label = measured.pairs(measured.labelled_wells(train_wells))
    measured_train = pd.DataFrame({"assay": np.array(model_assays, dtype=object)[m_assay], "label": m_label})
    fits = [first]  # one per row of round_rows
    imputed = pd.DataFrame(columns=["round", "well", "assay", "label", "probability", "th_pos", "th_neg"])
    threshold_frames = []
    round_rows = [
        {"round": 0, "val_auc": first.best_score, "labels_added": 0, "imputed_total": 0, "best_epoch": first.best_epoch}
    ]
    with progress(total=settings.rounds, desc="impute", unit="round", enabled=show_progress) as bar:
        for r in range(1, settings.rounds + 1):
            _, v_assay, v_label, v_prob = predict_pairs(current.model, store, val_wells, measured, device)
            thresholds = conformal_thresholds(v_assay, v_label, v_prob, model_assays, ~is_primary, settings)
            new = impute_round(current.model, store, pairs, train_wells, thresholds, device)
            new = cap_imputed(new, imputed, measured_train, settings.max_ratio)
            new.insert(0, "round", r)
            threshold_frames.append(_count_imputed(thresholds, new, r))
            bar.update(1)
            if new.empty:
                break
            outside = ~np.isin(new["well"].to_numpy(), train_wells)
            if outside.any():  # impossible by construction; a guard against leaking labels into evaluation
                raise MomilError("internal error: an imputed label fell outside the training wells")
            imputed = pd.concat([imputed, new], ignore_index=True)
            pairs = WellPairs.build(store.wells, labels, model_assays, extra_wells=imputed)
            current = fit(
                store,
                pairs,
                train_wells,
                val_wells,
                is_primary,
                train,
                out / f"round{r}",
                show_progress=show_progress,
                measured=measured,
            )
            fits.append(current)
            round_rows.append(
                {
                    "round": r,
                    "val_auc": current.best_score,
                    "labels_added": len(new),
                    "imputed_total": len(imputed),
                    "best_epoch": current.best_epoch,
                }
            )
            bar.set_postfix(added=len(new), val_auc=f"{current.best_score:.3f}")
    result = _kept_round(store, fits, round_rows, imputed, threshold_frames, settings.keep_best_round)
    _write_imputation(out, result, settings, train, store, model_assays)
    return result


def _count_imputed(thresholds: pd.DataFrame, new: pd.DataFrame, r: int) -> pd.DataFrame:
    """Round ``r``'s thresholds with the number of positives and negatives each assay got."""
    counts = new.groupby(["assay", "label"]).size().unstack(fill_value=0)
    thresholds["round"] = r
    thresholds["imputed_pos"] = thresholds["assay"].map(counts.get(1.0, pd.Series(dtype=int))).fillna(0).astype(int)
    thresholds["imputed_neg"] = thresholds["assay"].map(counts.get(0.0, pd.Series(dtype=int))).fillna(0).astype(int)
    return thresholds


def _kept_round(store, fits, round_rows, imputed, threshold_frames, keep_best_round: bool) -> ImputationResult:
    """The round kept (the last, or with ``keep_best_round`` the best on validation, ties to the later one) and
    the imputed labels with their wells' metadata."""
    rounds = pd.DataFrame(round_rows)
    final = len(rounds) - 1
    if keep_best_round:  # validation decides, as it decides every other choice; ties go to the later round
        final = int(np.flatnonzero(rounds["val_auc"].to_numpy() >= rounds["val_auc"].max() - 1e-12)[-1])
    rounds["kept"] = np.arange(len(rounds)) == final
    meta = store.wells.iloc[imputed["well"].to_numpy(np.int64)] if len(imputed) else store.wells.iloc[:0]
    imputed = imputed.assign(
        Metadata_Plate=meta["Metadata_Plate"].to_numpy(),
        Metadata_Well=meta["Metadata_Well"].to_numpy(),
        **{COMPOUND: meta[COMPOUND].to_numpy()},
    )
    imputed["label"] = imputed["label"].astype(np.int8)
    thresholds_all = pd.concat(threshold_frames, ignore_index=True) if threshold_frames else pd.DataFrame()
    return ImputationResult(fits[final], imputed, thresholds_all, rounds)


def _write_imputation(out: Path, result: ImputationResult, settings, train, store, model_assays) -> None:
    with atomic_path(out / "imputed_labels.parquet") as tmp:
        result.imputed.to_parquet(tmp, index=False)
    with atomic_path(out / "thresholds.csv") as tmp:
        result.thresholds.to_csv(tmp, index=False)
    with atomic_path(out / "rounds.csv") as tmp:
        result.rounds.to_csv(tmp, index=False)
    write_json_atomic(
        provenance(
            "impute",
            {"impute": dataclasses.asdict(settings), "train": dataclasses.asdict(train)},
            inputs={"store": store.path},
            summary=_jsonable(result.summary()),
            assays=model_assays,
        ),
        out / "imputation.json",
    )


def _jsonable(summary: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}


def imputed_counts(imputed: pd.DataFrame) -> pd.DataFrame:
    """Imputed labels per assay and round (positive, negative)."""
    if imputed.empty:
        return pd.DataFrame(columns=["round", "assay", "positive", "negative"])
    table = imputed.groupby(["round", "assay", "label"]).size().unstack(fill_value=0)
    table = table.rename(columns={1: "positive", 0: "negative"}).reset_index()
    for col in ("positive", "negative"):
        if col not in table:
            table[col] = 0
    return table[["round", "assay", "positive", "negative"]]


def save_imputed_model(path, result: ImputationResult, extra: dict) -> None:
    save_model(path, result.fit.model, {**extra, "imputation": json.loads(json.dumps(_jsonable(result.summary())))})
