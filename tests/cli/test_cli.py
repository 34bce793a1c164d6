"""The `momil` command: each stage from the shell; bad input exits non-zero with one line and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from momil.cli import main
from momil.io.store import InstanceStore
from shell import run

from conftest import resource, tiny_instances, tiny_wells


def test_pipeline_from_the_shell(tmp_path, capsys):
    screen = tmp_path / "screen"
    code, out, _ = run(
        capsys,
        "simulate",
        "--out",
        screen,
        "--n-compounds",
        40,
        "--replicates",
        2,
        "--negcon-per-plate",
        8,
        "--dim",
        6,
        "--instances",
        5,
        "--n-assays",
        10,
        "--quiet",
    )
    assert code == 0 and "wells" in out
    code, out, _ = run(
        capsys,
        "ingest",
        "--instances",
        screen / "instances.parquet",
        "--wells",
        screen / "wells.parquet",
        "--out",
        tmp_path / "store",
        "--dtype",
        "float16",
        "--quiet",
    )
    assert code == 0 and "rows_per_second" in out
    assert InstanceStore(tmp_path / "store").dtype == np.float16
    code, out, _ = run(
        capsys, "correct", "--store", tmp_path / "store", "--out", tmp_path / "corrected", "--stats", "well", "--quiet"
    )
    assert code == 0 and "well-level statistics" in out
    code, out, err = run(
        capsys,
        "split",
        "--wells",
        screen / "wells.parquet",
        "--labels",
        screen / "labels.parquet",
        "--compounds",
        screen / "compounds.parquet",
        "--out",
        tmp_path / "folds.parquet",
        "--n-folds",
        4,
        "--quiet",
    )
    assert code == 0, err
    folds = pd.read_parquet(tmp_path / "folds.parquet")
    assert set(folds["fold"]) == {0, 1, 2, 3} and len(folds) == 40
    assert (tmp_path / "folds_summary.csv").exists()
    from momil.io.tables import read_table_metadata

    record = read_table_metadata(tmp_path / "folds.parquet")
    assert record["stage"] == "split" and record["settings"]["n_folds"] == 4
    code, out, _ = run(capsys, "info", tmp_path / "corrected")
    assert code == 0 and "instances" in out
    code, out, _ = run(
        capsys,
        "validate",
        "--wells",
        screen / "wells.parquet",
        "--instances",
        screen / "instances.parquet",
        "--labels",
        screen / "labels.parquet",
        "--assays",
        screen / "assays.parquet",
        "--associations",
        screen / "associations.parquet",
        "--compounds",
        screen / "compounds.parquet",
    )
    assert code == 0 and "all inputs valid" in out


def test_toml_config(tmp_path, capsys):
    (tmp_path / "run.toml").write_text(
        "[simulate]\nn_compounds = 12\nreplicates = 1\nnegcon_per_plate = 2\ndim = 3\ninstances = 2\nn_assays = 8\n"
    )
    code, out, _ = run(
        capsys, "simulate", "--out", tmp_path / "s", "--config", tmp_path / "run.toml", "--dim", 5, "--quiet"
    )
    assert code == 0
    summary = pd.read_json(tmp_path / "s" / "simulation.json", typ="series")["summary"]
    assert summary["compounds"] == 12 and summary["dim"] == 5  # the flag wins over the file
    (tmp_path / "bad.toml").write_text("[simulate]\nn_compoundz = 1\n")
    code, _, err = run(capsys, "simulate", "--out", tmp_path / "t", "--config", tmp_path / "bad.toml")
    assert code == 2 and "unknown setting(s) ['n_compoundz']" in err and not (tmp_path / "t").exists()
    code, _, err = run(capsys, "simulate", "--out", tmp_path / "u", "--mode", "hti-cnn", "--n-assays", 12)
    assert code == 2 and "--n-assays 12 would be ignored" in err and not (tmp_path / "u").exists()


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("nan", "NaN or infinite"),
        ("unknown_well", "does not list"),
        ("missing_column", "missing required column"),
        ("duplicate_well", "not unique"),
    ],
)
def test_bad_input_exits_nonzero_without_traceback(tmp_path, capsys, breakage, message):
    wells = tiny_wells()
    instances = tiny_instances(wells)
    if breakage == "nan":
        instances.loc[2, "feat0"] = np.nan
    elif breakage == "unknown_well":
        instances.loc[2, "Metadata_Plate"] = "P9"
    elif breakage == "missing_column":
        wells = wells.drop(columns="Metadata_Plate")
    elif breakage == "duplicate_well":
        wells.loc[1, "Metadata_Well"] = "A01"
    wells.to_parquet(tmp_path / "wells.parquet")
    instances.to_parquet(tmp_path / "inst.parquet")
    code, out, err = run(
        capsys,
        "ingest",
        "--instances",
        tmp_path / "inst.parquet",
        "--wells",
        tmp_path / "wells.parquet",
        "--out",
        tmp_path / "store",
        "--quiet",
    )
    assert code == 2
    assert err.startswith("momil: error: ") and message in err and "Traceback" not in err
    assert str(tmp_path) in err  # names the file
    assert not (tmp_path / "store").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst.parquet", "wells.parquet"]


def test_console_script_reports_errors_in_one_line(tmp_path):
    tiny_wells().drop(columns="Metadata_Compound").to_parquet(tmp_path / "wells.parquet")
    result = subprocess.run(
        [sys.executable, "-m", "momil.cli", "validate", "--wells", str(tmp_path / "wells.parquet")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Metadata_Compound" in result.stderr and "Traceback" not in result.stderr


def test_split_real_hti_cnn_matrix(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "split",
        "--labels",
        resource("hti-cnn-labels", "label-matrix.mtx.gz"),
        "--out",
        tmp_path / "folds.parquet",
        "--quiet",
    )
    assert code == 0, err
    folds = pd.read_parquet(tmp_path / "folds.parquet")
    assert len(folds) == 10574
    assert "no usable structure" in err  # InChIKeys only: hashed by skeleton, with a warning


def test_demo(tmp_path, capsys):
    code, out, err = run(
        capsys, "demo", "--out", tmp_path / "demo", "--n-compounds", 120, "--rotations", "0", "--epochs", 4, "--quiet"
    )
    assert code == 0, err
    assert "plate" in out and "fold" in out and "ROC-AUC" in out
    assert (tmp_path / "demo" / "folds.parquet").exists()
    assert InstanceStore(tmp_path / "demo" / "store-corrected").n_wells > 0


def test_every_stage_has_help(capsys):
    from momil.cli import build_parser

    parser = build_parser()
    stages = parser._subparsers._group_actions[0].choices
    assert {
        "simulate",
        "ingest",
        "correct",
        "split",
        "train",
        "cv",
        "select",
        "impute",
        "benchmark",
        "predict",
        "validate",
        "info",
        "demo",
    } <= set(stages)
    for name in stages:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "usage: momil" in capsys.readouterr().out
