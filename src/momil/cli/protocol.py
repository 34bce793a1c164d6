"""`momil select`, `impute`, `benchmark`, `report`: the protocol's stages and its tables."""

from __future__ import annotations

from pathlib import Path

from momil.cli.common import (
    add_association_inputs,
    add_model_inputs,
    add_preset_argument,
    associations_of,
    model_assays,
    model_inputs,
)
from momil.config import add_settings_arguments, build_settings
from momil.data.pairs import rotation_wells
from momil.io.paths import check_output
from momil.io.provenance import provenance
from momil.prep.splits import n_folds, test_folds
from momil.protocol.benchmark import BenchmarkSettings, run_benchmark
from momil.protocol.cv import CVSettings
from momil.protocol.executor import ExecutorSettings
from momil.protocol.imputation import ImputeSettings, imputed_counts, self_train
from momil.protocol.selection import SelectSettings, load_selection, select_assays, selection_table_text
from momil.report.html import render_report
from momil.training.checkpoints import save_model
from momil.training.settings import TrainSettings


def cmd_select(args) -> int:

    settings = build_settings(SelectSettings, args, args.config, "select")
    train_settings = build_settings(TrainSettings, args, args.config, "train")
    executor = build_settings(ExecutorSettings, args, args.config, "executor")
    settings.stage_list()  # a bad --stages is refused before the inputs are read
    store, labels, folds, assays, primary = model_inputs(args)
    associations = associations_of(args)
    settings.require_associations(associations)
    out = Path(args.out)
    for k in test_folds(args.rotations, n_folds(folds)):
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
            executor=executor,
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

    settings = build_settings(ImputeSettings, args, args.config, "impute")
    settings.check()
    train_settings = build_settings(TrainSettings, args, args.config, "train")
    store, labels, folds, assays, primary = model_inputs(args)
    rot, wells = rotation_wells(store.wells, folds, args.test_fold)
    train_wells, val_wells = wells["train"], wells["val"]
    selected = None
    if args.selection:
        selected = load_selection(Path(args.selection) / f"rot{args.test_fold}", train_wells, val_wells)
    chosen = model_assays(labels.labelled_assays(), primary, args.configuration, selected=selected)
    out = Path(args.out)
    result = self_train(
        store,
        labels,
        chosen,
        [a for a in chosen if a in set(primary)],
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
            "primary": [a for a in chosen if a in set(primary)],
        },
    )
    print(
        f"{len(result.imputed)} labels imputed over {len(result.rounds) - 1} round(s) for {len(chosen)} "
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

    settings = build_settings(BenchmarkSettings, args, args.config, "benchmark")
    settings.method_list()
    cv = build_settings(CVSettings, args, args.config, "cv", overwrite=False)
    train = build_settings(TrainSettings, args, args.config, "train")
    select = build_settings(SelectSettings, args, args.config, "select")
    impute = build_settings(ImputeSettings, args, args.config, "impute")
    store, labels, folds, assays, primary = model_inputs(args)
    associations = associations_of(args)
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


def cmd_report(args) -> int:

    if args.out:
        check_output(args.out, "file", overwrite=None, suffixes=(".html", ".htm"))  # beside or inside the folder
    path = render_report(args.benchmark, args.out)
    print(f"report written to {path} (one HTML file; open it in a browser, no network needed)")
    return 0


def register(stage) -> None:
    """The protocol commands: select, impute, benchmark, report."""
    p = stage(
        "select", "assay selection: biology -> single-assay performance -> influence, per fold rotation", cmd_select
    )
    add_model_inputs(p)
    add_preset_argument(p)
    add_association_inputs(p)
    p.add_argument("--rotations", default="all", help='test folds whose rotations to select in ("all" or e.g. "0,1")')
    add_settings_arguments(p, SelectSettings)
    add_settings_arguments(p, TrainSettings, skip=("head_dim", "lr", "shared_projector"))
    add_settings_arguments(p, ExecutorSettings)

    p = stage("impute", "conformal label imputation and self-training on one fold rotation", cmd_impute)
    add_model_inputs(p)
    add_preset_argument(p)
    p.add_argument("--test-fold", type=int, default=0, help="held-out fold; validation is the next one")
    p.add_argument("--configuration", choices=["mtl-all", "mtl-primary"], default="mtl-all")
    p.add_argument("--selection", help="a `momil select` folder: train on the primary plus the selected assays")
    add_settings_arguments(p, ImputeSettings)
    add_settings_arguments(p, TrainSettings)

    p = stage(
        "benchmark", "the paper's Table 2: every method through the same protocol, with bootstrap tests", cmd_benchmark
    )
    add_model_inputs(p)
    add_preset_argument(p)
    add_association_inputs(p)
    add_settings_arguments(p, BenchmarkSettings)
    add_settings_arguments(p, CVSettings, skip=("configuration", "select", "selection", "impute", "overwrite"))
    add_settings_arguments(p, TrainSettings, skip=("projector_dim", "head_dim", "lr", "model"))
    add_settings_arguments(p, SelectSettings)
    add_settings_arguments(p, ImputeSettings)

    p = stage("report", "render a `momil benchmark` folder as one HTML page (offline)", cmd_report)
    p.add_argument("benchmark", help="folder written by `momil benchmark`")
    p.add_argument("--out", help="HTML file to write (default: <benchmark>/report.html)")
