"""The paper's protocol: 3-1-1 fold rotation, grid search on validation, compound-level test metrics."""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.data.pairs import WellPairs, rotation_wells
from momil.device import resolve_device
from momil.errors import MomilError
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.contract import COMPOUND, LabelMatrix
from momil.io.provenance import provenance
from momil.io.store import InstanceStore
from momil.prep.splits import n_folds
from momil.prep.splits import test_folds as parse_test_folds
from momil.progress import progress
from momil.training.checkpoints import save_model
from momil.training.fit import fit
from momil.training.settings import TrainSettings

if TYPE_CHECKING:  # pragma: no cover
    from momil.protocol.imputation import ImputeSettings
    from momil.protocol.selection import SelectSettings
from momil.model.linear import mean_lr_predictions
from momil.model.registry import LINEAR_MODELS
from momil.protocol.conformal import save_validation_predictions
from momil.protocol.executor import FitTask, check_executor, run_tasks
from momil.protocol.scoring import assay_metrics, attach_labels, compound_predictions, predict_wells, summarise

CONFIGURATIONS = ("mtl-all", "mtl-primary", "stl")


@dataclasses.dataclass
class CVSettings(Settings):
    configuration: str = setting(
        "mtl-all", '"mtl-all", "mtl-primary" or "stl"', choices=["mtl-all", "mtl-primary", "stl"]
    )
    projector_dims: str = setting("64", "grid for F_phi's size d (paper: 64,128)")
    head_dims: str = setting("32", "grid for the heads' size (paper: 32,64,128)")
    lrs: str = setting("3e-3,1e-3", "grid for the learning rate (paper: 1e-4,5e-5,1e-5)")
    rotations: str = setting("all", '"all" or comma-separated test folds, e.g. "0,1"')
    select: bool = setting(False, "assay selection inside each rotation (MoMIL + AS; mtl-all only)")
    selection: str = setting("", "reuse a `momil select --rotations all` folder instead of selecting here")
    impute: bool = setting(False, "conformal label imputation and self-training after the grid's best fit (+ LI)")
    executor: str = setting(
        "local",
        '"local" (one fit after another), "processes" (a pool of --workers processes) or "ray" (a Ray cluster, '
        "the optional extra momil[ray]): who runs the (rotation, grid point) fits",
        choices=["local", "processes", "ray"],
    )
    workers: int = setting(2, "worker processes of --executor processes", low=1)
    threads: int = setting(0, "torch threads per worker (0: the cores divided among the workers)", low=0)
    ray_address: str = setting("", "--executor ray: the cluster's address (empty: start or join a local one)")
    overwrite: bool = setting(False)

    def check(self) -> None:
        grid(self)
        check_executor(self.executor, self.workers)


def _parse_grid(text: str, kind, flag: str) -> list:
    """A comma-separated grid: positive whole numbers (dims) or numbers in (0, 1] (learning rates)."""
    what = "positive whole numbers" if kind is int else "numbers in (0, 1]"
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise MomilError(f"{flag} must be comma-separated {what}, not {text!r}") from err
    bad = [v for v in values if not math.isfinite(v) or v <= 0 or (kind is float and v > 1)]
    if not values or bad:
        raise MomilError(f"{flag} must be comma-separated {what}, not {text!r}")
    return values


def grid(settings: CVSettings) -> list[dict]:
    """The grid points: every (projector_dim, head_dim, lr) of the three comma-separated lists."""
    return [
        {"projector_dim": p, "head_dim": h, "lr": lr}
        for p, h, lr in itertools.product(
            _parse_grid(settings.projector_dims, int, "--projector-dims"),
            _parse_grid(settings.head_dims, int, "--head-dims"),
            _parse_grid(settings.lrs, float, "--lrs"),
        )
    ]


def instance_count_predictions(
    store: InstanceStore, labels: LabelMatrix, assays: list[str], train_wells: np.ndarray, test_wells: np.ndarray
) -> pd.DataFrame:
    """The sanity baseline: a logistic regression per assay on log(1 + instances per well), nothing else.

    Fitted on the training wells with a label; an assay whose training labels hold one class predicts its
    training active rate. Rows as :func:`predict_wells`."""
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


def single_task_potentials(
    store: InstanceStore,
    labels: LabelMatrix,
    assays: list[str],
    train_wells,
    val_wells,
    train: TrainSettings,
    select,
    folder,
) -> np.ndarray:
    """Each assay's single-task validation AUC (the selection's single-assay models, reused from ``folder``)."""
    from momil.protocol.selection import stl_settings, train_single_assay

    settings = stl_settings(dataclasses.replace(train, balancing="none"), select)
    return np.array(
        [train_single_assay(store, labels, a, train_wells, val_wells, settings, Path(folder))[1] for a in assays],
        dtype=np.float64,
    )


# --------------------------------------------------------------------------------------------------------- cv
@dataclasses.dataclass
class CVResult:
    metrics: pd.DataFrame
    summary: dict
    compound_predictions: pd.DataFrame
    selections: pd.DataFrame
    assay_selection: pd.DataFrame | None = None
    imputed: pd.DataFrame | None = None


def _rotation_inputs(store: InstanceStore, folds: pd.DataFrame, k: int, extra_labels: pd.DataFrame | None):
    """(rotation, its train/val/test wells, the extra labels of its training compounds or None)."""
    rot, wells = rotation_wells(store.wells, folds, k)
    extra = None  # extra (imputed) labels may only ever touch training compounds
    if extra_labels is not None and len(extra_labels):
        train_compounds = set(store.wells[COMPOUND].to_numpy()[wells["train"]])
        extra = extra_labels[extra_labels[COMPOUND].isin(train_compounds)]
    return rot, wells, extra


def _fan_out(store, labels, folds, test_folds, model_sets, points, primary, train, cv, out, extra_labels) -> int:
    """Run every (rotation, model set, grid point) fit on ``cv.executor`` ahead of the protocol's walk, which
    then finds them finished; returns how many were handed out."""
    tasks = []
    for k in test_folds:
        _, wells, extra = _rotation_inputs(store, folds, k, extra_labels)
        for m, model_assays in enumerate(model_sets):
            pairs = WellPairs.build(store.wells, labels, model_assays, extra)
            is_primary = np.array([a in set(primary) for a in model_assays])
            for g, point in enumerate(points):
                tasks.append(
                    FitTask(
                        str(store.path),
                        pairs,
                        wells["train"],
                        wells["val"],
                        is_primary,
                        dataclasses.replace(train, **point),
                        str(out / "runs" / f"rot{k}" / f"model{m}" / f"grid{g}"),
                    )
                )
    run_tasks(tasks, cv.executor, cv.workers, cv.threads, cv.ray_address)
    return len(tasks)


def _model_assay_sets(configuration: str, assays: list[str], primary: list[str]) -> list[list[str]]:
    if configuration == "mtl-all":
        return [assays]
    if configuration == "mtl-primary":
        return [primary]
    if configuration == "stl":
        return [[a] for a in primary]
    raise MomilError(f"configuration must be one of {CONFIGURATIONS}, not {configuration!r}")


def cross_validate(
    store: InstanceStore,
    labels: LabelMatrix,
    folds: pd.DataFrame,
    primary: list[str],
    out,
    cv: CVSettings | None = None,
    train: TrainSettings | None = None,
    show_progress: bool = True,
    extra_labels: pd.DataFrame | None = None,
    assays_frame: pd.DataFrame | None = None,
    associations: pd.DataFrame | None = None,
    select: SelectSettings | None = None,
    impute: ImputeSettings | None = None,
) -> CVResult:
    """Run the protocol; writes ``out``/ (metrics.csv, predictions, selections, summary.json, models; with
    ``cv.select`` assay_selection.csv, with ``cv.impute`` imputed_labels.parquet, imputation_thresholds.csv and
    imputation_rounds.csv).

    Finished (rotation, model, grid point) runs, selections and imputation rounds are kept in ``out``/runs and
    reused when the command is run again, so an interrupted cross-validation resumes where it stopped.
    """
    from momil.io.contract import default_assays
    from momil.protocol.imputation import ImputeSettings, self_train
    from momil.protocol.selection import SelectSettings, load_selection, select_assays

    cv = cv or CVSettings()
    train = train or TrainSettings()
    select = select or SelectSettings()
    impute = impute or ImputeSettings()
    selecting = cv.select or bool(cv.selection)
    if selecting and cv.configuration != "mtl-all":
        raise MomilError(
            "assay selection chooses secondary assays for the mtl-all model -- use --configuration "
            "mtl-all with --select"
        )
    if train.model in LINEAR_MODELS and (selecting or cv.impute):
        raise MomilError(f"the {train.model} baseline takes neither --select nor --impute")
    if cv.impute:
        impute.check()
    if cv.select and "biology" in select.stage_list() and associations is None:
        raise MomilError(
            "assay selection's biology stage needs protein associations (--associations) -- pass "
            "them, or leave biology out of --stages"
        )
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and (out / "summary.json").exists():
        if not cv.overwrite:
            raise MomilError(f"{out}: holds a finished cross-validation -- choose another --out or pass --overwrite")
        shutil.rmtree(out)  # start afresh: fits kept from the old run would not match new settings
    out.mkdir(parents=True, exist_ok=True)
    assays = labels.labelled_assays()
    primary = [a for a in primary if a in set(assays)]
    if not primary:
        raise MomilError("no primary assay has labels -- check assays.parquet roles and the labels")
    test_folds = parse_test_folds(cv.rotations, n_folds(folds))
    points = grid(cv)
    model_sets = _model_assay_sets(cv.configuration, assays, primary)
    device = resolve_device(train.device)

    if assays_frame is None:
        assays_frame = default_assays(labels.assays)

    well_predictions, selections = [], []
    selection_tables, imputed_frames, threshold_frames, round_frames = [], [], [], []
    per_rotation: dict[int, dict] = {}
    runs = len(test_folds) * len(model_sets) * len(points)
    with progress(total=runs, desc=f"cv {cv.configuration}", unit="fit", enabled=show_progress) as bar:
        # fits whose assays are known before the walk (no selection inside it, no AMTL potentials) fan out
        fans_out = cv.executor != "local" and not selecting and train.balancing != "amtl"
        if fans_out and train.model not in LINEAR_MODELS:
            bar.set_postfix(executor=cv.executor)
            _fan_out(store, labels, folds, test_folds, model_sets, points, primary, train, cv, out, extra_labels)
        for k in test_folds:
            rot, wells, extra = _rotation_inputs(store, folds, k, extra_labels)
            train_wells, val_wells, test_wells = wells["train"], wells["val"], wells["test"]
            rotation_sets = model_sets
            info = per_rotation.setdefault(k, {})
            if selecting:
                if cv.selection:
                    chosen = load_selection(Path(cv.selection) / f"rot{k}", train_wells, val_wells)
                else:
                    found = select_assays(
                        store,
                        labels,
                        assays_frame,
                        associations,
                        train_wells,
                        val_wells,
                        out / "selection" / f"rot{k}",
                        select,
                        train,
                        show_progress=False,
                    )
                    chosen = found.selected
                    selection_tables.append(found.table.assign(test_fold=k))
                chosen_set = set(chosen) | set(primary)
                rotation_sets = [[a for a in assays if a in chosen_set]]
                info["selected_secondary"] = len(chosen)
                bar.set_postfix(rotation=k, selected=len(chosen))
            if train.model in LINEAR_MODELS:
                linear = instance_count_predictions if train.model == "instance-count" else mean_lr_predictions
                frame = linear(
                    store,
                    labels,
                    [a for a in assays if a in set(primary)] if cv.configuration != "mtl-all" else assays,
                    train_wells,
                    test_wells,
                )
                frame["fold"] = k
                well_predictions.append(frame)
                bar.update(len(rotation_sets) * len(points))
                continue
            for m, model_assays in enumerate(rotation_sets):
                pairs = WellPairs.build(store.wells, labels, model_assays, extra)
                is_primary = np.array([a in set(primary) for a in model_assays])
                potentials = None
                if train.balancing == "amtl":  # single-task validation AUCs: AMTL's potentials
                    potentials = single_task_potentials(
                        store,
                        labels,
                        model_assays,
                        train_wells,
                        val_wells,
                        train,
                        select,
                        out / "potentials" / f"rot{k}",
                    )
                best = None
                for g, point in enumerate(points):
                    settings = dataclasses.replace(train, **point)
                    run_dir = out / "runs" / f"rot{k}" / f"model{m}" / f"grid{g}"
                    result = fit(
                        store,
                        pairs,
                        train_wells,
                        val_wells,
                        is_primary,
                        settings,
                        run_dir,
                        show_progress=False,
                        potentials=potentials,
                    )
                    selections.append(
                        {
                            "test_fold": k,
                            "val_fold": rot.val_fold,
                            "model": m,
                            "assays": len(model_assays),
                            **point,
                            "best_epoch": result.best_epoch,
                            "val_auc": result.best_score,
                            "epochs_run": len(result.history),
                            "seconds": round(result.seconds, 2),
                        }
                    )
                    if best is None or result.best_score > best[0].best_score:
                        best = (result, g, settings)
                    bar.update(1)
                result, g, settings = best
                selections[-len(points) + g]["selected"] = True
                imputation = None
                if cv.impute:
                    done = self_train(
                        store,
                        labels,
                        model_assays,
                        [a for a in model_assays if a in set(primary)],
                        train_wells,
                        val_wells,
                        settings,
                        impute,
                        out / "runs" / f"rot{k}" / f"model{m}" / "impute",
                        first=result,
                        show_progress=False,
                    )
                    result = done.fit
                    imputation = done.summary()
                    imputed_frames.append(done.imputed.assign(test_fold=k, model=m))
                    threshold_frames.append(done.thresholds.assign(test_fold=k, model=m))
                    round_frames.append(done.rounds.assign(test_fold=k, model=m))
                    info["imputed_labels"] = info.get("imputed_labels", 0) + len(done.imputed)
                    info["kept_round"] = imputation["kept_round"]
                    bar.set_postfix(rotation=k, imputed=len(done.imputed))
                info["model_assays"] = info.get("model_assays", 0) + len(model_assays)
                model_path = out / "models" / f"rot{k}_model{m}.pt"
                save_model(
                    model_path,
                    result.model,
                    {
                        "test_fold": k,
                        "val_fold": rot.val_fold,
                        "settings": dataclasses.asdict(settings),
                        "val_auc": result.best_score,
                        "imputation": imputation,
                    },
                )
                save_validation_predictions(result.model, store, val_wells, labels, model_path, device)
                targets = (
                    [a for a in model_assays if a in set(primary)] if cv.configuration != "mtl-all" else model_assays
                )
                frame = predict_wells(result.model, store, test_wells, targets, device)
                frame["fold"] = k
                well_predictions.append(frame)

    wells_frame = pd.concat(well_predictions, ignore_index=True)
    compounds = compound_predictions(wells_frame)
    scored = attach_labels(compounds, labels)
    metrics = assay_metrics(scored)
    metrics["primary"] = metrics["assay"].isin(set(primary))
    summary = summarise(metrics, set(primary))
    summary.update(
        {
            "configuration": cv.configuration,
            "select": selecting,
            "impute": cv.impute,
            "rotations": test_folds,
            "grid_points": len(points),
            "models_per_rotation": len(model_sets),
            "per_rotation": {str(k): v for k, v in per_rotation.items()},
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    if selecting:
        summary["mean_selected_secondary"] = float(np.mean([v["selected_secondary"] for v in per_rotation.values()]))
    if cv.impute:
        summary["imputed_labels"] = int(sum(v.get("imputed_labels", 0) for v in per_rotation.values()))
    selection_frame = pd.DataFrame(selections)
    if "selected" not in selection_frame:
        selection_frame["selected"] = False
    selection_frame["selected"] = selection_frame["selected"].fillna(False).astype(bool)
    assay_selection = pd.concat(selection_tables, ignore_index=True) if selection_tables else None
    imputed = pd.concat(imputed_frames, ignore_index=True) if imputed_frames else None
    if assay_selection is not None:
        with atomic_path(out / "assay_selection.csv") as tmp:
            assay_selection.to_csv(tmp, index=False)
    if cv.impute:
        with atomic_path(out / "imputed_labels.parquet") as tmp:
            (imputed if imputed is not None else pd.DataFrame()).to_parquet(tmp, index=False)
        with atomic_path(out / "imputation_thresholds.csv") as tmp:
            pd.concat(threshold_frames, ignore_index=True).to_csv(tmp, index=False)
        with atomic_path(out / "imputation_rounds.csv") as tmp:
            pd.concat(round_frames, ignore_index=True).to_csv(tmp, index=False)
    settings_record = {"cv": dataclasses.asdict(cv), "train": dataclasses.asdict(train)}
    if selecting:
        settings_record["select"] = dataclasses.asdict(select)
    if cv.impute:
        settings_record["impute"] = dataclasses.asdict(impute)
    record = provenance("cv", settings_record, inputs={"store": store.path}, summary=summary)
    with atomic_path(out / "well_predictions.parquet") as tmp:
        wells_frame.to_parquet(tmp, index=False)
    with atomic_path(out / "compound_predictions.parquet") as tmp:
        compounds.to_parquet(tmp, index=False)
    with atomic_path(out / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False)
    with atomic_path(out / "selections.csv") as tmp:
        selection_frame.to_csv(tmp, index=False)
    write_json_atomic({**record, "summary": summary}, out / "summary.json")
    return CVResult(metrics, summary, compounds, selection_frame, assay_selection, imputed)
