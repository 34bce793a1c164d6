"""Hostile and careless input, table-driven: every case exits 2 with one line that names the file or flag and
what to fix, and leaves the working folder exactly as it was (no output, no temporary, inputs untouched).

Each case runs in-process through the CLI's ``main(argv)`` in a fresh copy of one small prepared workspace
(a 40-compound simulated screen taken through ingest, correct, split and a one-epoch train, plus rendered fields
and a LoadData index). A case may first damage something in its copy (``setup``); the snapshot of the folder is
taken after that, so "nothing written" is checked against the damaged state.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from momil.cli import main

from conftest import WORKSPACE_MODEL, prepared_workspace


# ---------------------------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = prepared_workspace(
        tmp_path_factory.mktemp("bad-input-base"),
        ["train", *MODEL, "--out", "model", "--epochs", 1, "--projector-dim", 8, "--head-dim", 4],
    )
    instances = pd.read_parquet(root / "screen" / "instances.parquet")
    (root / "parts").mkdir()
    half = len(instances) // 2
    instances.iloc[:half].to_parquet(root / "parts" / "part-0.parquet", index=False)
    instances.iloc[half:].to_parquet(root / "parts" / "part-1.parquet", index=False)
    bench = root / "bench"
    bench.mkdir()
    pd.DataFrame({"method": ["momil-all"], "label": ["MoMIL"], "mean": [0.5]}).to_csv(bench / "table2.csv", index=False)
    (bench / "table2.md").write_text("| method | mean |\n|---|---|\n| MoMIL | 0.5 |\n")
    return root


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


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder``: size and modification time (folders: None)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = None if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)
    return found


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


CASES = [
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
    # 9. flags that gave tracebacks
    Case("batch wells 0", [*TRAIN, "--batch-wells", 0], r"--batch-wells must be >= 1"),
    Case("projector dim 0", [*TRAIN, "--projector-dim", 0], r"--projector-dim must be >= 1"),
    Case("head dim 0", [*TRAIN, "--head-dim", 0], r"--head-dim must be >= 1"),
    Case("negative lr", [*TRAIN, "--lr=-1"], r"--lr must be in \(0, 1\]"),
    Case("negative lrs", ["cv", *MODEL, "--out", "cvx", "--lrs=-1"], r"--lrs must be comma-separated numbers"),
    Case("negative weight decay", [*TRAIN, "--weight-decay=-1"], r"--weight-decay must be >= 0"),
    Case("dropout 2", [*TRAIN, "--dropout", 2], r"--dropout must be in \[0, 1\)"),
    Case("empty lrs", ["cv", *MODEL, "--out", "cvx", "--lrs", ""], r"--lrs must be comma-separated"),
    Case("negative n-boot", ["benchmark", *MODEL, "--out", "b", "--n-boot=-5"], r"--n-boot must be >= 100"),
    Case(
        "split n-bits 0",
        ["split", "--wells", "screen/wells.parquet", "--out", "f.parquet", "--n-bits", 0],
        r"--n-bits must be >= 64",
    ),
    Case(
        "split block rows 0",
        ["split", "--wells", "screen/wells.parquet", "--out", "f.parquet", "--block-rows", 0],
        r"--block-rows must be >= 1",
    ),
    Case("predict an unknown assay", [*PREDICT, "--assay", "nosuch"], r"--assay nosuch: the model has no such assay"),
    Case("predict on an unknown device", [*PREDICT, "--device", "foo"], r"--device must be auto, cpu, cuda"),
    Case("train with lr 1e6", [*TRAIN, "--lr", 1e6], r"--lr must be in \(0, 1\]"),
    # 10. damaged files
    Case(
        "ingest a Parquet file with a corrupt data page",
        ["ingest", "--instances", "corrupt.parquet", "--wells", "screen/wells.parquet", "--out", "sc"],
        r"corrupt.parquet: cannot read",
        corrupt_parquet,
    ),
    Case(
        "a string fold column",
        ["train", *MODEL[:4], "--folds", "folds-str.parquet", "--out", "m2"],
        r"column fold must hold whole numbers.*'a'",
        _string_fold,
        ["folds-str.parquet"],
    ),
    Case(
        "a garbage store manifest",
        ["info", "garbled"],
        r"manifest.json: the store manifest is not valid JSON",
        _garbage_manifest,
    ),
    Case(
        "a store without its wells file",
        ["train", "--store", "nowells", *MODEL[2:], "--out", "m2"],
        r"store's well index not found",
        _missing_wells_file,
    ),
    Case(
        "an empty benchmark.json",
        ["report", "bench", "--out", "r.html"],
        r"benchmark.json: the benchmark record "
        r"is empty",
        _empty_benchmark_json,
    ),
    # 11. outputs that are existing files or folders
    Case(
        "train --out an existing file",
        ["train", *MODEL, "--out", "screen/labels.parquet", "--epochs", 1],
        r"is an existing file, not a folder|is also the input",
    ),
    Case(
        "train --out a file",
        ["train", *MODEL, "--out", "folds_summary.csv", "--epochs", 1],
        r"--out folds_summary.csv is an existing file, not a folder",
    ),
    Case("predict --out a folder", [*PREDICT[:-1], "bench"], r"--out bench is an existing folder"),
    Case("report --out a folder", ["report", "bench", "--out", "model"], r"--out model is an existing folder"),
    # 12. extract with a 0-row LoadData
    Case(
        "extract with no fields",
        [*EXTRACT[:2], "render/load_data_empty.parquet", *EXTRACT[3:]],
        r"the LoadData table has no rows",
        _zero_row_load_data,
    ),
    # 13. split --out x.csv
    Case(
        "split to a .csv name",
        ["split", "--wells", "screen/wells.parquet", "--out", "x.csv"],
        r"--out x.csv: this output is written as .parquet",
    ),
    # 14. unsafe loading
    Case(
        "predict with a crafted model file",
        [*PREDICT[:2], "evil.pt", *PREDICT[3:]],
        r"evil.pt: refused to load this model file: it holds the Python object argparse.Namespace",
        lambda _: evil_file("evil.pt"),
    ),
    Case(
        "extract with crafted backbone weights",
        [*EXTRACT, "--weights", "evil.pt"],
        r"evil.pt: refused to load this backbone weights file",
        lambda _: evil_file("evil.pt"),
    ),
    Case(
        "pretrain resuming a crafted checkpoint",
        [
            "pretrain",
            "--load-data",
            "render/load_data.parquet",
            "--out",
            "fm",
            "--backbone",
            "vit-tiny",
            "--size",
            64,
            "--global-size",
            32,
            "--local-size",
            16,
            "--local-crops",
            1,
            "--out-dim",
            32,
            "--epochs",
            1,
            "--batch-fields",
            4,
            "--device",
            "cpu",
        ],
        r"checkpoint.pt: refused to load this pretraining checkpoint",
        lambda _: (Path("fm").mkdir(), evil_file("fm/checkpoint.pt")),
    ),
    Case(
        "train resuming a crafted checkpoint",
        ["train", *MODEL, "--out", "m3", "--epochs", 1],
        r"last.pt: refused to load this training checkpoint",
        _evil_checkpoint,
    ),
    # 16. smaller ones
    Case(
        "predict over an existing output",
        PREDICT,
        r"pred.parquet already exists.*--overwrite",
        lambda _: Path("pred.parquet").write_bytes(b"x"),
    ),
    Case(
        "a negative fold number",
        ["train", *MODEL[:4], "--folds", "folds-neg.parquet", "--out", "m2"],
        r"column fold must hold whole numbers.*-1",
        _negative_fold,
    ),
    Case(
        "a compound id with a trailing space",
        ["validate", "--wells", "wells-padded.parquet"],
        r"column Metadata_Compound has values with leading or trailing whitespace at row \d+",
        _padded_compound,
    ),
    Case(
        "ingest memory 0",
        [
            "ingest",
            "--instances",
            "screen/instances.parquet",
            "--wells",
            "screen/wells.parquet",
            "--out",
            "s0",
            "--memory-mb",
            0,
        ],
        r"--memory-mb must be >= 1",
    ),
    Case("selection th-bio 5", ["select", *MODEL, "--out", "sel", "--th-bio", 5], r"--th-bio must be in \[0, 1\]"),
    Case("benchmark n-boot 0", ["benchmark", *MODEL, "--out", "b", "--n-boot", 0], r"--n-boot must be >= 100"),
    Case(
        "a label for DMSO",
        ["validate", "--wells", "screen/wells.parquet", "--labels", "labels-dmso.parquet"],
        r"labels-dmso.parquet: 1 labelled compound\(s\) are only in control wells \(e.g. DMSO\)",
        _dmso_label,
    ),
    # already handled before: missing files and columns, NaN features, bad settings files, unknown choices
    Case(
        "ingest a missing file",
        ["ingest", "--instances", "nosuch.parquet", "--wells", "screen/wells.parquet", "--out", "s1"],
        r"nosuch.parquet: file not found",
    ),
    Case(
        "a wells table without Metadata_Plate",
        ["validate", "--wells", "wells-noplate.parquet"],
        r"missing required column\(s\) Metadata_Plate",
        lambda _: edit_table(
            "screen/wells.parquet", lambda f: f.drop(columns="Metadata_Plate"), "wells-noplate.parquet"
        ),
    ),
    Case(
        "NaN features",
        ["ingest", "--instances", "nan.parquet", "--wells", "screen/wells.parquet", "--out", "s1"],
        r"have NaN or infinite features",
        lambda _: edit_table("screen/instances.parquet", lambda f: f.assign(**{f.columns[-1]: np.nan}), "nan.parquet"),
    ),
    Case("an unknown store", ["train", "--store", "nosuch", *MODEL[2:], "--out", "m2"], r"not an instance store"),
    Case(
        "an unknown setting in the config",
        [*TRAIN, "--config", "bad.toml"],
        r"unknown setting\(s\) \['epochz'\]",
        lambda _: Path("bad.toml").write_text("[train]\nepochz = 3\n"),
    ),
    Case(
        "an unknown dtype",
        [
            "ingest",
            "--instances",
            "screen/instances.parquet",
            "--wells",
            "screen/wells.parquet",
            "--out",
            "s1",
            "--dtype",
            "float64",
        ],
        r"--dtype must be one of float16, float32",
    ),
    Case("an unknown head", [*TRAIN, "--head", "transformer"], r"--head must be one of dsmil, abmil, mean"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_and_writes_nothing(case: Case, base: Path, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    shutil.copytree(base, work)
    monkeypatch.chdir(work)
    if case.setup is not None:
        case.setup(work)
    argv = [str(a) for a in case.argv]
    argv = [Path(a[1:]).read_text() if a.startswith("@") else a for a in argv]  # @file: a value made by setup
    before = snapshot(work)
    code = main(argv + ["--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("momil: error: ")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(case.expect, lines[0]), lines[0]
    for name in case.names:
        assert name in lines[0]
    assert snapshot(work) == before  # nothing written, nothing removed, inputs untouched


def test_the_suite_covers_the_issue(base):
    """A guard against the table shrinking: the classes of the reliability issue each have cases."""
    assert len(CASES) >= 60


def test_validate_warns_about_a_plate_without_negcon(base, tmp_path, monkeypatch, capsys):
    work = tmp_path / "w"
    shutil.copytree(base, work)
    monkeypatch.chdir(work)
    wells = pd.read_parquet("screen/wells.parquet")
    plate = wells["Metadata_Plate"].iloc[0]
    wells.loc[
        (wells["Metadata_Plate"] == plate) & (wells["Metadata_ControlType"] == "negcon"), "Metadata_ControlType"
    ] = "trt"
    wells.to_parquet("wells-nonegcon.parquet", index=False)
    assert main(["validate", "--wells", "wells-nonegcon.parquet"]) == 0
    captured = capsys.readouterr()
    assert "all inputs valid" in captured.out
    assert f"have no negcon wells ({plate})" in captured.err and "--fallback all" in captured.err
