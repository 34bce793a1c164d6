"""Hostile and careless input, table-driven: every case exits 2 with one line that names the file or flag and
what to fix, and leaves the working folder exactly as it was (no output, no temporary, inputs untouched).

Each case runs in-process through the CLI's ``main(argv)`` in a fresh copy of one small prepared workspace
(a 40-compound simulated screen taken through ingest, correct, split and a one-epoch train, plus rendered fields
and a LoadData index). A case may first damage something in its copy (``setup``); the snapshot of the folder is
taken after that, so "nothing written" is checked against the damaged state.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bad_input_cases import (
    CASES_1_TO_8,
    EXTRACT,
    MODEL,
    PREDICT,
    TRAIN,
    Case,
    _dmso_label,
    _empty_benchmark_json,
    _evil_checkpoint,
    _garbage_manifest,
    _missing_wells_file,
    _negative_fold,
    _padded_compound,
    _string_fold,
    _zero_row_load_data,
    corrupt_parquet,
    edit_table,
    evil_file,
)
from momil.cli import main

from conftest import prepared_workspace


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


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder``: size and modification time (folders: None)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        found[rel] = None if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)
    return found


CASES = [
    *CASES_1_TO_8,
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
        "a misspelt table in the config",
        [*TRAIN, "--config", "bad.toml"],
        r"bad.toml: unknown table\(s\) \['trian'\] -- momil reads the tables simulate, ",
        lambda _: Path("bad.toml").write_text("[trian]\nepochs = 3\n"),
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
