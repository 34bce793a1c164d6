"""`momil select`: which secondary assays help the primary ones (paper section 2.2).

Three stages, applied in order, each to the survivors of the one before (a stage left out keeps every candidate):

1. **Biology** (T^S1). The association of a primary assay t^p and a secondary assay t^s is the best association
   among pairs of their target genes (STRING score, or a gene table, 0-1; a gene both assays target counts 1).
   A secondary assay whose association with any primary reaches ``th_bio`` is kept. Assays without target genes
   are reported and kept or dropped as ``keep_without_genes`` says.
2. **Performance** (T^S2). A single-assay MIL model per candidate (the head's own F_gamma reads the instance
   features, no shared F_phi) is trained on the rotation's training wells; it is kept when its well-level
   validation ROC-AUC reaches ``th_perf``.
3. **Influence** (T^S*). For each primary t^p and each candidate t associated with it: t's trained head embeds
   t^p's labelled training and validation wells (its attention-pooled well representation); a logistic
   regression fitted on t^p's training labels is scored (ROC-AUC) on validation. t is kept for t^p when the
   score reaches ``th_inf`` x t^p's self-influence (the same with t^p's own head). T^S* is the union over
   primaries.

Selection sees only the training and validation wells it is given (one fold rotation); `momil cv --select`
runs it inside every rotation, so no test compound ever reaches it. The result is one table of every candidate
with each stage's score and the reason it was kept or dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.data.pairs import labelled_wells_of
from momil.device import resolve_device
from momil.errors import MomilError
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.contract import LabelMatrix, assay_genes
from momil.io.provenance import provenance
from momil.io.readers import read_json
from momil.io.store import InstanceStore
from momil.progress import progress
from momil.protocol.executor import ExecutorSettings, SingleAssayTask
from momil.protocol.single_assay import (  # noqa: F401 (moved there; re-exported)
    single_task_potentials,
    stl_settings,
    train_single_assay,
)
from momil.training.inference import embed_all
from momil.training.settings import TrainSettings

STAGES = ("biology", "performance", "influence")


@dataclasses.dataclass
class SelectSettings(Settings):
    stages: str = setting(
        "biology,performance,influence", "stages to run, comma-separated, in this order; one left out keeps all"
    )
    th_bio: float = setting(
        0.4,
        "association (0-1) a secondary's targets need with a primary's (STRING: 0.4 medium, 0.7 high)",
        low=0,
        high=1,
    )
    th_perf: float = setting(0.7, "single-assay well-level validation ROC-AUC needed (the paper's 70 %)", low=0, high=1)
    th_inf: float = setting(
        0.9, "influence needed, as a fraction of the primary's self-influence (the paper's 0.9)", low=0
    )
    keep_without_genes: bool = setting(False, "secondary assays without target genes pass the biology stage")
    stl_head_dim: int = setting(32, "head size of the single-assay models (paper's: 64)", low=1)
    stl_lr: float = setting(
        3e-3, "learning rate of the single-assay models (paper's: 1e-4)", low=0, high=1, low_open=True
    )
    influence_c: float = setting(1.0, "inverse L2 strength of the influence logistic regression", low=0, low_open=True)

    def stage_list(self) -> list[str]:
        chosen = [s.strip() for s in str(self.stages).split(",") if s.strip()]
        unknown = [s for s in chosen if s not in STAGES]
        if unknown or not chosen:
            raise MomilError(f"stages must be a comma-separated subset of {','.join(STAGES)}, not {self.stages!r}")
        return [s for s in STAGES if s in chosen]

    def require_associations(self, associations) -> None:
        """Refuse, before anything runs, a biology stage without the protein associations it reads."""
        if "biology" in self.stage_list() and associations is None:
            raise MomilError(
                "assay selection's biology stage needs protein associations (--associations: STRING links + "
                "--string-info, a gene_a, gene_b, score table, or a from, to, cost network) -- pass them, or "
                "leave biology out of --stages"
            )


@dataclasses.dataclass
class SelectionResult:
    table: pd.DataFrame  # one row per secondary assay: scores, kept flags, reason
    influence: pd.DataFrame  # one row per (primary, candidate): score, self-influence, ratio, kept
    biology: pd.DataFrame  # one row per (primary, secondary): association and the gene pair behind it
    selected: list[str]  # T^S*, in label order

    def summary(self) -> dict:
        t = self.table
        return {
            "candidates": int(len(t)),
            "after_biology": int(t["bio_kept"].sum()) if "bio_kept" in t else None,
            "after_performance": int(t["perf_kept"].sum()) if "perf_kept" in t else None,
            "selected": len(self.selected),
        }


# --------------------------------------------------------------------------------------------------- biology
def biological_similarity(
    genes: dict[str, list[str]], associations: pd.DataFrame | None, primary: list[str], secondary: list[str]
) -> pd.DataFrame:
    """Best association among the gene pairs of each (primary, secondary) assay pair.

    ``genes`` maps an assay to its target gene symbols; ``associations`` has gene_a, gene_b, score (0-1). A gene
    both assays target counts 1; a pair absent from the table counts 0. Rows: primary, secondary, score,
    gene_primary, gene_secondary (the pair behind the score; empty when no gene pair is associated)."""
    upper = {a: sorted({g.upper() for g in genes.get(a, [])}) for a in set(primary) | set(secondary)}
    wanted = set().union(*upper.values()) if upper else set()
    lookup: dict[tuple[str, str], float] = {}
    if associations is not None and len(associations) and wanted:
        mine = associations[associations["gene_a"].isin(wanted) & associations["gene_b"].isin(wanted)]
        for a, b, s in zip(mine["gene_a"], mine["gene_b"], mine["score"]):
            key = (a, b) if a <= b else (b, a)
            lookup[key] = max(float(s), lookup.get(key, 0.0))
    rows = []
    for p in primary:
        for s in secondary:
            best, pair = 0.0, ("", "")
            for gp in upper[p]:
                for gs in upper[s]:
                    score = 1.0 if gp == gs else lookup.get((gp, gs) if gp <= gs else (gs, gp), 0.0)
                    if score > best:
                        best, pair = score, (gp, gs)
            rows.append(
                {"primary": p, "secondary": s, "score": best, "gene_primary": pair[0], "gene_secondary": pair[1]}
            )
    return pd.DataFrame(rows, columns=["primary", "secondary", "score", "gene_primary", "gene_secondary"])


# ---------------------------------------------------------------------------------------------- influence
def influence_score(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, c: float = 1.0, seed: int = 0
) -> float:
    """Validation ROC-AUC of a logistic regression on standardised embeddings (NaN where undefined)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2 or len(np.unique(val_y)) < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    model.fit(train_x, train_y)
    return float(roc_auc_score(val_y, model.predict_proba(val_x)[:, 1]))


# -------------------------------------------------------------------------------------------------- driver
def select_assays(
    store: InstanceStore,
    labels: LabelMatrix,
    assays: pd.DataFrame,
    associations: pd.DataFrame | None,
    train_wells: np.ndarray,
    val_wells: np.ndarray,
    out,
    settings: SelectSettings | None = None,
    train: TrainSettings | None = None,
    show_progress: bool = True,
    executor: ExecutorSettings | None = None,
) -> SelectionResult:
    """Run the chosen stages on one rotation's training and validation wells; writes ``out``/.

    ``out`` gets ``selection.csv`` (every candidate: scores, kept flags, reason), ``influence.csv``,
    ``biology.csv``, ``selection.json`` (selected assays, settings, provenance) and ``stl/`` (the single-assay
    models, reused when the command is run again with the same settings and wells). With a fanning-out
    ``executor`` (processes, Ray) the single-assay models are trained by its workers, one task each."""
    settings = settings or SelectSettings()
    train = train or TrainSettings()
    stages = settings.stage_list()
    out = Path(out)
    settings.require_associations(associations)
    device = resolve_device(train.device)
    train_wells = np.asarray(train_wells, np.int64)
    val_wells = np.asarray(val_wells, np.int64)
    labelled = set(labels.labelled_assays())
    role = dict(zip(assays["assay"], assays["role"]))
    primary = [a for a in labels.assays if a in labelled and role.get(a, "primary") == "primary"]
    secondary = [a for a in labels.assays if a in labelled and role.get(a, "primary") == "secondary"]
    if not primary:
        raise MomilError("assay selection needs primary assays with labels -- mark them in assays.parquet (role)")
    out.mkdir(parents=True, exist_ok=True)
    genes = assay_genes(assays)

    table = pd.DataFrame({"assay": secondary, "target_genes": ["|".join(genes.get(a, [])) for a in secondary]})
    table["reason"] = ""
    alive = pd.Series(True, index=table.index)

    bio, associated, alive = _biology_stage(table, alive, genes, associations, primary, secondary, settings, stages)
    run = _Rotation(store, labels, primary, train_wells, val_wells, settings, stages, device, show_progress)
    models, alive = _performance_stage(run, table, alive, train, out, executor)
    influence, alive = _influence_stage(run, table, alive, associated, models)
    table["selected"] = alive.to_numpy()
    table.loc[table["selected"], "reason"] = "kept by " + ", ".join(stages)
    selected = list(table.loc[table["selected"], "assay"])
    result = SelectionResult(table, influence, bio, selected)
    _write(out, result, settings, train, stages, primary, store, train_wells, val_wells)
    return result


@dataclasses.dataclass
class _Rotation:
    """What every selection stage reads: the store and labels, the primary assays, one rotation's training and
    validation wells, the settings and stages, the device and whether to show progress."""

    store: InstanceStore
    labels: LabelMatrix
    primary: list[str]
    train_wells: np.ndarray
    val_wells: np.ndarray
    settings: SelectSettings
    stages: list[str]
    device: object
    show_progress: bool


def _biology_stage(table, alive, genes, associations, primary, secondary, settings, stages):
    """Stage 1: each secondary's strongest protein association with a primary's targets; (associations table,
    the secondaries associated with each primary, the candidates still alive)."""
    bio = biological_similarity(genes, associations, primary, secondary)
    associated: dict[str, set[str]] = {p: set(secondary) for p in primary}
    if "biology" in stages:
        no_genes = table["target_genes"] == ""
        best = (
            bio.sort_values(["secondary", "score", "primary"], ascending=[True, False, True])
            .drop_duplicates("secondary")
            .set_index("secondary")
        )
        table["bio_score"] = table["assay"].map(best["score"]).fillna(0.0).to_numpy()
        table["bio_primary"] = table["assay"].map(best["primary"]).astype(object).where(table["bio_score"] > 0, "")
        table["bio_kept"] = (table["bio_score"] >= settings.th_bio) | (no_genes & settings.keep_without_genes)
        table.loc[no_genes & ~table["bio_kept"], "reason"] = "no target genes"
        table.loc[no_genes & table["bio_kept"], "reason"] = ""
        low = ~no_genes & ~table["bio_kept"]
        table.loc[low, "reason"] = [
            f"association {s:.2f} < th_bio {settings.th_bio:g}" for s in table.loc[low, "bio_score"]
        ]
        alive &= table["bio_kept"]
        strong = bio[bio["score"] >= settings.th_bio]
        associated = {p: set(strong.loc[strong["primary"] == p, "secondary"]) for p in primary}
        if settings.keep_without_genes:
            free = set(table.loc[no_genes, "assay"])
            associated = {p: s | free for p, s in associated.items()}
        unmapped = [p for p in primary if not genes.get(p)]
        if unmapped:
            import warnings

            warnings.warn(
                f"{len(unmapped)} primary assay(s) have no target genes (e.g. {unmapped[0]}); no "
                "secondary assay can be associated with them",
                stacklevel=2,
            )
    return bio, associated, alive


def _performance_stage(run: _Rotation, table, alive, train: TrainSettings, out: Path, executor=None):
    """Stage 2: the single-assay models (also the influence stage's heads) and their validation AUCs; (models,
    the candidates still alive)."""
    store, labels, primary, settings, stages = run.store, run.labels, run.primary, run.settings, run.stages
    train_wells, val_wells, device, show_progress = run.train_wells, run.val_wells, run.device, run.show_progress
    stl = stl_settings(train, settings)
    need_models = "performance" in stages or "influence" in stages
    models: dict[str, object] = {}
    if need_models:
        wanted = list(table.loc[alive, "assay"]) + (primary if "influence" in stages else [])
        if executor is not None and executor.fans_out:  # the workers train them; the loop below reuses them
            where = str(store.path)
            executor.run(
                [SingleAssayTask(where, labels, a, train_wells, val_wells, stl, str(out / "stl")) for a in wanted]
            )
        perf, n_train = {}, {}
        with progress(
            total=len(wanted), desc="select: single-assay models", unit="model", enabled=show_progress
        ) as bar:
            for assay in wanted:
                model, auc, n = train_single_assay(store, labels, assay, train_wells, val_wells, stl, out / "stl")
                perf[assay], n_train[assay] = auc, n
                if model is not None:
                    models[assay] = model.to(device)
                bar.update(1)
                bar.set_postfix(assay=str(assay)[:16], val_auc=f"{auc:.3f}")
        table["perf_auc"] = table["assay"].map(perf).astype(float)
        table["train_wells"] = table["assay"].map(n_train).fillna(0).astype(int)
    if "performance" in stages:
        table["perf_kept"] = alive & (table["perf_auc"] >= settings.th_perf)
        dropped = alive & ~table["perf_kept"]
        table.loc[dropped, "reason"] = [
            "no labelled training wells"
            if n == 0
            else "validation labels of one class (AUC undefined)"
            if math.isnan(a)
            else f"validation AUC {a:.3f} < th_perf {settings.th_perf:g}"
            for a, n in zip(table.loc[dropped, "perf_auc"], table.loc[dropped, "train_wells"])
        ]
        alive &= table["perf_kept"]
    return models, alive


def _influence_stage(run: _Rotation, table, alive, associated: dict, models: dict):
    """Stage 3: how well a secondary's head embeds each associated primary's wells, as a share of the primary's
    own head; (influence table, the candidates still alive)."""
    store, labels, primary, settings, stages = run.store, run.labels, run.primary, run.settings, run.stages
    train_wells, val_wells, device, show_progress = run.train_wells, run.val_wells, run.device, run.show_progress
    influence_rows = []
    if "influence" in stages:
        candidates = set(table.loc[alive, "assay"])
        with progress(total=len(primary), desc="select: influence", unit="primary", enabled=show_progress) as bar:
            for p in primary:
                mine = sorted((candidates & associated[p]) & set(models), key=list(labels.assays).index)
                tr, y_tr = labelled_wells_of(store.wells, labels, p, train_wells)
                va, y_va = labelled_wells_of(store.wells, labels, p, val_wells)
                heads = {t: models[t] for t in [p] + mine if t in models}
                emb_tr = embed_all(heads, store, tr, device)
                emb_va = embed_all(heads, store, va, device)
                own = (
                    influence_score(emb_tr[p], y_tr, emb_va[p], y_va, settings.influence_c)
                    if p in heads
                    else float("nan")
                )
                for t in mine:
                    score = influence_score(emb_tr[t], y_tr, emb_va[t], y_va, settings.influence_c)
                    ratio = score / own if own > 0 and not math.isnan(score) else float("nan")
                    influence_rows.append(
                        {
                            "primary": p,
                            "assay": t,
                            "influence": score,
                            "self_influence": own,
                            "ratio": ratio,
                            "kept": bool(ratio >= settings.th_inf),
                        }
                    )
                bar.update(1)
        influence = pd.DataFrame(
            influence_rows, columns=["primary", "assay", "influence", "self_influence", "ratio", "kept"]
        )
        best = (
            influence.sort_values(["assay", "ratio", "primary"], ascending=[True, False, True], na_position="last")
            .drop_duplicates("assay")
            .set_index("assay")
        )
        table["influence_ratio"] = table["assay"].map(best["ratio"]).astype(float)
        table["influence_primary"] = table["assay"].map(best["primary"]).astype(object).fillna("")
        kept_rows = influence.loc[influence["kept"].astype(bool)]
        kept_any = (
            kept_rows.groupby("assay")["primary"].agg(lambda s: "|".join(s))
            if len(kept_rows)
            else pd.Series(dtype=object)
        )
        table["influence_kept"] = alive & table["assay"].isin(kept_any.index)
        table["influential_for"] = table["assay"].map(kept_any).astype(object).fillna("")
        dropped = alive & ~table["influence_kept"]
        reasons = []
        for a, r in zip(table.loc[dropped, "assay"], table.loc[dropped, "influence_ratio"]):
            if not any(a in associated[p] for p in primary):
                reasons.append("associated with no primary assay")
            elif math.isnan(r):
                reasons.append("influence undefined (one class in the primary's training or validation labels)")
            else:
                reasons.append(f"influence {r:.3f} x self < th_inf {settings.th_inf:g}")
        table.loc[dropped, "reason"] = reasons
        alive &= table["influence_kept"]
    else:
        influence = pd.DataFrame(columns=["primary", "assay", "influence", "self_influence", "ratio", "kept"])
    return influence, alive


def _write(
    out: Path,
    result: SelectionResult,
    settings: SelectSettings,
    train: TrainSettings,
    stages,
    primary,
    store: InstanceStore,
    train_wells,
    val_wells,
) -> None:
    with atomic_path(out / "selection.csv") as tmp:
        result.table.to_csv(tmp, index=False)
    with atomic_path(out / "influence.csv") as tmp:
        result.influence.to_csv(tmp, index=False)
    with atomic_path(out / "biology.csv") as tmp:
        result.biology.to_csv(tmp, index=False)
    record = provenance(
        "select",
        {"select": dataclasses.asdict(settings), "train": dataclasses.asdict(train)},
        inputs={"store": store.path},
        summary=result.summary(),
        stages=stages,
        primary=primary,
        selected=result.selected,
        wells_digest=wells_digest(train_wells, val_wells),
    )
    write_json_atomic(record, out / "selection.json")


def wells_digest(train_wells, val_wells) -> str:
    """Identifies the training/validation wells a selection or imputation saw (checked before reuse)."""
    h = hashlib.sha1(np.asarray(train_wells, np.int64).tobytes())
    h.update(b"|")
    h.update(np.asarray(val_wells, np.int64).tobytes())
    return h.hexdigest()[:16]


def load_selection(folder, train_wells=None, val_wells=None) -> list[str]:
    """The selected assays of a finished selection folder; checks it saw the same wells when given."""
    path = Path(folder) / "selection.json"
    if not path.exists():
        raise MomilError(f"{path}: no finished selection here -- run `momil select` first")
    record = read_json(path, "selection record")
    if train_wells is not None and record.get("wells_digest") != wells_digest(train_wells, val_wells):
        raise MomilError(
            f"{path}: was made on other training/validation wells than this rotation's -- run "
            "`momil select` with the same store and folds (or let `momil cv --select` run it)"
        )
    return list(record["selected"])


def selection_table_text(table: pd.DataFrame, limit: int = 40) -> str:
    """A readable summary of the selection table (kept first)."""
    shown = table.sort_values(["selected", "assay"], ascending=[False, True]).head(limit)
    cols = [c for c in ("assay", "bio_score", "perf_auc", "influence_ratio", "selected", "reason") if c in shown]
    return shown[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}")
