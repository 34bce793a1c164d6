"""`momil train`, `cv`, `predict`: one model, the paper's protocol, predictions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from momil import distributed
from momil.cli.common import (
    add_association_inputs,
    add_model_inputs,
    add_preset_argument,
    associations_of,
    inputs_of,
    model_assays,
    model_inputs,
    require_validation,
)
from momil.config import add_settings_arguments, build_settings
from momil.data.pairs import WellPairs, rotation_wells
from momil.device import resolve_device
from momil.errors import MomilError
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.paths import check_output
from momil.io.profiles import DEFAULT_PREFIX, compound_profiles, feature_columns, well_profiles
from momil.io.provenance import provenance
from momil.io.store import InstanceStore
from momil.protocol.conformal import conformal_calls, read_validation_predictions, save_validation_predictions
from momil.protocol.cv import CVSettings, cross_validate
from momil.protocol.imputation import ImputeSettings
from momil.protocol.scoring import compound_predictions, metrics_table, predict_wells
from momil.protocol.selection import SelectSettings
from momil.training.checkpoints import load_model, save_model
from momil.training.fit import fit
from momil.training.settings import TrainSettings


def cmd_train(args) -> int:

    settings = build_settings(TrainSettings, args, args.config, "train")
    store, labels, folds, assays, primary = model_inputs(args)
    chosen = model_assays(labels.labelled_assays(), primary, args.configuration, chosen=args.assay)
    rot, wells = rotation_wells(store.wells, folds, args.test_fold)
    pairs = WellPairs.build(store.wells, labels, chosen)
    require_validation(pairs, wells["val"], rot, args.folds)
    out = Path(args.out)
    result = fit(
        store,
        pairs,
        wells["train"],
        wells["val"],
        np.array([a in set(primary) for a in chosen]),
        settings,
        out / "checkpoint",
        show_progress=not args.quiet,
    )
    if not distributed.context().is_main:  # under torchrun rank 0 writes the model and its records
        return 0
    record = provenance(
        "train",
        settings,
        inputs={"store": args.store, "labels": args.labels, "folds": args.folds},
        test_fold=rot.test_fold,
        val_fold=rot.val_fold,
        assays=len(chosen),
        best_epoch=result.best_epoch,
        val_auc=result.best_score,
    )
    save_model(
        out / "model.pt",
        result.model,
        {
            "provenance": record,
            "feature_names": store.feature_names,
            "primary": [a for a in chosen if a in set(primary)],
        },
    )
    save_validation_predictions(
        result.model, store, wells["val"], labels, out / "model.pt", resolve_device(settings.device)
    )
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    write_json_atomic(record, out / "train.json")
    print(
        f"model written to {out / 'model.pt'}: {len(chosen)} assays, best epoch {result.best_epoch}, "
        f"validation AUC (mean over primary assays, well level) {result.best_score:.3f}"
    )
    return 0


def cmd_cv(args) -> int:

    cv_settings = build_settings(CVSettings, args, args.config, "cv")
    train_settings = build_settings(TrainSettings, args, args.config, "train")
    select_settings = build_settings(SelectSettings, args, args.config, "select")
    impute_settings = build_settings(ImputeSettings, args, args.config, "impute")
    store, labels, folds, assays, primary = model_inputs(args)
    associations = associations_of(args) if cv_settings.select else None
    result = cross_validate(
        store,
        labels,
        folds,
        primary,
        args.out,
        cv_settings,
        train_settings,
        show_progress=not args.quiet,
        assays_frame=assays,
        associations=associations,
        select=select_settings,
        impute=impute_settings,
    )
    summary = result.summary
    extras = (" + assay selection" if summary["select"] else "") + (" + label imputation" if summary["impute"] else "")
    print(
        f"cross-validation ({summary['configuration']}{extras}, rotations {summary['rotations']}, "
        f"{summary['grid_points']} grid points) written to {args.out}"
    )
    for k, info in summary["per_rotation"].items():
        parts = [f"{info['model_assays']} assays in the model"]
        if "selected_secondary" in info:
            parts.append(f"{info['selected_secondary']} secondary assays selected")
        if "imputed_labels" in info:
            parts.append(f"{info['imputed_labels']} labels imputed, the model of round {info['kept_round']} kept")
        if summary["select"] or summary["impute"]:
            print(f"  rotation {k}: " + ", ".join(parts))
    print("compound-level test metrics, predictions pooled over rotations:")
    print(metrics_table(result.metrics))
    if summary["undefined_primary_assays"]:
        print(f"undefined (one class in the test pool, left out of the mean): {summary['undefined_primary_assays']}")
    return 0


def cmd_predict(args) -> int:

    out = check_output(args.out, "file", inputs_of(args), args.overwrite, suffixes=(".parquet", ".pq"))
    wells_path = out.with_name(out.stem + "_wells.parquet")
    provenance_path = out.with_name(out.stem + "_provenance.json")
    for beside in (wells_path, provenance_path):
        check_output(beside, "file", inputs_of(args), args.overwrite, flag=f"--out (beside it, {beside.name})")
    if not 0 < args.significance < 1:
        raise MomilError(f"--significance must lie in (0, 1), not {args.significance}")
    calibration = read_validation_predictions(args.model) if args.calibrate else None
    device = resolve_device(args.device)
    model, extra = load_model(args.model, device)
    store = InstanceStore(args.store)
    _check_store_for(model, extra, store, args.store)
    wells = (
        np.flatnonzero((store.wells["Metadata_ControlType"] != "negcon").to_numpy())
        if not args.all_wells
        else np.arange(store.n_wells)
    )
    assays = args.assay or None
    unknown = [a for a in (assays or []) if a not in model.assays]
    if unknown:
        raise MomilError(
            f"--assay {unknown[0]}: the model has no such assay -- it predicts {len(model.assays)} "
            f"assays, e.g. {', '.join(model.assays[:5])}"
        )
    frame = predict_wells(model, store, wells, assays, device, show_progress=not args.quiet)
    compounds = compound_predictions(frame)
    calibrated = ""
    if calibration is not None:
        overlap = set(compounds["Metadata_Compound"]) & set(calibration["Metadata_Compound"])
        if overlap:
            warnings.warn(
                f"{len(overlap)} predicted compounds are the model's own calibration (validation) compounds, e.g. "
                f"{sorted(overlap)[0]}: their conformal calls are not valid",
                stacklevel=1,
            )
        compounds = conformal_calls(calibration, compounds, args.significance)
        confident = compounds["confident"]
        calibrated = (
            f"; conformal calls at significance {args.significance:g}: {int(confident.sum())} of {len(confident)} "
            f"confident ({int((compounds['call'] == 'active').sum())} active)"
        )
    with atomic_path(out) as tmp:
        compounds.to_parquet(tmp, index=False)
    with atomic_path(wells_path) as tmp:
        frame.to_parquet(tmp, index=False)
    write_json_atomic(
        provenance(
            "predict",
            {
                "model": str(args.model),
                "assays": assays,
                "calibrate": args.calibrate,
                "significance": args.significance if args.calibrate else None,
            },
            inputs={"model": args.model, "store": args.store},
        ),
        provenance_path,
    )
    print(
        f"predictions for {frame['Metadata_Well'].size // max(1, len(model.assays if assays is None else assays))} "
        f"wells and {compounds['Metadata_Compound'].nunique()} compounds written to {out} (compound level) and "
        f"{wells_path} (well level){calibrated}"
    )
    return 0


def _check_store_for(model, extra: dict, store: InstanceStore, store_path) -> None:
    """A store the model can read: the training store's feature count and names."""
    if store.dim != model.hparams["in_dim"]:
        raise MomilError(
            f"{store_path}: instances have {store.dim} features, the model was trained on "
            f"{model.hparams['in_dim']} -- use a store made the same way as the training store"
        )
    names = extra.get("feature_names")
    if names and list(names) != list(store.feature_names):
        raise MomilError(f"{store_path}: feature names differ from the training store's -- use the same extraction")


def cmd_profiles(args) -> int:

    out = check_output(args.out, "file", inputs_of(args), args.overwrite, suffixes=(".parquet", ".pq"))
    provenance_path = out.with_name(out.stem + "_provenance.json")
    check_output(
        provenance_path, "file", inputs_of(args), args.overwrite, flag=f"--out (beside it, {provenance_path.name})"
    )
    if bool(args.model) != bool(args.assay):
        raise MomilError("--model and --assay go together: the embedding of one assay's head (or neither: well means)")
    store = InstanceStore(args.store)
    device = resolve_device(args.device)
    model = None
    if args.model:
        model, extra = load_model(args.model, device)
        _check_store_for(model, extra, store, args.store)
    table = well_profiles(store, model, args.assay, args.feature_prefix, device, show_progress=not args.quiet)
    if args.level == "compound":
        table = compound_profiles(table, args.feature_prefix, args.operation)
    features = feature_columns(table, args.feature_prefix)
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    write_json_atomic(
        provenance(
            "profiles",
            {
                "level": args.level,
                "model": args.model,
                "assay": args.assay,
                "feature_prefix": args.feature_prefix,
                "operation": args.operation if args.level == "compound" else None,
                "features": features,
            },
            inputs={"store": args.store, **({"model": args.model} if args.model else {})},
        ),
        provenance_path,
    )
    what = f"the {args.assay} head's embedding" if args.model else "well means"
    print(
        f"{args.level}-level profiles ({what}): {len(table)} rows x {len(features)} features "
        f"(prefix {args.feature_prefix}) written to {out}"
    )
    return 0


def register(stage) -> None:
    """The model commands: train, cv, predict, profiles."""
    p = stage("train", "train one MoMIL model on one fold rotation", cmd_train)
    add_model_inputs(p)
    add_preset_argument(p)
    p.add_argument("--test-fold", type=int, default=0, help="held-out fold; validation is the next one")
    p.add_argument("--configuration", choices=["mtl-all", "mtl-primary"], default="mtl-all")
    p.add_argument("--assay", action="append", help="train on this assay only (repeat for several): STL")
    add_settings_arguments(p, TrainSettings)

    p = stage("cv", "the paper's cross-validation protocol (3-1-1 rotation, grid on validation)", cmd_cv)
    add_model_inputs(p)
    add_preset_argument(p)
    add_association_inputs(p)
    add_settings_arguments(p, CVSettings)
    add_settings_arguments(p, TrainSettings, skip=("projector_dim", "head_dim", "lr"))
    add_settings_arguments(p, SelectSettings)
    add_settings_arguments(p, ImputeSettings)

    p = stage("predict", "score wells and compounds of a store with a trained model", cmd_predict)
    p.add_argument("--model", required=True, help="model.pt from `momil train` or `momil cv`")
    p.add_argument("--store", required=True, help="(corrected) instance store to score")
    p.add_argument("--out", required=True, help="compound-level predictions (.parquet); wells go beside it")
    p.add_argument("--assay", action="append", help="only these assays (repeatable)")
    p.add_argument("--all-wells", action="store_true", help="score control wells too")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="add Mondrian conformal p-values, prediction sets and confident calls per compound and assay, calibrated "
        "on the model's own validation-fold compounds (saved beside it by `momil train` / `momil cv`)",
    )
    p.add_argument(
        "--significance", type=float, default=0.1, help="with --calibrate: the error rate allowed per class (0.1)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing prediction files")
    p.add_argument("--device", default="auto")

    p = stage(
        "profiles",
        "well- or compound-level profiles in pycytominer's shape (well means, or a trained head's embedding)",
        cmd_profiles,
    )
    p.add_argument("--store", required=True, help="(corrected) instance store")
    p.add_argument("--model", help="model.pt: profiles are the attention-pooled embedding of --assay's head")
    p.add_argument("--assay", help="with --model: the assay whose head embeds the wells")
    p.add_argument("--level", choices=["well", "compound"], default="well")
    p.add_argument(
        "--operation", choices=["median", "mean"], default="median", help="compound level: consensus of the wells"
    )
    p.add_argument("--feature-prefix", default=DEFAULT_PREFIX, help="start of every feature column's name")
    p.add_argument("--out", required=True, help="profile table (.parquet); its provenance goes beside it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing profile table")
    p.add_argument("--device", default="auto")
