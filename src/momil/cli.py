"""The `momil` command: one subcommand per stage, thin over the library.

Errors a user can cause are printed as one line (``momil: error: ...``) and exit with status 2; nothing is
written by a command that fails.
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from momil import __version__
from momil.config import add_settings_arguments, build_settings
from momil.errors import MomilError
from momil.io.paths import OutputLocked, check_output, output_lock


# --------------------------------------------------------------------------------------------------- commands
def cmd_simulate(args) -> int:
    from momil.simulate import SimulateSettings, simulate

    settings = build_settings(SimulateSettings, args, args.config, "simulate")
    check_output(args.out, "dir", {"--config": args.config}, settings.overwrite)
    summary = simulate(args.out, settings, show_progress=not args.quiet)
    print(f"simulated screen written to {args.out}")
    _print_mapping(summary)
    return 0


def cmd_ingest(args) -> int:
    from momil.io.ingest import IngestSettings, ingest

    settings = build_settings(IngestSettings, args, args.config, "ingest")
    started = time.perf_counter()
    store = ingest(args.instances, args.wells, args.out, settings, show_progress=not args.quiet)
    seconds = time.perf_counter() - started
    print(f"instance store written to {args.out}")
    summary = store.summary()
    summary["seconds"] = round(seconds, 2)
    summary["rows_per_second"] = round(store.n_instances / max(seconds, 1e-9))
    _print_mapping(summary)
    return 0


def cmd_correct(args) -> int:
    from momil.correct import CorrectSettings, correct

    settings = build_settings(CorrectSettings, args, args.config, "correct")
    store = correct(args.store, args.out, settings, show_progress=not args.quiet)
    print(
        f"corrected store written to {args.out} (plate-wise robust z-score against "
        f"{settings.control} wells, {settings.stats}-level statistics)"
    )
    _print_mapping(store.summary())
    return 0


def cmd_split(args) -> int:
    import pandas as pd

    from momil.io.contract import COMPOUND, CONTROL, align_labels, read_compounds, read_labels, read_wells
    from momil.io.tables import write_table_atomic
    from momil.provenance import atomic_path, provenance
    from momil.splits import SplitSettings, split

    settings = build_settings(SplitSettings, args, args.config, "split")
    if not (args.wells or args.labels or args.compounds):
        raise MomilError("momil split needs --wells, --labels or --compounds to know which compounds to split")
    out = check_output(args.out, "file", _inputs(args), args.overwrite, suffixes=(".parquet", ".pq"))
    check_output(
        out.with_name(out.stem + "_summary.csv"), "file", _inputs(args), args.overwrite, flag="--out (its _summary.csv)"
    )
    structures = read_compounds(args.compounds) if args.compounds else None
    labels = read_labels(args.labels, args.row_index, args.column_index) if args.labels else None
    if args.wells:
        wells = read_wells(args.wells)
        if labels is not None:
            labels, _ = align_labels(labels, wells, args.labels, strict=args.strict_labels)
        compounds = pd.unique(wells.loc[wells[CONTROL] == "trt", COMPOUND])
    else:
        parts = []
        if labels is not None:
            parts.append(pd.Series(labels.compounds))
        if structures is not None:
            parts.append(structures[COMPOUND])
        compounds = pd.unique(pd.concat(parts))
    folds, summary, seconds = split(compounds, structures, labels, settings, show_progress=not args.quiet)
    record = provenance(
        "split",
        settings,
        inputs={"wells": args.wells, "labels": args.labels, "compounds": args.compounds},
        seconds=round(seconds, 2),
        summary=summary.to_dict(orient="records"),
    )
    write_table_atomic(folds, out, metadata=record)
    summary_path = out.with_name(out.stem + "_summary.csv")
    with atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False)
    print(
        f"folds written to {out} ({len(folds)} compounds, {settings.n_folds} folds, method {settings.method}, "
        f"{seconds:.1f} s)"
    )
    print(summary.to_string(index=False))
    return 0


def cmd_validate(args) -> int:
    """Read and check every input given with the checks of the stages that read it; write nothing."""
    from momil.io.contract import (
        CONTROL,
        PLATE,
        InstanceSource,
        align_labels,
        missing_image_files,
        read_assays,
        read_associations,
        read_compounds,
        read_labels,
        read_load_data,
        read_wells,
    )
    from momil.io.ingest import count_instances

    wells = None
    if args.wells:
        wells = read_wells(args.wells)
        print(
            f"wells: {args.wells}: {len(wells)} wells, {wells[PLATE].nunique()} plates, "
            f"{(wells[CONTROL] == 'negcon').sum()} negcon wells"
        )
        without = sorted(set(wells[PLATE]) - set(wells.loc[wells[CONTROL] == "negcon", PLATE]))
        if without:
            warnings.warn(
                f"{args.wells}: {len(without)} plate(s) have no negcon wells ({', '.join(without[:5])}); "
                "`momil correct` refuses them unless given --fallback all (statistics from all their "
                "wells)",
                stacklevel=1,
            )
    if args.instances:
        source = InstanceSource(args.instances)
        if wells is not None:  # ingest's own first pass: unlisted wells, empty bags, no rows
            count_instances(source, wells, args.wells, args.drop_empty_wells)
        rows = sum(len(chunk.features) for chunk in source.iter_chunks(with_meta=False))  # every value finite
        if rows == 0:
            raise MomilError(f"{args.instances}: holds no instances -- the instance table is empty")
        print(f"instances: {args.instances}: {rows} instances x {source.dim} features, all finite")
    if args.load_data:
        table, channels = read_load_data(args.load_data)
        root = Path(args.root) if args.root else Path(args.load_data).parent
        missing = missing_image_files(table, channels, root)
        if missing:
            row, channel, path = missing[0]
            raise MomilError(
                f"{args.load_data}: {len(missing)} image file(s) are missing; the first is data row "
                f"{row + 1}, channel {channel}: {path} -- fix the PathName_/FileName_ columns or "
                "--root"
            )
        if wells is not None:
            keys = set(zip(wells[PLATE], wells["Metadata_Well"]))
            unknown = [i for i, k in enumerate(zip(table[PLATE], table["Metadata_Well"])) if k not in keys]
            if unknown:
                raise MomilError(
                    f"{args.load_data}: {len(unknown)} field(s) belong to wells {args.wells} lacks "
                    f"(first: data row {unknown[0] + 1}) -- add those wells or drop the fields"
                )
        print(f"load data: {args.load_data}: {len(table)} fields, channels {channels}, every image file present")
    if args.compounds:
        compounds = read_compounds(args.compounds)
        print(
            f"compounds: {args.compounds}: {len(compounds)} compounds, "
            f"{compounds['Metadata_SMILES'].notna().sum()} with SMILES"
        )
    labels = None
    if args.labels:
        labels = read_labels(args.labels, args.row_index, args.column_index)
        print(
            f"labels: {args.labels}: {labels.n_labels} labels, {labels.shape[0]} compounds x {labels.shape[1]} "
            f"assays ({100 * labels.density:.2f} % known, {int(labels.values.sum())} active)"
        )
        if wells is not None:
            labels, unknown = align_labels(labels, wells, args.labels, strict=args.strict_labels)
            print(f"labels: {len(unknown)} labelled compounds without wells left out; {labels.n_labels} remain")
    if args.assays:
        assays = read_assays(args.assays, list(labels.assays) if labels is not None else None)
        print(f"assays: {args.assays}: {len(assays)} assays, {(assays['role'] == 'primary').sum()} primary")
    if args.associations:
        assoc = read_associations(args.associations, args.string_info)
        print(f"associations: {args.associations}: {len(assoc)} gene pairs")
    print("all inputs valid")
    return 0


def cmd_info(args) -> int:
    from momil.io.store import InstanceStore

    store = InstanceStore(args.store)
    _print_mapping(store.summary())
    if args.history:
        print(json.dumps(store.manifest.get("history", []), indent=2))
    return 0


def cmd_demo(args) -> int:
    from momil.demo import run_demo

    run_demo(
        Path(args.out),
        n_compounds=args.n_compounds,
        show_progress=not args.quiet,
        rotations=args.rotations,
        epochs=args.epochs,
    )
    return 0


_INPUT_FLAGS = (
    "store",
    "labels",
    "row_index",
    "column_index",
    "folds",
    "assays",
    "associations",
    "string_info",
    "selection",
    "wells",
    "compounds",
    "instances",
    "load_data",
    "model",
    "config",
    "classes",
    "simulated",
    "benchmark",
)


def _inputs(args) -> dict:
    """{flag: path} of every input the command was given (what its output must not replace or sit inside)."""
    found = {}
    for name in _INPUT_FLAGS:
        value = getattr(args, name, None)
        if value and isinstance(value, (str, Path, list)):  # `momil probe --folds` is a count, not a file
            found["--" + name.replace("_", "-")] = value
    return found


def _model_inputs(args):
    """Store, labels aligned to its wells, folds and primary assays for train / cv."""
    from momil.io.contract import align_labels, default_assays, read_assays, read_labels
    from momil.io.store import InstanceStore
    from momil.splits import read_folds

    check_output(args.out, "dir", _inputs(args), overwrite=None)
    store = InstanceStore(args.store)
    labels = read_labels(args.labels, getattr(args, "row_index", None), getattr(args, "column_index", None))
    labels, _ = align_labels(labels, store.wells, args.labels)
    folds = read_folds(args.folds)
    missing = sorted(set(labels.compounds) - set(folds["Metadata_Compound"]))
    if missing:
        raise MomilError(
            f"{args.folds}: {len(missing)} labelled compounds have no fold (e.g. {missing[0]}) -- "
            "make the folds from the same wells and labels with `momil split`"
        )
    assays = read_assays(args.assays, list(labels.assays)) if args.assays else default_assays(labels.assays)
    primary = list(assays.loc[assays["role"] == "primary", "assay"])
    return store, labels, folds, assays, primary


def _require_validation(pairs, val_wells, rot, folds_path) -> None:
    """A fit selects its epoch on the validation fold: refuse a rotation whose validation fold has no label."""
    if len(pairs.labelled_wells(val_wells)) == 0:
        raise MomilError(
            f"{folds_path}: validation fold {rot.val_fold} (of test fold {rot.test_fold}) has no "
            "labelled well for the model's assays -- make fewer folds (`momil split --n-folds`) or "
            "choose another --test-fold"
        )


def cmd_train(args) -> int:
    import numpy as np
    import pandas as pd

    from momil.data import WellPairs, rotation_wells
    from momil.provenance import provenance, write_json_atomic
    from momil.train import TrainSettings, fit, save_model

    settings = build_settings(TrainSettings, args, args.config, "train")
    store, labels, folds, assays, primary = _model_inputs(args)
    labelled = labels.labelled_assays()
    if args.assay:
        unknown = [a for a in args.assay if a not in labelled]
        if unknown:
            raise MomilError(f"--assay {unknown[0]} has no labels -- labelled assays include {labelled[:5]}")
        model_assays = list(args.assay)
    else:
        model_assays = primary if args.configuration == "mtl-primary" else labelled
    rot, wells = rotation_wells(store.wells, folds, args.test_fold)
    pairs = WellPairs.build(store.wells, labels, model_assays)
    _require_validation(pairs, wells["val"], rot, args.folds)
    out = Path(args.out)
    result = fit(
        store,
        pairs,
        wells["train"],
        wells["val"],
        np.array([a in set(primary) for a in model_assays]),
        settings,
        out / "checkpoint",
        show_progress=not args.quiet,
    )
    record = provenance(
        "train",
        settings,
        inputs={"store": args.store, "labels": args.labels, "folds": args.folds},
        test_fold=rot.test_fold,
        val_fold=rot.val_fold,
        assays=len(model_assays),
        best_epoch=result.best_epoch,
        val_auc=result.best_score,
    )
    save_model(
        out / "model.pt",
        result.model,
        {
            "provenance": record,
            "feature_names": store.feature_names,
            "primary": [a for a in model_assays if a in set(primary)],
        },
    )
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    write_json_atomic(record, out / "train.json")
    print(
        f"model written to {out / 'model.pt'}: {len(model_assays)} assays, best epoch {result.best_epoch}, "
        f"validation AUC (mean over primary assays, well level) {result.best_score:.3f}"
    )
    return 0


def cmd_cv(args) -> int:
    from momil.evaluate import CVSettings, cross_validate, metrics_table
    from momil.imputation import ImputeSettings
    from momil.selection import SelectSettings
    from momil.train import TrainSettings

    cv_settings = build_settings(CVSettings, args, args.config, "cv")
    train_settings = build_settings(TrainSettings, args, args.config, "train")
    select_settings = build_settings(SelectSettings, args, args.config, "select")
    impute_settings = build_settings(ImputeSettings, args, args.config, "impute")
    store, labels, folds, assays, primary = _model_inputs(args)
    associations = _associations(args) if cv_settings.select else None
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


def _associations(args):
    from momil.io.contract import read_associations

    if not getattr(args, "associations", None):
        return None
    return read_associations(args.associations, getattr(args, "string_info", None))


def cmd_select(args) -> int:
    from momil.data import rotation_wells
    from momil.selection import SelectSettings, select_assays, selection_table_text
    from momil.splits import test_folds
    from momil.train import TrainSettings

    settings = build_settings(SelectSettings, args, args.config, "select")
    train_settings = build_settings(TrainSettings, args, args.config, "train")
    stages = settings.stage_list()
    store, labels, folds, assays, primary = _model_inputs(args)
    associations = _associations(args)
    if "biology" in stages and associations is None:
        raise MomilError(
            "the biology stage needs --associations (STRING links + --string-info, a gene_a, gene_b, "
            "score table, or a from, to, cost network) -- or leave biology out of --stages"
        )
    n_folds = int(folds["fold"].max()) + 1
    out = Path(args.out)
    for k in test_folds(args.rotations, n_folds):
        rot, wells = rotation_wells(store.wells, folds, k)
        result = select_assays(
            store,
            labels,
            assays,
            associations,
            wells["train"],
            wells["val"],
            out / f"rot{k}",
            settings,
            train_settings,
            show_progress=not args.quiet,
        )
        summary = result.summary()
        print(
            f"rotation {k} (test fold {k}, validation fold {rot.val_fold}): {summary['candidates']} secondary "
            f"assays -> biology {summary['after_biology']} -> performance {summary['after_performance']} -> "
            f"selected {summary['selected']}; table in {out / f'rot{k}' / 'selection.csv'}"
        )
        if not args.quiet:
            print(selection_table_text(result.table))
    print(f"reuse with: momil cv ... --selection {out}")
    return 0


def cmd_impute(args) -> int:
    from momil.data import rotation_wells
    from momil.imputation import ImputeSettings, imputed_counts, self_train
    from momil.provenance import provenance
    from momil.selection import load_selection
    from momil.train import TrainSettings, save_model

    settings = build_settings(ImputeSettings, args, args.config, "impute")
    settings.check()
    train_settings = build_settings(TrainSettings, args, args.config, "train")
    store, labels, folds, assays, primary = _model_inputs(args)
    labelled = labels.labelled_assays()
    rot, wells = rotation_wells(store.wells, folds, args.test_fold)
    train_wells, val_wells = wells["train"], wells["val"]
    if args.selection:
        chosen = set(load_selection(Path(args.selection) / f"rot{args.test_fold}", train_wells, val_wells))
        model_assays = [a for a in labelled if a in chosen or a in set(primary)]
    elif args.configuration == "mtl-primary":
        model_assays = [a for a in labelled if a in set(primary)]
    else:
        model_assays = labelled
    out = Path(args.out)
    result = self_train(
        store,
        labels,
        model_assays,
        [a for a in model_assays if a in set(primary)],
        train_wells,
        val_wells,
        train_settings,
        settings,
        out,
        show_progress=not args.quiet,
    )
    record = provenance(
        "impute",
        {"impute": settings, "train": train_settings},
        inputs={"store": args.store, "labels": args.labels, "folds": args.folds},
        test_fold=rot.test_fold,
        val_fold=rot.val_fold,
        summary=result.summary(),
    )
    save_model(
        out / "model.pt",
        result.fit.model,
        {
            "provenance": record,
            "feature_names": store.feature_names,
            "primary": [a for a in model_assays if a in set(primary)],
        },
    )
    print(
        f"{len(result.imputed)} labels imputed over {len(result.rounds) - 1} round(s) for {len(model_assays)} "
        f"assays (test fold {rot.test_fold} untouched); written to {out}"
    )
    print(result.rounds.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    counts = imputed_counts(result.imputed)
    if len(counts):
        print(
            counts.groupby("assay")[["positive", "negative"]]
            .sum()
            .sort_values("positive", ascending=False)
            .head(20)
            .to_string()
        )
    return 0


def cmd_benchmark(args) -> int:
    from momil.benchmark import BenchmarkSettings, run_benchmark
    from momil.evaluate import CVSettings
    from momil.imputation import ImputeSettings
    from momil.selection import SelectSettings
    from momil.train import TrainSettings

    settings = build_settings(BenchmarkSettings, args, args.config, "benchmark")
    settings.method_list()
    cv = build_settings(CVSettings, args, args.config, "cv", overwrite=False)
    train = build_settings(TrainSettings, args, args.config, "train")
    select = build_settings(SelectSettings, args, args.config, "select")
    impute = build_settings(ImputeSettings, args, args.config, "impute")
    store, labels, folds, assays, primary = _model_inputs(args)
    associations = _associations(args)
    result = run_benchmark(
        store,
        labels,
        folds,
        assays,
        associations,
        args.out,
        settings,
        cv,
        train,
        select,
        impute,
        show_progress=not args.quiet,
    )
    print(
        f"benchmark written to {args.out} ({len(result.table)} methods; seconds per method: "
        + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items())
        + ")"
    )
    print((Path(args.out) / "table2.md").read_text())
    return 0


def cmd_cells(args) -> int:
    if bool(args.cellprofiler) == bool(args.load_data):
        raise MomilError("give either --cellprofiler (CellProfiler output folders) or --load-data (images to segment)")
    check_output(
        args.out,
        "file",
        {**_inputs(args), "--cellprofiler": args.cellprofiler, "--root": args.root},
        overwrite=None,
        suffixes=(".parquet", ".pq"),
    )
    if args.cellprofiler:
        from momil.io.cellprofiler import cellprofiler_to_instances

        summary = cellprofiler_to_instances(args.cellprofiler, args.out)
        source = (
            f"{summary['folders']} CellProfiler folder(s) ({summary['dropped_non_finite']} features dropped "
            "for missing values)"
        )
    else:
        from momil.imaging.fields import FieldSettings
        from momil.imaging.segment import SegmentSettings, cells_from_images

        field = build_settings(FieldSettings, args, args.config, "field")
        settings = build_settings(SegmentSettings, args, args.config, "segment")
        summary = cells_from_images(args.load_data, args.out, field, settings, args.root, show_progress=not args.quiet)
        source = f"{summary['fields']} segmented fields" + (
            f" ({len(summary['skipped'])} skipped)" if summary["skipped"] else ""
        )
    print(
        f"per-cell instance table written to {args.out}: {summary['cells']} cells x {summary['features']} "
        f"features from {source}; next: momil ingest --instances {args.out} --wells ..."
    )
    return 0


def cmd_extract(args) -> int:
    from momil.imaging.extract import ExtractSettings, extract
    from momil.imaging.fields import FieldSettings

    field = build_settings(FieldSettings, args, args.config, "field")
    settings = build_settings(ExtractSettings, args, args.config, "extract")
    store = extract(args.load_data, args.wells, args.out, field, settings, args.root, show_progress=not args.quiet)
    report = store.extract_report
    print(
        f"instance store written to {args.out}: {store.n_wells} wells, {store.n_instances} tiles x {store.dim} "
        f"features ({report['tiles_now']} tiles embedded in this run, {report['tiles_per_second']} tiles/s)"
    )
    for item in report["skipped"][:10]:
        print(
            f"  skipped plate {item['Metadata_Plate']} well {item['Metadata_Well']} site {item['Metadata_Site']}: "
            f"{item['problem']}"
        )
    if len(report["skipped"]) > 10:
        print(f"  ... {len(report['skipped']) - 10} more skipped fields")
    print(f"next: momil correct --store {args.out} --out <corrected store>")
    return 0


def cmd_pretrain(args) -> int:
    from momil.imaging.fields import FieldSettings
    from momil.imaging.pretrain import PretrainSettings, pretrain

    field = build_settings(FieldSettings, args, args.config, "field")
    settings = build_settings(PretrainSettings, args, args.config, "pretrain")
    check_output(args.out, "dir", _inputs(args), overwrite=None)
    summary = pretrain(
        args.load_data,
        args.out,
        field,
        settings,
        args.root,
        show_progress=not args.quiet,
        max_seconds=args.max_minutes * 60 if args.max_minutes else None,
    )
    print(
        f"pretrained {settings.method} backbone written to {Path(args.out) / 'backbone.pt'}: "
        f"{summary['epochs_done']} of {settings.epochs} epochs on {summary['fields']} fields, loss "
        f"{summary['first_loss']:.4f} -> {summary['last_loss']:.4f} ({summary['seconds']:.0f} s); run again to "
        "continue from the checkpoint; next: momil extract --weights " + str(Path(args.out) / "backbone.pt")
    )
    return 0


def cmd_probe(args) -> int:
    import pandas as pd

    from momil.imaging.probe import linear_probe
    from momil.io.store import InstanceStore
    from momil.io.tables import read_table, require_columns, require_no_missing, write_table_atomic
    from momil.simulate import compound_classes

    if bool(args.classes) == bool(args.simulated):
        raise MomilError("give the compound classes as --classes TABLE (with --class-column) or --simulated SCREEN")
    if args.out:
        check_output(args.out, "file", _inputs(args), overwrite=None, suffixes=(".parquet", ".pq"))
    if args.classes:
        table = read_table(args.classes, dtype_str=["Metadata_Compound"])
        require_columns(table, ["Metadata_Compound", args.class_column], args.classes, "compound classes")
        require_no_missing(table, ["Metadata_Compound", args.class_column], args.classes)
        classes = table.drop_duplicates("Metadata_Compound").set_index("Metadata_Compound")[args.class_column]
    else:
        classes = compound_classes(args.simulated)
    try:
        cs = [float(c) for c in args.c.split(",") if c.strip()]
    except ValueError as err:
        raise MomilError(f"--c must be comma-separated positive numbers, not {args.c!r}") from err
    if not cs or min(cs) <= 0:
        raise MomilError(f"--c must be comma-separated positive numbers, not {args.c!r}")
    stores = [(path, InstanceStore(path)) for path in args.store]  # every store opened before any work
    rows = []
    for path, store in stores:
        for c in cs:
            result = linear_probe(store, classes, c=c, folds=args.folds, seed=args.seed)
            rows.append({"store": str(path), "C": c, **result})
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        write_table_atomic(
            frame,
            args.out,
            {
                "command": "probe",
                "classes": args.classes or args.simulated,
                "class_column": args.class_column,
                "folds": args.folds,
            },
        )
        print(f"written to {args.out}")
    return 0


def cmd_report(args) -> int:
    from momil.report import render_report

    if args.out:
        check_output(args.out, "file", {"benchmark": args.benchmark}, overwrite=None, suffixes=(".html", ".htm"))
    path = render_report(args.benchmark, args.out)
    print(f"report written to {path} (one HTML file; open it in a browser, no network needed)")
    return 0


def cmd_predict(args) -> int:
    import numpy as np

    from momil.evaluate import compound_predictions, predict_wells
    from momil.io.store import InstanceStore
    from momil.provenance import atomic_path, provenance, write_json_atomic
    from momil.train import load_model, resolve_device

    out = check_output(args.out, "file", _inputs(args), args.overwrite, suffixes=(".parquet", ".pq"))
    wells_path = out.with_name(out.stem + "_wells.parquet")
    provenance_path = out.with_name(out.stem + "_provenance.json")
    for beside in (wells_path, provenance_path):
        check_output(beside, "file", _inputs(args), args.overwrite, flag=f"--out (beside it, {beside.name})")
    device = resolve_device(args.device)
    model, extra = load_model(args.model, device)
    store = InstanceStore(args.store)
    if store.dim != model.hparams["in_dim"]:
        raise MomilError(
            f"{args.store}: instances have {store.dim} features, the model was trained on "
            f"{model.hparams['in_dim']} -- score a store made the same way as the training store"
        )
    names = extra.get("feature_names")
    if names and list(names) != list(store.feature_names):
        raise MomilError(f"{args.store}: feature names differ from the training store's -- use the same extraction")
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
    with atomic_path(out) as tmp:
        compounds.to_parquet(tmp, index=False)
    with atomic_path(wells_path) as tmp:
        frame.to_parquet(tmp, index=False)
    write_json_atomic(
        provenance(
            "predict", {"model": str(args.model), "assays": assays}, inputs={"model": args.model, "store": args.store}
        ),
        provenance_path,
    )
    print(
        f"predictions for {frame['Metadata_Well'].size // max(1, len(model.assays if assays is None else assays))} "
        f"wells and {compounds['Metadata_Compound'].nunique()} compounds written to {out} (compound level) and "
        f"{wells_path} (well level)"
    )
    return 0


# ----------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from momil.correct import CorrectSettings
    from momil.io.ingest import IngestSettings
    from momil.simulate import SimulateSettings
    from momil.splits import SplitSettings

    parser = argparse.ArgumentParser(
        prog="momil", description="MoMIL: predict compound activity in target-directed assays from Cell Painting."
    )
    parser.add_argument("--version", action="version", version=f"momil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<stage>")

    def stage(name, help_text, func):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="TOML file with a table for this stage")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    p = stage("simulate", "write a simulated screen in the input contract", cmd_simulate)
    p.add_argument("--out", required=True, help="output folder")
    add_settings_arguments(p, SimulateSettings)

    p = stage("ingest", "instance features + wells -> instance store", cmd_ingest)
    p.add_argument("--instances", required=True, help="instance table (Parquet/CSV) or folder of Parquet parts")
    p.add_argument("--wells", required=True, help="wells table (Parquet/CSV)")
    p.add_argument("--out", required=True, help="store folder to create")
    add_settings_arguments(p, IngestSettings)

    p = stage("correct", "plate-wise robust z-score against negcon wells", cmd_correct)
    p.add_argument("--store", required=True, help="instance store to correct")
    p.add_argument("--out", required=True, help="corrected store folder to create")
    add_settings_arguments(p, CorrectSettings)

    p = stage("split", "compound folds by chemical similarity", cmd_split)
    p.add_argument("--wells", help="wells table: split its treatment compounds")
    p.add_argument("--compounds", help="compounds table with Metadata_SMILES / Metadata_InChIKey")
    p.add_argument("--labels", help="labels (long, wide or .mtx) to balance folds")
    p.add_argument("--row-index", help=".mtx labels: row (compound) index file")
    p.add_argument("--column-index", help=".mtx labels: column (assay) index file")
    p.add_argument("--strict-labels", action="store_true", help="labels of compounds without wells are an error")
    p.add_argument("--out", required=True, help="folds file to write (.parquet)")
    p.add_argument("--overwrite", action="store_true")
    add_settings_arguments(p, SplitSettings)

    from momil.evaluate import CVSettings
    from momil.train import TrainSettings

    def model_inputs(p):
        p.add_argument("--store", required=True, help="(corrected) instance store")
        p.add_argument("--labels", required=True, help="labels (long, wide or .mtx)")
        p.add_argument("--row-index", help=".mtx labels: row (compound) index file")
        p.add_argument("--column-index", help=".mtx labels: column (assay) index file")
        p.add_argument("--folds", required=True, help="folds file from `momil split`")
        p.add_argument("--assays", help="assays table (roles); without it every assay is primary")
        p.add_argument("--out", required=True, help="output folder")

    p = stage("train", "train one MoMIL model on one fold rotation", cmd_train)
    model_inputs(p)
    p.add_argument("--test-fold", type=int, default=0, help="held-out fold; validation is the next one")
    p.add_argument("--configuration", choices=["mtl-all", "mtl-primary"], default="mtl-all")
    p.add_argument("--assay", action="append", help="train on this assay only (repeat for several): STL")
    add_settings_arguments(p, TrainSettings)

    from momil.imputation import ImputeSettings
    from momil.selection import SelectSettings

    def association_inputs(p):
        p.add_argument(
            "--associations",
            help="protein associations: STRING protein.links, a gene_a, gene_b, score "
            "table or a from, to, cost network",
        )
        p.add_argument("--string-info", help="STRING protein.info file (with protein.links)")

    p = stage("cv", "the paper's cross-validation protocol (3-1-1 rotation, grid on validation)", cmd_cv)
    model_inputs(p)
    association_inputs(p)
    add_settings_arguments(p, CVSettings)
    add_settings_arguments(p, TrainSettings, skip=("projector_dim", "head_dim", "lr"))
    add_settings_arguments(p, SelectSettings)
    add_settings_arguments(p, ImputeSettings)

    p = stage(
        "select", "assay selection: biology -> single-assay performance -> influence, per fold rotation", cmd_select
    )
    model_inputs(p)
    association_inputs(p)
    p.add_argument("--rotations", default="all", help='test folds whose rotations to select in ("all" or e.g. "0,1")')
    add_settings_arguments(p, SelectSettings)
    add_settings_arguments(p, TrainSettings, skip=("head_dim", "lr", "shared_projector"))

    p = stage("impute", "conformal label imputation and self-training on one fold rotation", cmd_impute)
    model_inputs(p)
    p.add_argument("--test-fold", type=int, default=0, help="held-out fold; validation is the next one")
    p.add_argument("--configuration", choices=["mtl-all", "mtl-primary"], default="mtl-all")
    p.add_argument("--selection", help="a `momil select` folder: train on the primary plus the selected assays")
    add_settings_arguments(p, ImputeSettings)
    add_settings_arguments(p, TrainSettings)

    from momil.benchmark import BenchmarkSettings

    p = stage(
        "benchmark", "the paper's Table 2: every method through the same protocol, with bootstrap tests", cmd_benchmark
    )
    model_inputs(p)
    association_inputs(p)
    add_settings_arguments(p, BenchmarkSettings)
    add_settings_arguments(p, CVSettings, skip=("configuration", "select", "selection", "impute", "overwrite"))
    add_settings_arguments(p, TrainSettings, skip=("projector_dim", "head_dim", "lr", "model"))
    add_settings_arguments(p, SelectSettings)
    add_settings_arguments(p, ImputeSettings)

    from momil.imaging.fields import FieldSettings
    from momil.imaging.segment import SegmentSettings

    p = stage(
        "cells", "per-cell engineered features (CellProfiler output, or segmenting images) -> instance table", cmd_cells
    )
    p.add_argument("--cellprofiler", nargs="+", help="folder(s) with Image.csv, Cells.csv, Cytoplasm.csv, Nuclei.csv")
    p.add_argument("--load-data", help="or: a LoadData index of fields to segment and measure with scikit-image")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    p.add_argument("--out", required=True, help="instance table to write (.parquet)")
    add_settings_arguments(
        p, FieldSettings, skip=("tile", "stride", "drop_background", "foreground_level", "min_foreground")
    )
    add_settings_arguments(p, SegmentSettings)

    from momil.imaging.extract import ExtractSettings
    from momil.imaging.pretrain import PretrainSettings

    p = stage("pretrain", "DINO / DINOv2 self-supervised pretraining of the ViT on the screen's fields", cmd_pretrain)
    p.add_argument("--load-data", required=True, help="CellProfiler LoadData index of the fields (Parquet/CSV)")
    p.add_argument("--out", required=True, help="folder for backbone.pt, checkpoint.pt, history.csv")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch in which this time runs out")
    add_settings_arguments(
        p, FieldSettings, skip=("tile", "stride", "drop_background", "foreground_level", "min_foreground")
    )
    add_settings_arguments(p, PretrainSettings, skip=("device",))
    p.add_argument("--device", default="auto")

    p = stage("extract", "fields of view -> tiles -> backbone embeddings -> instance store", cmd_extract)
    p.add_argument("--load-data", required=True, help="CellProfiler LoadData index of the fields (Parquet/CSV)")
    p.add_argument("--wells", required=True, help="wells table (compound and control type of every well)")
    p.add_argument("--out", required=True, help="instance store to create")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    add_settings_arguments(p, FieldSettings)
    add_settings_arguments(p, ExtractSettings)

    p = stage("report", "render a `momil benchmark` folder as one HTML page (offline)", cmd_report)
    p.add_argument("benchmark", help="folder written by `momil benchmark`")
    p.add_argument("--out", help="HTML file to write (default: <benchmark>/report.html)")

    p = stage("predict", "score wells and compounds of a store with a trained model", cmd_predict)
    p.add_argument("--model", required=True, help="model.pt from `momil train` or `momil cv`")
    p.add_argument("--store", required=True, help="(corrected) instance store to score")
    p.add_argument("--out", required=True, help="compound-level predictions (.parquet); wells go beside it")
    p.add_argument("--assay", action="append", help="only these assays (repeatable)")
    p.add_argument("--all-wells", action="store_true", help="score control wells too")
    p.add_argument("--overwrite", action="store_true", help="replace existing prediction files")
    p.add_argument("--device", default="auto")

    p = stage("validate", "check inputs against the input contract without writing anything", cmd_validate)
    for name in (
        "wells",
        "instances",
        "load-data",
        "compounds",
        "labels",
        "row-index",
        "column-index",
        "assays",
        "associations",
        "string-info",
    ):
        p.add_argument(f"--{name}")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    p.add_argument("--strict-labels", action="store_true")
    p.add_argument("--drop-empty-wells", action="store_true", help="as `momil ingest --drop-empty-wells`")

    p = stage("probe", "how well stores' features separate compound classes (linear probe on well means)", cmd_probe)
    p.add_argument("--store", action="append", required=True, help="instance store (repeat to compare several)")
    p.add_argument("--classes", help="table of Metadata_Compound and a class column (.parquet or .csv)")
    p.add_argument("--class-column", default="class", help="the class column of --classes (default: class)")
    p.add_argument("--simulated", help="a `momil simulate` screen folder: its compounds' target classes")
    p.add_argument("--c", default="0.01,0.1,1", help="logistic-regression strengths C, comma-separated")
    p.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the table here too (.parquet)")

    p = stage("info", "describe an instance store", cmd_info)
    p.add_argument("store")
    p.add_argument("--history", action="store_true", help="print the provenance of every write")

    p = stage("demo", "simulate over the real hti-cnn labels and run the pipeline", cmd_demo)
    p.add_argument("--out", default="momil-demo", help="demo folder (replaced if it holds an earlier demo)")
    p.add_argument("--n-compounds", type=int, default=600, help="most-labelled hti-cnn compounds to keep")
    p.add_argument("--rotations", default="all", help='test folds to run ("all" or e.g. "0")')
    p.add_argument("--epochs", type=int, help="training epochs per fit (default 25)")
    return parser


def _print_mapping(mapping: dict) -> None:
    width = max((len(str(k)) for k in mapping), default=0)
    for key, value in mapping.items():
        print(f"  {str(key).ljust(width)}  {value}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"momil: warning: {message}", file=sys.stderr)


def _output_of(args) -> Path | None:
    """The path a command writes (its --out), if it has one."""
    out = getattr(args, "out", None)
    return Path(out) if out else None


def _remove_new_output(out: Path | None, existed: bool) -> None:
    """After a refused command: remove an output that this run created (a refused command writes nothing)."""
    if out is None or existed or not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out, ignore_errors=True)
    else:
        out.unlink(missing_ok=True)


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess in the fault tests
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    warnings.showwarning = _show_warning
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # preemption: the same clean stop as Ctrl-C
    out = _output_of(args)
    existed = out is not None and (out.exists() or out.is_symlink())
    try:
        with output_lock(out):
            return int(args.func(args) or 0)
    except OutputLocked as err:
        print(f"momil: error: {err}", file=sys.stderr)
        return 2
    except MomilError as err:
        _remove_new_output(out, existed)
        print(f"momil: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        _remove_new_output(out, existed)
        where = f" ({err.filename})" if err.filename else ""
        print(
            f"momil: error: {err.strerror}{where} -- nothing was committed; free space or choose a writable "
            "--out, then run the command again (finished checkpoints are reused)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            "momil: interrupted; nothing was committed by the unfinished step (run the same command again to "
            "resume from the last checkpoint)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
