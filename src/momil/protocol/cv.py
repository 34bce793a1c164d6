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

from momil import distributed
from momil.config import setting
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
from momil.model.linear import instance_count_predictions, mean_lr_predictions  # noqa: F401 (re-exported)
from momil.model.registry import LINEAR_MODELS
from momil.protocol.conformal import save_validation_predictions
from momil.protocol.executor import ExecutorSettings, FitTask
from momil.protocol.scoring import assay_metrics, attach_labels, compound_predictions, predict_wells, summarise
from momil.protocol.single_assay import single_task_potentials

CONFIGURATIONS = ("mtl-all", "mtl-primary", "stl")


@dataclasses.dataclass
class CVSettings(ExecutorSettings):
    configuration: str = setting(
        "mtl-all", '"mtl-all", "mtl-primary" or "stl"', choices=["mtl-all", "mtl-primary", "stl"]
    )
    projector_dims: str = setting("64", "grid for F_phi's size d (paper: 64,128)")
    head_dims: str = setting("32", "grid for the heads' size (paper: 32,64,128)")
    lrs: str = setting("1e-2,3e-3", "grid for the learning rate (paper: 1e-4,5e-5,1e-5)")
    rotations: str = setting("all", '"all" or comma-separated test folds, e.g. "0,1"')
    select: bool = setting(False, "assay selection inside each rotation (MoMIL + AS; mtl-all only)")
    selection: str = setting("", "reuse a `momil select --rotations all` folder instead of selecting here")
    impute: bool = setting(False, "conformal label imputation and self-training after the grid's best fit (+ LI)")
    overwrite: bool = setting(False)

    def check(self) -> None:
        super().check()
        grid(self)


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


def _fit_tasks(store, labels, folds, k, model_sets, points, primary, train, out, extra_labels) -> list[FitTask]:
    """Rotation ``k``'s (model set, grid point) fits, as tasks for an executor."""
    tasks = []
    _, wells, extra = _rotation_inputs(store, folds, k, extra_labels)
    for m, model_assays in enumerate(model_sets):
        pairs = WellPairs.build(store.wells, labels, model_assays, extra)
        is_primary = np.array([a in set(primary) for a in model_assays])
        for g, point in enumerate(points):
            settings = dataclasses.replace(train, **point)
            run_dir = str(out / "runs" / f"rot{k}" / f"model{m}" / f"grid{g}")
            tasks.append(FitTask(str(store.path), pairs, wells["train"], wells["val"], is_primary, settings, run_dir))
    return tasks


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
    from momil.protocol.imputation import ImputeSettings
    from momil.protocol.selection import SelectSettings

    cv = cv or CVSettings()
    train = train or TrainSettings()
    select = select or SelectSettings()
    impute = impute or ImputeSettings()
    _check_cv(cv, train, select, impute, associations)
    started = time.perf_counter()
    ctx = distributed.context()  # under torchrun: every rank walks the protocol, each fit split over the ranks
    show_progress = show_progress and ctx.is_main
    out = _prepare_out(Path(out), cv.overwrite) if ctx.is_main else Path(out)
    distributed.barrier()
    assays = labels.labelled_assays()
    primary = [a for a in primary if a in set(assays)]
    if not primary:
        raise MomilError("no primary assay has labels -- check assays.parquet roles and the labels")
    walk = _Walk(
        store,
        labels,
        folds,
        primary,
        out,
        cv,
        train,
        select,
        impute,
        extra_labels,
        default_assays(labels.assays) if assays_frame is None else assays_frame,
        associations,
        assays,
        grid(cv),
        _model_assay_sets(cv.configuration, assays, primary),
        resolve_device(train.device),
    )
    test_folds = parse_test_folds(cv.rotations, n_folds(folds))
    runs = len(test_folds) * len(walk.model_sets) * len(walk.points)
    with progress(total=runs, desc=f"cv {cv.configuration}", unit="fit", enabled=show_progress) as bar:
        # fits whose assays are known before the walk (no selection inside it) fan out here; with selection, each
        # rotation's after its selection (whose single-assay models fan out too)
        if walk.fans_out and not walk.selecting:
            bar.set_postfix(executor=cv.executor)
            cv.run([t for k in test_folds for t in walk.fit_tasks(k, walk.model_sets)])
        for k in test_folds:
            walk.rotation(k, bar)
    result = walk.write(test_folds, time.perf_counter() - started) if ctx.is_main else None
    return distributed.broadcast_object(result)  # rank 0 scored and wrote; every rank returns the result


def _check_cv(cv: CVSettings, train: TrainSettings, select, impute, associations) -> None:
    selecting = cv.select or bool(cv.selection)
    if distributed.context().active and (cv.select or cv.impute or cv.fans_out):
        raise MomilError(
            "under torchrun momil cv splits each fit's wells over the ranks; assay selection (--select), label "
            "imputation (--impute) and --executor are not run that way -- run them as one process (their fits spread "
            "with --executor processes or ray), or select first with `momil select` and pass --selection"
        )
    if selecting and cv.configuration != "mtl-all":
        raise MomilError(
            "assay selection chooses secondary assays for the mtl-all model -- use --configuration "
            "mtl-all with --select"
        )
    if train.model in LINEAR_MODELS and (selecting or cv.impute):
        raise MomilError(f"the {train.model} baseline takes neither --select nor --impute")
    if cv.impute:
        impute.check()
    if cv.select:
        select.require_associations(associations)


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and (out / "summary.json").exists():
        if not overwrite:
            raise MomilError(f"{out}: holds a finished cross-validation -- choose another --out or pass --overwrite")
        shutil.rmtree(out)  # start afresh: fits kept from the old run would not match new settings
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclasses.dataclass
class _Walk:
    """The protocol's walk over the rotations: its inputs, and what each rotation adds to the outputs."""

    store: InstanceStore
    labels: LabelMatrix
    folds: pd.DataFrame
    primary: list[str]
    out: Path
    cv: CVSettings
    train: TrainSettings
    select: SelectSettings
    impute: ImputeSettings
    extra_labels: pd.DataFrame | None
    assays_frame: pd.DataFrame
    associations: pd.DataFrame | None
    assays: list[str]
    points: list[dict]
    model_sets: list[list[str]]
    device: object
    well_predictions: list = dataclasses.field(default_factory=list)
    selections: list = dataclasses.field(default_factory=list)
    selection_tables: list = dataclasses.field(default_factory=list)
    imputed_frames: list = dataclasses.field(default_factory=list)
    threshold_frames: list = dataclasses.field(default_factory=list)
    round_frames: list = dataclasses.field(default_factory=list)
    per_rotation: dict = dataclasses.field(default_factory=dict)

    @property
    def selecting(self) -> bool:
        return self.cv.select or bool(self.cv.selection)

    @property
    def fans_out(self) -> bool:
        """Whether the grid's fits run on an executor ahead of the walk (not the logistic regressions, which are
        no fits, nor AMTL, whose potentials come from the walk's single-task models)."""
        return self.cv.fans_out and self.train.model not in LINEAR_MODELS and self.train.balancing != "amtl"

    def fit_tasks(self, k: int, model_sets: list[list[str]]) -> list[FitTask]:
        return _fit_tasks(
            self.store, self.labels, self.folds, k, model_sets, self.points, self.primary, self.train, self.out,
            self.extra_labels,
        )  # fmt: skip

    def targets(self, model_assays: list[str]) -> list[str]:
        """The assays a model's test predictions are kept for: all in mtl-all, else the primary ones."""
        if self.cv.configuration == "mtl-all":
            return list(model_assays)
        return [a for a in model_assays if a in set(self.primary)]

    def rotation(self, k: int, bar) -> None:
        rot, wells, extra = _rotation_inputs(self.store, self.folds, k, self.extra_labels)
        info = self.per_rotation.setdefault(k, {})
        rotation_sets = self.model_sets
        if self.selecting:
            chosen = self.chosen_secondaries(k, wells)
            chosen_set = set(chosen) | set(self.primary)
            rotation_sets = [[a for a in self.assays if a in chosen_set]]
            info["selected_secondary"] = len(chosen)
            bar.set_postfix(rotation=k, selected=len(chosen))
            if self.fans_out:
                self.cv.run(self.fit_tasks(k, rotation_sets))
        if self.train.model in LINEAR_MODELS:
            info["model_assays"] = len(self.targets(self.assays))  # one regression per assay
            bar.update(len(rotation_sets) * len(self.points))
            if not distributed.context().is_main:  # rank 0 fits them (no network, nothing to split)
                return
            linear = instance_count_predictions if self.train.model == "instance-count" else mean_lr_predictions
            frame = linear(self.store, self.labels, self.targets(self.assays), wells["train"], wells["test"])
            frame["fold"] = k
            self.well_predictions.append(frame)
            return
        for m, model_assays in enumerate(rotation_sets):
            self.model(k, m, model_assays, rot, wells, extra, info, bar)

    def chosen_secondaries(self, k: int, wells: dict) -> list[str]:
        """The secondary assays chosen for rotation ``k``: read from ``cv.selection`` or selected here."""
        from momil.protocol.selection import load_selection, select_assays

        if self.cv.selection:
            return load_selection(Path(self.cv.selection) / f"rot{k}", wells["train"], wells["val"])
        found = select_assays(
            self.store,
            self.labels,
            self.assays_frame,
            self.associations,
            wells["train"],
            wells["val"],
            self.out / "selection" / f"rot{k}",
            self.select,
            self.train,
            show_progress=False,
            executor=self.cv.runner(),
        )
        self.selection_tables.append(found.table.assign(test_fold=k))
        return found.selected

    def model(self, k: int, m: int, model_assays: list[str], rot, wells: dict, extra, info: dict, bar) -> None:
        """Grid search for one model of rotation ``k``, then imputation, the model file and its test predictions."""
        pairs = WellPairs.build(self.store.wells, self.labels, model_assays, extra)
        is_primary = np.array([a in set(self.primary) for a in model_assays])
        potentials = None
        if self.train.balancing == "amtl":  # single-task validation AUCs: AMTL's potentials
            potentials = single_task_potentials(
                self.store,
                self.labels,
                model_assays,
                wells["train"],
                wells["val"],
                self.train,
                self.select,
                self.out / "potentials" / f"rot{k}",
            )
        best = None
        for g, point in enumerate(self.points):
            settings = dataclasses.replace(self.train, **point)
            run_dir = self.out / "runs" / f"rot{k}" / f"model{m}" / f"grid{g}"
            result = fit(
                self.store,
                pairs,
                wells["train"],
                wells["val"],
                is_primary,
                settings,
                run_dir,
                show_progress=False,
                potentials=potentials,
            )
            self.selections.append(
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
        self.selections[-len(self.points) + g]["selected"] = True
        imputation = None
        if self.cv.impute:
            result, imputation = self.self_train(k, m, model_assays, wells, settings, result, info, bar)
        info["model_assays"] = info.get("model_assays", 0) + len(model_assays)
        if not distributed.context().is_main:  # rank 0 writes the model and predicts the test wells
            return
        model_path = self.out / "models" / f"rot{k}_model{m}.pt"
        extra_record = {
            "test_fold": k,
            "val_fold": rot.val_fold,
            "settings": dataclasses.asdict(settings),
            "val_auc": result.best_score,
            "imputation": imputation,
        }
        save_model(model_path, result.model, extra_record)
        save_validation_predictions(result.model, self.store, wells["val"], self.labels, model_path, self.device)
        frame = predict_wells(result.model, self.store, wells["test"], self.targets(model_assays), self.device)
        frame["fold"] = k
        self.well_predictions.append(frame)

    def self_train(self, k, m, model_assays, wells, settings, first, info, bar):
        """Conformal label imputation from the selected fit; (the kept fit, its summary)."""
        from momil.protocol.imputation import self_train

        done = self_train(
            self.store,
            self.labels,
            model_assays,
            [a for a in model_assays if a in set(self.primary)],
            wells["train"],
            wells["val"],
            settings,
            self.impute,
            self.out / "runs" / f"rot{k}" / f"model{m}" / "impute",
            first=first,
            show_progress=False,
        )
        imputation = done.summary()
        self.imputed_frames.append(done.imputed.assign(test_fold=k, model=m))
        self.threshold_frames.append(done.thresholds.assign(test_fold=k, model=m))
        self.round_frames.append(done.rounds.assign(test_fold=k, model=m))
        info["imputed_labels"] = info.get("imputed_labels", 0) + len(done.imputed)
        info["kept_round"] = imputation["kept_round"]
        bar.set_postfix(rotation=k, imputed=len(done.imputed))
        return done.fit, imputation

    def summary(self, metrics: pd.DataFrame, test_folds: list[int], seconds: float) -> dict:
        summary = summarise(metrics, set(self.primary))
        summary.update(
            {
                "configuration": self.cv.configuration,
                "select": self.selecting,
                "impute": self.cv.impute,
                "rotations": test_folds,
                "grid_points": len(self.points),
                "models_per_rotation": len(self.model_sets),
                "per_rotation": {str(k): v for k, v in self.per_rotation.items()},
                "seconds": round(seconds, 1),
            }
        )
        if self.selecting:
            chosen = [v["selected_secondary"] for v in self.per_rotation.values()]
            summary["mean_selected_secondary"] = float(np.mean(chosen))
        if self.cv.impute:
            summary["imputed_labels"] = int(sum(v.get("imputed_labels", 0) for v in self.per_rotation.values()))
        return summary

    def write(self, test_folds: list[int], seconds: float) -> CVResult:
        """Score the test predictions and write every output of the cross-validation atomically."""
        out = self.out
        wells_frame = pd.concat(self.well_predictions, ignore_index=True)
        compounds = compound_predictions(wells_frame)
        metrics = assay_metrics(attach_labels(compounds, self.labels))
        metrics["primary"] = metrics["assay"].isin(set(self.primary))
        summary = self.summary(metrics, test_folds, seconds)
        selection_frame = pd.DataFrame(self.selections)
        if "selected" not in selection_frame:
            selection_frame["selected"] = False
        selection_frame["selected"] = selection_frame["selected"].fillna(False).astype(bool)
        assay_selection = pd.concat(self.selection_tables, ignore_index=True) if self.selection_tables else None
        imputed = pd.concat(self.imputed_frames, ignore_index=True) if self.imputed_frames else None
        if assay_selection is not None:
            with atomic_path(out / "assay_selection.csv") as tmp:
                assay_selection.to_csv(tmp, index=False)
        if self.cv.impute:
            with atomic_path(out / "imputed_labels.parquet") as tmp:
                (imputed if imputed is not None else pd.DataFrame()).to_parquet(tmp, index=False)
            with atomic_path(out / "imputation_thresholds.csv") as tmp:
                pd.concat(self.threshold_frames, ignore_index=True).to_csv(tmp, index=False)
            with atomic_path(out / "imputation_rounds.csv") as tmp:
                pd.concat(self.round_frames, ignore_index=True).to_csv(tmp, index=False)
        settings_record = {"cv": dataclasses.asdict(self.cv), "train": dataclasses.asdict(self.train)}
        if self.selecting:
            settings_record["select"] = dataclasses.asdict(self.select)
        if self.cv.impute:
            settings_record["impute"] = dataclasses.asdict(self.impute)
        record = provenance("cv", settings_record, inputs={"store": self.store.path}, summary=summary)
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
