"""The `momil` command: each stage from the shell; bad input exits non-zero with one line and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from momil.cli import main
from momil.io.store import InstanceStore

from conftest import resource, tiny_instances, tiny_wells


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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


def prepared_screen(tmp_path, capsys, screen) -> list:
    """ingest -> correct -> split a simulated screen from the shell; the model commands' shared arguments."""
    assert (
        run(
            capsys,
            "ingest",
            "--instances",
            screen / "instances.parquet",
            "--wells",
            screen / "wells.parquet",
            "--out",
            tmp_path / "raw",
            "--quiet",
        )[0]
        == 0
    )
    assert run(capsys, "correct", "--store", tmp_path / "raw", "--out", tmp_path / "store", "--quiet")[0] == 0
    assert (
        run(
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
            "--quiet",
        )[0]
        == 0
    )
    common = [
        "--store",
        tmp_path / "store",
        "--labels",
        screen / "labels.parquet",
        "--folds",
        tmp_path / "folds.parquet",
        "--assays",
        screen / "assays.parquet",
    ]
    return common


def simulated_screen(tmp_path, capsys, *options) -> tuple:
    """A 60-compound simulated screen (6 features, 6 instances per well) prepared from the shell:
    (screen folder, the model commands' shared arguments); ``options`` add to or override `momil simulate`'s."""
    screen = tmp_path / "screen"
    assert (
        run(
            capsys,
            "simulate",
            "--out",
            screen,
            "--n-compounds",
            60,
            "--replicates",
            2,
            "--negcon-per-plate",
            8,
            "--dim",
            6,
            "--instances",
            6,
            *options,
            "--quiet",
        )[0]
        == 0
    )
    return screen, prepared_screen(tmp_path, capsys, screen)


def test_train_cv_predict_from_the_shell(tmp_path, capsys):
    _, common = simulated_screen(
        tmp_path, capsys, "--n-assays", 8, "--n-primary", 3, "--label-density", 0.3, "--primary-density", 0.6
    )
    code, out, err = run(
        capsys,
        "train",
        *common,
        "--out",
        tmp_path / "model",
        "--epochs",
        2,
        "--warmup-epochs",
        1,
        "--projector-dim",
        8,
        "--head-dim",
        4,
        "--quiet",
    )
    assert code == 0, err
    assert "best epoch" in out and (tmp_path / "model" / "model.pt").exists()
    history = pd.read_csv(tmp_path / "model" / "history.csv")
    assert len(history) == 2 and {"train_loss", "val_auc"} <= set(history.columns)

    code, out, err = run(
        capsys,
        "predict",
        "--model",
        tmp_path / "model" / "model.pt",
        "--store",
        tmp_path / "store",
        "--out",
        tmp_path / "pred.parquet",
        "--quiet",
    )
    assert code == 0, err
    compounds = pd.read_parquet(tmp_path / "pred.parquet")
    wells = pd.read_parquet(tmp_path / "pred_wells.parquet")
    assert compounds["probability"].between(0, 1).all()
    assert compounds["Metadata_Compound"].nunique() == 60 and "DMSO" not in set(compounds["Metadata_Compound"])
    assert len(wells) == 120 * 8  # every treatment well x every assay of the model

    code, out, err = run(
        capsys,
        "cv",
        *common,
        "--out",
        tmp_path / "cv",
        "--rotations",
        "0",
        "--projector-dims",
        8,
        "--head-dims",
        4,
        "--lrs",
        "1e-3",
        "--epochs",
        2,
        "--warmup-epochs",
        1,
        "--configuration",
        "mtl-primary",
        "--quiet",
    )
    assert code == 0, err
    assert "ROC-AUC" in out and (tmp_path / "cv" / "metrics.csv").exists()
    metrics = pd.read_csv(tmp_path / "cv" / "metrics.csv")
    assert set(metrics.loc[metrics["primary"], "assay"]) <= {"assay-001", "assay-002", "assay-003"}

    # a model meets a store of another width: refused with the fix
    assert (
        run(
            capsys,
            "simulate",
            "--out",
            tmp_path / "other",
            "--n-compounds",
            4,
            "--replicates",
            1,
            "--negcon-per-plate",
            2,
            "--dim",
            5,
            "--instances",
            2,
            "--n-assays",
            6,
            "--quiet",
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            "ingest",
            "--instances",
            tmp_path / "other" / "instances.parquet",
            "--wells",
            tmp_path / "other" / "wells.parquet",
            "--out",
            tmp_path / "other-store",
            "--quiet",
        )[0]
        == 0
    )
    code, _, err = run(
        capsys,
        "predict",
        "--model",
        tmp_path / "model" / "model.pt",
        "--store",
        tmp_path / "other-store",
        "--out",
        tmp_path / "bad.parquet",
        "--quiet",
    )
    assert code == 2 and "5 features, the model was trained on 6" in err and not (tmp_path / "bad.parquet").exists()


def test_select_impute_and_cv_with_both_from_the_shell(tmp_path, capsys):
    screen, common = simulated_screen(
        tmp_path, capsys, "--n-assays", 10, "--n-primary", 2, "--label-density", 0.4, "--primary-density", 0.7
    )
    fast = ["--epochs", 3, "--warmup-epochs", 1, "--quiet"]

    # the biology stage without associations is refused before anything is written
    code, _, err = run(capsys, "select", *common, "--out", tmp_path / "nosel", *fast)
    assert code == 2 and "--associations" in err and not (tmp_path / "nosel").exists()

    code, out, err = run(
        capsys,
        "select",
        *common,
        "--associations",
        screen / "associations.parquet",
        "--out",
        tmp_path / "sel",
        "--rotations",
        "0,1",
        "--stl-head-dim",
        4,
        "--th-perf",
        0.0,
        "--th-inf",
        0.0,
        *fast,
    )
    assert code == 0, err
    assert "rotation 0" in out and "rotation 1" in out and "momil cv ... --selection" in out
    table = pd.read_csv(tmp_path / "sel" / "rot0" / "selection.csv")
    truth = pd.read_parquet(screen / "truth" / "assays.parquet").set_index("assay")
    kinds = truth.loc[table["assay"], "kind"].to_numpy()
    assert not table.loc[kinds == "unrelated", "selected"].any()  # no association with any primary
    assert table["reason"].str.len().gt(0).all()

    code, out, err = run(
        capsys,
        "impute",
        *common,
        "--out",
        tmp_path / "imp",
        "--test-fold",
        0,
        "--rounds",
        2,
        "--min-correct",
        2,
        "--projector-dim",
        8,
        "--head-dim",
        4,
        "--lr",
        3e-3,
        *fast,
    )
    assert code == 0, err
    assert "labels imputed" in out and (tmp_path / "imp" / "model.pt").exists()
    imputed = pd.read_parquet(tmp_path / "imp" / "imputed_labels.parquet")
    folds = pd.read_parquet(tmp_path / "folds.parquet")
    fold_of = dict(zip(folds["Metadata_Compound"], folds["fold"]))
    assert not {fold_of[c] for c in imputed["Metadata_Compound"]} & {0, 1}  # train folds only
    code, _, err = run(capsys, "impute", *common, "--out", tmp_path / "imp2", "--alpha", 0.5, *fast)
    assert code == 2 and "alpha" in err and not (tmp_path / "imp2").exists()

    # cv reusing the selection folder, with imputation
    code, out, err = run(
        capsys,
        "cv",
        *common,
        "--out",
        tmp_path / "cv",
        "--rotations",
        "0,1",
        "--selection",
        tmp_path / "sel",
        "--impute",
        "--min-correct",
        2,
        "--projector-dims",
        8,
        "--head-dims",
        4,
        "--lrs",
        "3e-3",
        *fast,
    )
    assert code == 0, err
    assert "assay selection + label imputation" in out and "secondary assays selected" in out
    assert (tmp_path / "cv" / "imputed_labels.parquet").exists() and (
        tmp_path / "cv" / "imputation_rounds.csv"
    ).exists()
    # selecting inside cv needs associations for the biology stage; without them nothing is written
    code, _, err = run(capsys, "cv", *common, "--out", tmp_path / "cv2", "--select", *fast)
    assert code == 2 and "associations" in err and not (tmp_path / "cv2").exists()
    code, _, err = run(
        capsys,
        "cv",
        *common,
        "--out",
        tmp_path / "cv3",
        "--select",
        "--configuration",
        "stl",
        "--associations",
        screen / "associations.parquet",
        *fast,
    )
    assert code == 2 and "mtl-all" in err and not (tmp_path / "cv3").exists()


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
