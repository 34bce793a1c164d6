"""`momil pretrain`, `extract`, `probe`: from images to features, and judging features."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from momil.cli.common import inputs_of, positive_numbers
from momil.config import add_settings_arguments, build_settings
from momil.errors import MomilError
from momil.imaging.extract import ExtractSettings, extract
from momil.imaging.fields import FieldSettings
from momil.imaging.pretrain import PretrainSettings, pretrain
from momil.imaging.probe import linear_probe, retrieval_scores
from momil.io.paths import check_output
from momil.io.store import InstanceStore
from momil.io.tables import read_table, require_columns, require_no_missing, write_table_atomic
from momil.simulate.screen import compound_classes

FIELD_ONLY = ("tile", "stride", "drop_background", "foreground_level", "min_foreground")  # tiling, not reading


def cmd_pretrain(args) -> int:

    field = build_settings(FieldSettings, args, args.config, "field")
    settings = build_settings(PretrainSettings, args, args.config, "pretrain")
    check_output(args.out, "dir", inputs_of(args), overwrite=None)
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


def cmd_extract(args) -> int:

    field = build_settings(FieldSettings, args, args.config, "field")
    settings = build_settings(ExtractSettings, args, args.config, "extract")
    report = extract(args.load_data, args.wells, args.out, field, settings, args.root, show_progress=not args.quiet)
    store = report.store
    print(
        f"instance store written to {args.out}: {store.n_wells} wells, {store.n_instances} tiles x {store.dim} "
        f"features ({report.tiles_now} tiles embedded in this run, {report.tiles_per_second} tiles/s)"
    )
    for item in report.skipped[:10]:
        print(
            f"  skipped plate {item['Metadata_Plate']} well {item['Metadata_Well']} site {item['Metadata_Site']}: "
            f"{item['problem']}"
        )
    if len(report.skipped) > 10:
        print(f"  ... {len(report['skipped']) - 10} more skipped fields")
    print(f"next: momil correct --store {args.out} --out <corrected store>")
    return 0


def cmd_probe(args) -> int:

    if bool(args.classes) == bool(args.simulated):
        raise MomilError("give the compound classes as --classes TABLE (with --class-column) or --simulated SCREEN")
    if args.out:
        check_output(args.out, "file", inputs_of(args), overwrite=None, suffixes=(".parquet", ".pq"))
    if args.classes:
        table = read_table(args.classes, dtype_str=["Metadata_Compound"])
        require_columns(table, ["Metadata_Compound", args.class_column], args.classes, "compound classes")
        require_no_missing(table, ["Metadata_Compound", args.class_column], args.classes)
        classes = table.drop_duplicates("Metadata_Compound").set_index("Metadata_Compound")[args.class_column]
    else:
        classes = compound_classes(args.simulated)
    cs = args.c
    stores = [(path, InstanceStore(path)) for path in args.store]  # every store opened before any work
    rows = []
    for path, store in stores:
        retrieval = retrieval_scores(store, classes, args.map_null_size, args.seed) if args.map_null_size else {}
        for c in cs:
            result = linear_probe(store, classes, c=c, folds=args.folds, seed=args.seed)
            rows.append({"store": str(path), "C": c, **result, **retrieval})
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
                "map_null_size": args.map_null_size,
                "seed": args.seed,
            },
        )
        print(f"written to {args.out}")
    return 0


def register(stage) -> None:
    """The imaging commands: pretrain, extract, probe."""
    p = stage("pretrain", "DINO / DINOv2 self-supervised pretraining of the ViT on the screen's fields", cmd_pretrain)
    p.add_argument("--load-data", required=True, help="CellProfiler LoadData index of the fields (Parquet/CSV)")
    p.add_argument("--out", required=True, help="folder for backbone.pt, checkpoint.pt, history.csv")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    p.add_argument("--max-minutes", type=float, help="stop after the epoch in which this time runs out")
    add_settings_arguments(p, FieldSettings, skip=FIELD_ONLY)
    add_settings_arguments(p, PretrainSettings, skip=("device",))
    p.add_argument("--device", default="auto")

    p = stage("extract", "fields of view -> tiles -> backbone embeddings -> instance store", cmd_extract)
    p.add_argument("--load-data", required=True, help="CellProfiler LoadData index of the fields (Parquet/CSV)")
    p.add_argument("--wells", required=True, help="wells table (compound and control type of every well)")
    p.add_argument("--out", required=True, help="instance store to create")
    p.add_argument("--root", help="folder relative PathName_ columns start from (default: the LoadData folder)")
    add_settings_arguments(p, FieldSettings)
    add_settings_arguments(p, ExtractSettings)

    p = stage(
        "probe",
        "how well stores' features separate compound classes (linear probe and copairs mAP on well means)",
        cmd_probe,
    )
    p.add_argument("--store", action="append", required=True, help="instance store (repeat to compare several)")
    p.add_argument("--classes", help="table of Metadata_Compound and a class column (.parquet or .csv)")
    p.add_argument("--class-column", default="class", help="the class column of --classes (default: class)")
    p.add_argument("--simulated", help="a `momil simulate` screen folder: its compounds' target classes")
    p.add_argument(
        "--c",
        default=[0.01, 0.1, 1.0],
        type=positive_numbers,
        help="logistic-regression strengths C, comma-separated (default: 0.01,0.1,1)",
    )
    p.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--map-null-size",
        type=int,
        default=5000,
        help="copairs mAP beside the probe (phenotypic activity against negcon wells, consistency by class): "
        "permutations of the null per p-value (0: no mAP)",
    )
    p.add_argument("--out", help="write the table here too (.parquet)")
