"""Model commands from the shell: train, cv, predict, select and impute on a small simulated screen."""

from __future__ import annotations

import pandas as pd

from shell import run, shell_screen


def test_train_cv_predict_from_the_shell(tmp_path, capsys):
    _, common = shell_screen(
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

    for linear in ("mean-lr", "instance-count"):  # the logistic regressions: no network, the same report
        code, out, err = run(capsys, "cv", *common, "--out", tmp_path / linear, "--model", linear, "--quiet")
        assert code == 0, err
        assert "ROC-AUC" in out and len(pd.read_csv(tmp_path / linear / "metrics.csv")) > 0

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
    screen, common = shell_screen(
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
