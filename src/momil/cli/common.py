"""What the command modules share: the inputs of the model commands, the output checks' input list, printing."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from momil.errors import MomilError
from momil.io.contract import (
    align_labels,
    default_assays,
    read_assays,
    read_associations,
    read_labels,
)
from momil.io.paths import check_output
from momil.io.store import InstanceStore
from momil.prep.splits import read_folds

INPUT_FLAGS = (
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


def inputs_of(args) -> dict:
    """{flag: path} of every input the command was given (what its output must not replace or sit inside)."""
    found = {}
    for name in INPUT_FLAGS:
        value = getattr(args, name, None)
        if value and isinstance(value, (str, Path, list)):  # `momil probe --folds` is a count, not a file
            found["--" + name.replace("_", "-")] = value
    return found


def model_inputs(args):
    """Store, labels aligned to its wells, folds and primary assays for train / cv."""

    check_output(args.out, "dir", inputs_of(args), overwrite=None)
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


def require_validation(pairs, val_wells, rot, folds_path) -> None:
    """A fit selects its epoch on the validation fold: refuse a rotation whose validation fold has no label."""
    if len(pairs.labelled_wells(val_wells)) == 0:
        raise MomilError(
            f"{folds_path}: validation fold {rot.val_fold} (of test fold {rot.test_fold}) has no "
            "labelled well for the model's assays -- make fewer folds (`momil split --n-folds`) or "
            "choose another --test-fold"
        )


def associations_of(args):

    if not getattr(args, "associations", None):
        return None
    return read_associations(args.associations, getattr(args, "string_info", None))


def print_mapping(mapping: dict) -> None:
    width = max((len(str(k)) for k in mapping), default=0)
    for key, value in mapping.items():
        print(f"  {str(key).ljust(width)}  {value}")


def add_model_inputs(p) -> None:
    """The inputs of every model command (train, cv, select, impute, benchmark)."""
    p.add_argument("--store", required=True, help="(corrected) instance store")
    p.add_argument("--labels", required=True, help="labels (long, wide or .mtx)")
    p.add_argument("--row-index", help=".mtx labels: row (compound) index file")
    p.add_argument("--column-index", help=".mtx labels: column (assay) index file")
    p.add_argument("--folds", required=True, help="folds file from `momil split`")
    p.add_argument("--assays", help="assays table (roles); without it every assay is primary")
    p.add_argument("--out", required=True, help="output folder")


def add_association_inputs(p) -> None:
    p.add_argument(
        "--associations",
        help="protein associations: STRING protein.links, a gene_a, gene_b, score table or a from, to, cost network",
    )
    p.add_argument("--string-info", help="STRING protein.info file (with protein.links)")


def model_assays(labelled: list[str], primary: list[str], configuration: str, chosen=None, selected=None) -> list[str]:
    """The assays a model trains on, in label order: ``chosen`` (``--assay``, each must have labels), or the
    primary plus the ``selected`` secondary assays (``--selection``), or the primary only (``mtl-primary``), or
    every labelled assay (``mtl-all``)."""
    if chosen:
        unknown = [a for a in chosen if a not in labelled]
        if unknown:
            raise MomilError(f"--assay {unknown[0]} has no labels -- labelled assays include {labelled[:5]}")
        return list(chosen)
    keep = set(primary)
    if selected is not None:
        keep |= set(selected)
    elif configuration != "mtl-primary":
        return list(labelled)
    return [a for a in labelled if a in keep]


def positive_numbers(text: str) -> list[float]:
    """An argparse type: comma-separated positive numbers ("0.01,0.1,1")."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive numbers, not {text!r}")
    return values


def add_preset_argument(p) -> None:
    from momil.presets import PRESETS

    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named set of settings: 'paper' (the paper's grid, 100 epochs, early stopping) or 'quick' (the "
        "2-core settings, also the defaults); --config and flags override it",
    )
