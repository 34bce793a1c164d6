"""`momil simulate`, `ingest`, `correct`, `split`, `validate`, `info`, `cells`, `demo`: the screen's data."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from momil.cli.common import inputs_of, print_mapping
from momil.config import add_settings_arguments, build_settings
from momil.demo import run_demo
from momil.errors import MomilError
from momil.imaging.fields import FieldSettings
from momil.imaging.segment import SegmentSettings, cells_from_images
from momil.io.atomic import atomic_path
from momil.io.cellprofiler import cellprofiler_to_instances
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
    require_listed_fields,
)
from momil.io.ingest import IngestSettings, count_instances, ingest
from momil.io.paths import check_output
from momil.io.provenance import provenance
from momil.io.store import InstanceStore
from momil.io.tables import write_table_atomic
from momil.prep.correct import CorrectSettings, correct
from momil.prep.splits import SplitSettings, compounds_to_split, split
from momil.simulate.screen import SimulateSettings, simulate

FIELD_ONLY = ("tile", "stride", "drop_background", "foreground_level", "min_foreground")  # tiling, not reading


def cmd_simulate(args) -> int:

    settings = build_settings(SimulateSettings, args, args.config, "simulate")
    check_output(args.out, "dir", {"--config": args.config}, settings.overwrite)
    summary = simulate(args.out, settings, show_progress=not args.quiet)
    print(f"simulated screen written to {args.out}")
    print_mapping(summary)
    return 0


def cmd_ingest(args) -> int:

    settings = build_settings(IngestSettings, args, args.config, "ingest")
    started = time.perf_counter()
    store = ingest(args.instances, args.wells, args.out, settings, show_progress=not args.quiet)
    seconds = time.perf_counter() - started
    print(f"instance store written to {args.out}")
    summary = store.summary()
    summary["seconds"] = round(seconds, 2)
    summary["rows_per_second"] = round(store.n_instances / max(seconds, 1e-9))
    print_mapping(summary)
    return 0


def cmd_correct(args) -> int:

    settings = build_settings(CorrectSettings, args, args.config, "correct")
    store = correct(args.store, args.out, settings, show_progress=not args.quiet)
    print(
        f"corrected store written to {args.out} (plate-wise robust z-score against "
        f"{settings.control} wells, {settings.stats}-level statistics)"
    )
    print_mapping(store.summary())
    return 0


def cmd_split(args) -> int:

    settings = build_settings(SplitSettings, args, args.config, "split")
    if not (args.wells or args.labels or args.compounds):
        raise MomilError("momil split needs --wells, --labels or --compounds to know which compounds to split")
    out = check_output(args.out, "file", inputs_of(args), args.overwrite, suffixes=(".parquet", ".pq"))
    check_output(
        out.with_name(out.stem + "_summary.csv"),
        "file",
        inputs_of(args),
        args.overwrite,
        flag="--out (its _summary.csv)",
    )
    structures = read_compounds(args.compounds) if args.compounds else None
    labels = read_labels(args.labels, args.row_index, args.column_index) if args.labels else None
    wells = read_wells(args.wells) if args.wells else None
    if wells is not None and labels is not None:
        labels, _ = align_labels(labels, wells, args.labels, strict=args.strict_labels)
    compounds = compounds_to_split(wells, labels, structures)
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
            require_listed_fields(table, wells, args.load_data)
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

    store = InstanceStore(args.store)
    print_mapping(store.summary())
    if args.history:
        print(json.dumps(store.manifest.get("history", []), indent=2))
    return 0


def cmd_cells(args) -> int:
    if bool(args.cellprofiler) == bool(args.load_data):
        raise MomilError("give either --cellprofiler (CellProfiler output folders) or --load-data (images to segment)")
    check_output(
        args.out,
        "file",
        {**inputs_of(args), "--cellprofiler": args.cellprofiler, "--root": args.root},
        overwrite=None,
        suffixes=(".parquet", ".pq"),
    )
    if args.cellprofiler:
        summary = cellprofiler_to_instances(args.cellprofiler, args.out)
        source = (
            f"{summary['folders']} CellProfiler folder(s) ({summary['dropped_non_finite']} features dropped "
            "for missing values)"
        )
    else:
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


def cmd_demo(args) -> int:

    run_demo(
        Path(args.out),
        n_compounds=args.n_compounds,
        show_progress=not args.quiet,
        rotations=args.rotations,
        epochs=args.epochs,
    )
    return 0


def register(stage) -> None:
    """The screen commands: simulate, ingest, correct, split, validate, info, cells, demo."""
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

    p = stage(
        "cells", "per-cell engineered features (CellProfiler output, or segmenting images) -> instance table", cmd_cells
    )
    p.add_argument("--cellprofiler", nargs="+", help="folder(s) with Image.csv, Cells.csv, Cytoplasm.csv, Nuclei.csv")
    p.add_argument("--load-data", help="or: a LoadData index of fields to segment and measure with scikit-image")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    p.add_argument("--out", required=True, help="instance table to write (.parquet)")
    add_settings_arguments(p, FieldSettings, skip=FIELD_ONLY)
    add_settings_arguments(p, SegmentSettings)

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

    p = stage("info", "describe an instance store", cmd_info)
    p.add_argument("store")
    p.add_argument("--history", action="store_true", help="print the provenance of every write")

    p = stage("demo", "simulate over the real hti-cnn labels and run the pipeline", cmd_demo)
    p.add_argument("--out", default="momil-demo", help="demo folder (replaced if it holds an earlier demo)")
    p.add_argument("--n-compounds", type=int, default=600, help="most-labelled hti-cnn compounds to keep")
    p.add_argument("--rotations", default="all", help='test folds to run ("all" or e.g. "0")')
    p.add_argument("--epochs", type=int, help="training epochs per fit (default 25)")
