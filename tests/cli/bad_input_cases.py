"""The first half of the bad-input table of ``test_bad_input.py`` (cases 1-8: hangs, outputs over inputs,
overflow, NaN stores, untrained models, empty folds, validation) with the helpers that damage a workspace copy.
A helper module (not collected): the test module holds the workspace, the runner and cases 9-16."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from conftest import WORKSPACE_MODEL

MODEL = WORKSPACE_MODEL
TRAIN = ["train", *MODEL, "--out", "m2", "--epochs", 1]
EXTRACT = [
    "extract",
    "--load-data",
    "render/load_data.parquet",
    "--wells",
    "render/wells.parquet",
    "--out",
    "x",
    "--backbone",
    "vit-tiny",
    "--size",
    64,
    "--tile",
    32,
    "--stride",
    32,
    "--device",
    "cpu",
]
PREDICT = ["predict", "--model", "model/model.pt", "--store", "corr", "--out", "pred.parquet"]


# ------------------------------------------------------------------------------------------ damaging helpers
def write_nan_store(src: str, dst: str) -> None:
    shutil.copytree(src, dst)
    manifest = json.loads(Path(dst, "manifest.json").read_text())
    dtype = np.float16 if manifest["dtype"] == "float16" else np.float32
    features = np.memmap(
        Path(dst, "features.bin"), dtype=dtype, mode="r+", shape=(manifest["n_instances"], manifest["dim"])
    )
    features[:] = np.nan
    features.flush()


def edit_table(path: str, edit: Callable[[pd.DataFrame], pd.DataFrame], out: str | None = None) -> None:
    frame = pd.read_parquet(path)
    edit(frame).to_parquet(out or path, index=False)


def evil_file(path: str) -> None:
    import argparse

    torch.save({"format": "momil-model", "payload": argparse.Namespace(run="code")}, path)


def empty_validation(_: Path) -> None:
    """Folds where the validation fold of test fold 0 holds none of the compounds labelled in the first assay."""
    labels = pd.read_parquet("screen/labels.parquet")
    assay = labels["assay"].iloc[0]
    labelled = set(labels.loc[labels["assay"] == assay, "Metadata_Compound"])
    folds = pd.read_parquet("folds.parquet")
    moved = folds["Metadata_Compound"].isin(labelled) & (folds["fold"] == 1)
    folds.loc[moved, "fold"] = 2
    folds.to_parquet("folds-noval.parquet", index=False)
    Path("assay.txt").write_text(str(assay))


def corrupt_parquet(_: Path) -> None:
    instances = pd.read_parquet("screen/instances.parquet")
    instances.to_parquet("corrupt.parquet", index=False, row_group_size=50)
    data = bytearray(Path("corrupt.parquet").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(400)
    Path("corrupt.parquet").write_bytes(bytes(data))


@dataclass
class Case:
    name: str
    argv: list
    expect: str  # regex the error line must match
    setup: Callable[[Path], None] | None = None
    names: list = field(default_factory=list)  # strings the message must contain (the file or flag)


def _big_values(_: Path) -> None:
    frame = pd.read_parquet("screen/instances.parquet")
    frame.loc[3, frame.columns[-1]] = 1e6
    frame.to_parquet("big.parquet", index=False)


def _wells_with_extra_well(_: Path) -> None:
    def add(frame):
        extra = frame.iloc[[0]].copy()
        extra["Metadata_Well"] = "P24"
        return pd.concat([frame, extra], ignore_index=True)

    edit_table("screen/wells.parquet", add, "wells-extra.parquet")


def _wells_missing_one(_: Path) -> None:
    edit_table("screen/wells.parquet", lambda f: f[f["Metadata_ControlType"] == "trt"].iloc[1:], "wells-less.parquet")


def _zero_row_instances(_: Path) -> None:
    edit_table("screen/instances.parquet", lambda f: f.iloc[:0], "empty.parquet")


def _load_data_missing_file(_: Path) -> None:
    def drop(frame):
        column = next(c for c in frame.columns if c.startswith("FileName_"))
        frame.loc[0, column] = "nosuch.tiff"
        return frame

    edit_table("render/load_data.parquet", drop, "render/load_data_missing.parquet")


def _well_zz99(_: Path) -> None:
    def rename(frame):
        frame.loc[0, "Metadata_Well"] = "ZZ99"
        return frame

    edit_table("screen/wells.parquet", rename, "wells-zz.parquet")


def _padded_compound(_: Path) -> None:
    def pad(frame):
        row = int(np.flatnonzero(frame["Metadata_ControlType"] == "trt")[0])
        frame.loc[row, "Metadata_Compound"] = frame.loc[row, "Metadata_Compound"] + " "
        return frame

    edit_table("screen/wells.parquet", pad, "wells-padded.parquet")


def _dmso_label(_: Path) -> None:
    def add(frame):
        extra = frame.iloc[[0]].copy()
        extra["Metadata_Compound"] = "DMSO"
        return pd.concat([frame, extra], ignore_index=True)

    edit_table("screen/labels.parquet", add, "labels-dmso.parquet")


def _string_fold(_: Path) -> None:
    def garble(frame):
        frame["fold"] = frame["fold"].astype(str)
        frame.loc[0, "fold"] = "a"
        return frame

    edit_table("folds.parquet", garble, "folds-str.parquet")


def _negative_fold(_: Path) -> None:
    def garble(frame):
        frame.loc[0, "fold"] = -1
        return frame

    edit_table("folds.parquet", garble, "folds-neg.parquet")


def _garbage_manifest(_: Path) -> None:
    shutil.copytree("corr", "garbled")
    Path("garbled/manifest.json").write_text("{not json")


def _missing_wells_file(_: Path) -> None:
    shutil.copytree("corr", "nowells")
    manifest = json.loads(Path("nowells/manifest.json").read_text())
    Path("nowells", manifest["wells_file"]).unlink()


def _empty_benchmark_json(_: Path) -> None:
    Path("bench/benchmark.json").write_text("")


def _zero_row_load_data(_: Path) -> None:
    edit_table("render/load_data.parquet", lambda f: f.iloc[:0], "render/load_data_empty.parquet")


def _evil_checkpoint(_: Path) -> None:
    Path("m3/checkpoint").mkdir(parents=True)
    evil_file("m3/checkpoint/last.pt")


CASES_1_TO_8 = [
    # 1. extract used to hang when a reader thread raised
    Case("extract tile larger than the field", [*EXTRACT, "--tile", 128], r"--tile 128 is larger"),
    Case("extract negative size", [*EXTRACT, "--size", -5], r"--size must be >= 0"),
    # 2. an output equal to an input deleted the input
    Case(
        "ingest into its own parts folder",
        ["ingest", "--instances", "parts", "--wells", "screen/wells.parquet", "--out", "parts", "--overwrite"],
        r"--out parts is also the input",
    ),
    Case(
        "ingest over the folder holding its input",
        [
            "ingest",
            "--instances",
            "screen/instances.parquet",
            "--wells",
            "screen/wells.parquet",
            "--out",
            "screen",
            "--overwrite",
        ],
        r"holds the input --instances",
    ),
    Case(
        "correct onto its own store",
        ["correct", "--store", "store", "--out", "store", "--overwrite"],
        r"--out store is also the input --store",
    ),
    Case(
        "correct into its own store",
        ["correct", "--store", "store", "--out", "store/inner"],
        r"lies inside the input folder --store",
    ),
    Case("train into the store", ["train", *MODEL, "--out", "corr/model", "--epochs", 1], r"inside the input folder"),
    # 3. float16 overflow
    Case(
        "float16 overflow",
        [
            "ingest",
            "--instances",
            "big.parquet",
            "--wells",
            "screen/wells.parquet",
            "--out",
            "s16",
            "--dtype",
            "float16",
        ],
        r"exceed float16's range.*--dtype float32",
        _big_values,
        ["big.parquet"],
    ),
    # 4. eps
    Case("correct eps 0", ["correct", "--store", "store", "--out", "c0", "--eps", 0], r"--eps must be > 0"),
    Case("correct eps negative", ["correct", "--store", "store", "--out", "c0", "--eps", -1], r"--eps must be > 0"),
    # 5. NaN in a store
    Case(
        "predict on a NaN store",
        [*PREDICT[:4], "nanstore", "--out", "pred.parquet"],
        r"NaN or infinite features",
        lambda _: write_nan_store("corr", "nanstore"),
        ["nanstore"],
    ),
    Case(
        "train on a NaN store",
        ["train", "--store", "nanstore", *MODEL[2:], "--out", "m2", "--epochs", 1],
        r"NaN or infinite features",
        lambda _: write_nan_store("corr", "nanstore"),
    ),
    Case(
        "cv on a NaN store",
        [
            "cv",
            "--store",
            "nanstore",
            *MODEL[2:],
            "--out",
            "cvx",
            "--epochs",
            1,
            "--projector-dims",
            4,
            "--head-dims",
            4,
            "--lrs",
            "1e-3",
            "--rotations",
            "0",
        ],
        r"NaN or infinite features",
        lambda _: write_nan_store("corr", "nanstore"),
    ),
    Case(
        "select on a NaN store",
        [
            "select",
            "--store",
            "nanstore",
            *MODEL[2:],
            "--out",
            "selx",
            "--stages",
            "performance,influence",
            "--epochs",
            1,
            "--rotations",
            "0",
        ],
        r"NaN or infinite features",
        lambda _: write_nan_store("corr", "nanstore"),
    ),
    Case(
        "impute on a NaN store",
        ["impute", "--store", "nanstore", *MODEL[2:], "--out", "impx", "--epochs", 1],
        r"NaN or infinite features",
        lambda _: write_nan_store("corr", "nanstore"),
    ),
    Case(
        "benchmark on a NaN store",
        [
            "benchmark",
            "--store",
            "nanstore",
            *MODEL[2:],
            "--out",
            "bx",
            "--methods",
            "mean-mlp",
            "--epochs",
            1,
            "--projector-dims",
            4,
            "--head-dims",
            4,
            "--lrs",
            "1e-3",
            "--rotations",
            "0",
            "--probes",
            0,
        ],
        r"NaN or infinite features",
        lambda _: write_nan_store("corr", "nanstore"),
    ),
    # 6. untrained models
    Case("train epochs 0", [*TRAIN[:-1], 0], r"--epochs must be >= 1"),
    Case("train epochs -1", [*TRAIN[:-1], -1], r"--epochs must be >= 1"),
    Case("train patience 0", [*TRAIN, "--patience", 0], r"--patience must be >= 1"),
    Case("cv epochs 0", ["cv", *MODEL, "--out", "cvx", "--epochs", 0], r"--epochs must be >= 1"),
    Case("impute epochs 0", ["impute", *MODEL, "--out", "imp", "--epochs", 0], r"--epochs must be >= 1"),
    Case("train negative batch", [*TRAIN, "--batch-wells", -5], r"--batch-wells must be >= 1"),
    # 7. empty validation fold
    Case(
        "split into more folds than clusters",
        [
            "split",
            "--wells",
            "screen/wells.parquet",
            "--labels",
            "screen/labels.parquet",
            "--out",
            "f.parquet",
            "--n-folds",
            1000,
        ],
        r"--n-folds 1000: fold \d+ would hold no compound",
    ),
    Case(
        "train with an empty validation fold",
        ["train", *MODEL[:4], "--folds", "folds-noval.parquet", "--out", "m2", "--epochs", 1, "--assay", "@assay.txt"],
        r"validation fold 1 .*has no labelled well",
        empty_validation,
        ["folds-noval.parquet"],
    ),
    # 8. validate runs the stages' checks
    Case(
        "validate an empty bag",
        ["validate", "--wells", "wells-extra.parquet", "--instances", "screen/instances.parquet"],
        r"have no instance.*--drop-empty-wells",
        _wells_with_extra_well,
    ),
    Case(
        "validate instances of unlisted wells",
        ["validate", "--wells", "wells-less.parquet", "--instances", "screen/instances.parquet"],
        r"does not list",
        _wells_missing_one,
    ),
    Case(
        "validate a 0-row instance table",
        ["validate", "--instances", "empty.parquet"],
        r"holds no instances",
        _zero_row_instances,
        ["empty.parquet"],
    ),
    Case(
        "validate a LoadData row naming a missing file",
        ["validate", "--load-data", "render/load_data_missing.parquet"],
        r"image file\(s\) are missing.*nosuch.tiff",
        _load_data_missing_file,
    ),
    Case(
        "validate the well ZZ99",
        ["validate", "--wells", "wells-zz.parquet"],
        r"not well positions \('ZZ99'\)",
        _well_zz99,
        ["wells-zz.parquet"],
    ),
]
