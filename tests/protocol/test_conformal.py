"""Conformal calls for new compounds (momil.protocol.conformal, `momil predict --calibrate`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from momil.cli import main
from momil.errors import MomilError
from momil.io.contract import read_labels
from momil.prep.splits import read_folds
from momil.protocol.conformal import conformal_calls, validation_path
from momil.simulate.screen import SimulateSettings

from conftest import simulated_screen


def _scores(rng, n, active_rate=0.3):
    """Exchangeable (label, probability) draws of one assay: actives score higher on average."""
    y = (rng.random(n) < active_rate).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.5 * (2 * y - 1))))
    return y, p


def test_the_error_rate_of_each_class_stays_at_the_significance():
    rng = np.random.default_rng(0)
    significance = 0.1
    errors = {0: [], 1: []}
    for trial in range(40):
        y_cal, p_cal = _scores(rng, 60)
        y_test, p_test = _scores(rng, 200)
        calibration = pd.DataFrame({"Metadata_Compound": "c", "assay": "a", "label": y_cal, "probability": p_cal})
        tested = pd.DataFrame({"Metadata_Compound": [f"t{i}" for i in range(200)], "assay": "a", "probability": p_test})
        calls = conformal_calls(calibration, tested, significance, seed=trial)
        for label, column in ((0, "p_inactive"), (1, "p_active")):
            mine = y_test == label
            errors[label].append(float((calls.loc[mine, column] <= significance).mean()))  # the set misses the truth
    for label in (0, 1):
        mean = float(np.mean(errors[label]))
        assert 0.05 < mean <= significance + 0.02, (label, mean)  # valid, and not trivially empty of errors
    assert set(calls["prediction_set"]) <= {"active", "inactive", "active|inactive", ""}
    one = calls["prediction_set"].isin(["active", "inactive"])
    assert (calls["confident"] == one).all() and (calls.loc[one, "call"] == calls.loc[one, "prediction_set"]).all()


def test_a_class_without_calibration_compounds_is_never_rejected():
    calibration = pd.DataFrame(
        {"Metadata_Compound": ["a", "b"], "assay": "x", "label": [0, 0], "probability": [0.1, 0.2]}
    )
    tested = pd.DataFrame({"Metadata_Compound": ["t", "u"], "assay": ["x", "y"], "probability": [0.9, 0.5]})
    calls = conformal_calls(calibration, tested, 0.2)
    assert (calls["p_active"] == 1.0).all() and calls.loc[1, "p_inactive"] == 1.0  # assay y: no calibration at all
    assert (
        calls.loc[0, "p_inactive"] < 0.5 and calls.loc[0, "n_cal_inactive"] == 2 and calls.loc[0, "n_cal_active"] == 0
    )
    again = conformal_calls(calibration, tested, 0.2)
    pd.testing.assert_frame_equal(calls, again)  # smoothed p-values with a fixed seed: the same calls
    with pytest.raises(MomilError, match="--significance"):
        conformal_calls(calibration, tested, 1.5)


def test_predict_calibrate_on_a_simulated_screen(tmp_path, capsys):
    settings = SimulateSettings(
        n_compounds=150, replicates=2, negcon_per_plate=8, dim=8, instances=8, n_assays=6, n_primary=3, n_targets=3,
        label_density=0.4, primary_density=0.8, responder_fraction=0.5, effect_size=2.5,
    )  # fmt: skip
    root = tmp_path
    _, _, folds = simulated_screen(root, settings, n_folds=3)
    folds.to_parquet(root / "folds.parquet", index=False)
    inputs = ["--store", "store", "--labels", "screen/labels.parquet", "--folds", "folds.parquet"]
    inputs += ["--assays", "screen/assays.parquet"]
    argv = ["train", *inputs, "--out", "m", "--epochs", 6, "--projector-dim", 8, "--head-dim", 8, "--quiet"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main([str(a) for a in argv]) == 0
        saved = pd.read_parquet(validation_path("m/model.pt"))
        folds = read_folds("folds.parquet").set_index("Metadata_Compound")["fold"]
        # the calibration compounds are the validation fold's (test fold 0 -> validation fold 1), with known labels
        assert set(folds.reindex(saved["Metadata_Compound"])) == {1}
        labels = read_labels("screen/labels.parquet").to_long()
        merged = saved.merge(labels, on=["Metadata_Compound", "assay"], suffixes=("", "_known"))
        assert len(merged) == len(saved) > 0 and (merged["label"] == merged["label_known"]).all()
        code = main(["predict", "--model", "m/model.pt", "--store", "store", "--out", "p.parquet", "--calibrate"])
        assert code == 0
        out, err = capsys.readouterr()
        assert "conformal calls at significance 0.1" in out
        # the whole store was predicted, the calibration compounds with it: said, on stderr
        assert "calibration (validation) compounds" in err and "not valid" in err
        calls = pd.read_parquet("p.parquet")
        assert {"p_active", "p_inactive", "prediction_set", "confident", "call"} <= set(calls.columns)
        assert calls[["p_active", "p_inactive"]].stack().between(0, 1).all()
        # on the held-out test fold's known labels, each class's error rate stays at the significance (pooled over
        # the assays, within three binomial standard errors)
        tested = calls.merge(labels, on=["Metadata_Compound", "assay"])
        tested = tested[(folds.reindex(tested["Metadata_Compound"]) == 0).to_numpy()]
        for label, column in ((0, "p_inactive"), (1, "p_active")):
            mine = tested[tested["label"] == label]
            n = len(mine)
            assert n >= 30, n
            error = float((mine[column] <= 0.1).mean())
            assert error <= 0.1 + 3 * np.sqrt(0.1 * 0.9 / n), (label, error, n)
        # no validation wells beside the model: --calibrate names the file and what to do
        validation_path("m/model.pt").unlink()
        code = main(["predict", "--model", "m/model.pt", "--store", "store", "--out", "q.parquet", "--calibrate"])
        err = capsys.readouterr().err
        assert code == 2 and "model_validation.parquet" in err and "train the model again" in err
        assert not Path("q.parquet").exists()
    finally:
        os.chdir(cwd)
