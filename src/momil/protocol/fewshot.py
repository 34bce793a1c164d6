"""Generalisation to unseen assays (the paper's Table 3): few-shot probes on a primary head's well embeddings.

For an assay the models never trained on (an *unseen* assay) that is related to a primary assay, each rotation's
trained model embeds wells with that primary's head (its attention-pooled representation). A logistic regression
is fitted on the embeddings of n active and n inactive training-fold compounds' wells (n = 5, 10 or all; repeated
draws), and scores the test fold's wells; probabilities are averaged per compound and pooled over rotations, and
the compound-level ROC-AUC is reported as mean +- sd over the draws. The comparison is a single-task model trained
on the unseen assay itself through the same rotations (train folds, early stopping on the validation fold).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.data.pairs import WellPairs, labelled_wells_of, rotation_wells
from momil.device import resolve_device
from momil.errors import MomilError
from momil.io.atomic import safe_name
from momil.io.contract import COMPOUND, LabelMatrix
from momil.io.store import InstanceStore
from momil.progress import progress
from momil.training.checkpoints import load_model
from momil.training.fit import fit
from momil.training.inference import embed_all, predict_all
from momil.training.settings import TrainSettings


@dataclasses.dataclass
class ProbeSettings(Settings):
    shots: str = setting("5,10,all", 'actives and inactives per fold the logistic regression sees ("all": every one)')
    repeats: int = setting(10, "random draws per shot count", low=1)
    seed: int = setting(0)


def shot_counts(text: str) -> list[int]:
    """'5,10,all' -> [5, 10, 0] (0 = all)."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if part == "all":
            out.append(0)
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise MomilError(f"shots must be positive numbers or 'all', comma-separated, not {text!r}")
    return out


def _draw(wells: np.ndarray, y: np.ndarray, compounds: np.ndarray, n: int, rng) -> np.ndarray:
    """Wells of n active and n inactive compounds (all when n = 0 or fewer exist)."""
    if n == 0:
        return np.ones(len(wells), bool)
    keep = np.zeros(len(wells), bool)
    for cls in (0, 1):
        pool = np.unique(compounds[y == cls])
        chosen = rng.choice(pool, size=min(n, len(pool)), replace=False) if len(pool) else pool
        keep |= np.isin(compounds, chosen) & (y == cls)
    return keep


def probe_unseen(
    store: InstanceStore,
    labels: LabelMatrix,
    folds: pd.DataFrame,
    model_paths: dict[int, Path],
    unseen: dict[str, str],
    settings: ProbeSettings | None = None,
    stl: TrainSettings | None = None,
    work=None,
    rotations: list[int] | None = None,
    label: str = "probe",
    show_progress: bool = False,
) -> pd.DataFrame:
    """Few-shot probes of ``unseen`` assays (assay -> related primary) on the heads of ``model_paths`` (test
    fold -> model file whose assays include the primary and exclude the unseen assay), and a single-task model on
    each unseen assay when ``stl`` is given. Rows: assay, primary, source, shots, auc_mean, auc_sd, draws,
    n_compounds."""
    settings = settings or ProbeSettings()
    shots = shot_counts(settings.shots)
    rotations = sorted(model_paths) if rotations is None else rotations
    device = resolve_device("cpu")
    rows = []
    bar = progress(total=len(unseen), desc=f"probes ({label})", unit="assay", enabled=show_progress)
    for assay, primary in unseen.items():
        bar.update(1)
        pooled: dict[tuple[int, int], list[pd.DataFrame]] = {}  # per (shots, draw): compound-level test predictions
        stl_frames: list[pd.DataFrame] = []
        for k in rotations:
            model, _ = load_model(model_paths[k], device)
            if assay in model.assays:
                raise MomilError(f"{model_paths[k]}: was trained on {assay!r}, which is then not unseen")
            if primary not in model.assays:
                raise MomilError(f"{model_paths[k]}: has no head for the primary assay {primary!r}")
            _, parts = rotation_wells(store.wells, folds, k)
            tr_wells, tr_y = labelled_wells_of(store.wells, labels, assay, parts["train"])
            te_wells, te_y = labelled_wells_of(store.wells, labels, assay, parts["test"])
            if len(te_wells) == 0 or len(np.unique(tr_y)) < 2:
                continue
            head = model.assays.index(primary)
            probe = _Probe(store, tr_wells, tr_y, te_wells, te_y, k)
            probe.shots(model, head, shots, settings, pooled, device)
            if stl is not None:
                folder = Path(work) / f"stl-{safe_name(assay, 30)}-rot{k}" if work else None
                stl_frames.append(probe.single_task(labels, assay, parts, stl, folder, device))
        rows += _rows(assay, primary, label, shots, pooled, stl_frames)
    bar.close()
    return pd.DataFrame(
        rows, columns=["assay", "primary", "source", "shots", "auc_mean", "auc_sd", "draws", "n_compounds"]
    )


@dataclasses.dataclass
class _Probe:
    """One rotation's wells of an unseen assay: its labelled training and test wells and their labels."""

    store: InstanceStore
    tr_wells: np.ndarray
    tr_y: np.ndarray
    te_wells: np.ndarray
    te_y: np.ndarray
    rotation: int

    def frame(self, probability: np.ndarray) -> pd.DataFrame:
        te_c = self.store.wells[COMPOUND].to_numpy()[self.te_wells]
        return pd.DataFrame({COMPOUND: te_c, "label": self.te_y, "probability": probability})

    def shots(self, model, head: int, shots: list[int], settings: ProbeSettings, pooled: dict, device) -> None:
        """A logistic regression on the head's embeddings for each shot count and draw, added to ``pooled``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        tr_x = embed_all({"m": model}, self.store, self.tr_wells, device, head=head)["m"]
        te_x = embed_all({"m": model}, self.store, self.te_wells, device, head=head)["m"]
        tr_c = self.store.wells[COMPOUND].to_numpy()[self.tr_wells]
        for n in shots:
            for r in range(1 if n == 0 else settings.repeats):
                rng = np.random.default_rng([settings.seed, self.rotation, n, r])
                keep = _draw(self.tr_wells, self.tr_y, tr_c, n, rng)
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
                clf.fit(tr_x[keep], self.tr_y[keep])
                pooled.setdefault((n, r), []).append(self.frame(clf.predict_proba(te_x)[:, 1]))

    def single_task(self, labels, assay: str, parts: dict, stl: TrainSettings, folder, device) -> pd.DataFrame:
        """A single-task model trained on the assay itself (the reference the probes are read against)."""
        pairs = WellPairs.build(self.store.wells, labels, [assay])
        result = fit(
            self.store, pairs, parts["train"], parts["val"], np.ones(1, bool), stl, folder, show_progress=False
        )
        return self.frame(predict_all(result.model, self.store, self.te_wells, device)[:, 0])


def _compound_auc(frames: list[pd.DataFrame]) -> tuple[float, int]:
    """Compound-level ROC-AUC of pooled well predictions (mean per compound) and the number of compounds."""
    from sklearn.metrics import roc_auc_score

    both = pd.concat(frames).groupby(COMPOUND).agg(label=("label", "first"), probability=("probability", "mean"))
    if both["label"].nunique() < 2:
        return float("nan"), len(both)
    return float(roc_auc_score(both["label"], both["probability"])), len(both)


def _rows(assay: str, primary: str, label: str, shots: list[int], pooled: dict, stl_frames: list) -> list[dict]:
    rows = []
    for n in shots:
        aucs = [_compound_auc(frames) for (m, _), frames in pooled.items() if m == n]
        values = [a for a, _ in aucs if not np.isnan(a)]
        rows.append(
            {
                "assay": assay,
                "primary": primary,
                "source": label,
                "shots": "all" if n == 0 else n,
                "auc_mean": float(np.mean(values)) if values else float("nan"),
                "auc_sd": float(np.std(values)) if values else float("nan"),
                "draws": len(values),
                "n_compounds": aucs[0][1] if aucs else 0,
            }
        )
    if stl_frames:
        auc, count = _compound_auc(stl_frames)
        rows.append(
            {
                "assay": assay,
                "primary": primary,
                "source": "single-task model on the assay",
                "shots": "all",
                "auc_mean": auc,
                "auc_sd": 0.0,
                "draws": 1,
                "n_compounds": count,
            }
        )
    return rows


def choose_unseen(selection_tables: list[pd.DataFrame], labels: LabelMatrix, limit: int = 12) -> dict[str, str]:
    """Secondary assays selected in no rotation but associated with a primary (biology stage), most labelled
    first, with both classes among their labels: assay -> its most associated primary."""
    table = pd.concat(selection_tables, ignore_index=True)
    if "bio_primary" not in table:
        raise MomilError("probes need a selection made with the biology stage (to know each assay's primary)")
    ever = set(table.loc[table["selected"].astype(bool), "assay"].astype(str))
    candidates = table[table["bio_kept"].astype(bool) & ~table["assay"].astype(str).isin(ever)]
    candidates = candidates.drop_duplicates("assay")
    counts = labels.counts().set_index("assay")
    chosen = []
    for assay, primary in zip(candidates["assay"].astype(str), candidates["bio_primary"].astype(str)):
        if assay in counts.index and 0 < counts.loc[assay, "n_pos"] < counts.loc[assay, "n_labelled"] and primary:
            chosen.append((int(counts.loc[assay, "n_labelled"]), assay, primary))
    chosen.sort(key=lambda t: (-t[0], t[1]))
    return {assay: primary for _, assay, primary in chosen[:limit]}
