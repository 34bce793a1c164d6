"""The protocol: metrics with undefined assays, compound aggregation, cross-validation without leakage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import momil.protocol.cv as evaluate
from momil.errors import MomilError
from momil.protocol.cv import CVSettings, cross_validate, grid
from momil.protocol.scoring import assay_metrics, compound_predictions, summarise
from momil.training.settings import TrainSettings
from test_train import needle_screen


def test_assay_metrics_mark_one_class_assays_undefined():
    frame = pd.DataFrame(
        {
            "assay": ["a"] * 4 + ["b"] * 3,
            "label": [0, 1, 0, 1, 1, 1, 1],
            "probability": [0.1, 0.9, 0.2, 0.8, 0.3, 0.4, 0.5],
        }
    )
    metrics = assay_metrics(frame).set_index("assay")
    assert metrics.loc["a", "roc_auc"] == 1.0 and metrics.loc["a", "pr_auc"] == 1.0
    assert not metrics.loc["b", "defined"] and math.isnan(metrics.loc["b", "roc_auc"])
    summary = summarise(metrics.reset_index(), {"a", "b"})
    assert summary["mean_roc_auc_primary"] == 1.0  # b is left out, not counted as 0.5
    assert summary["undefined_primary_assays"] == ["b"] and summary["primary_assays_defined"] == 1


def test_compound_prediction_is_mean_of_wells():
    wells = pd.DataFrame({"Metadata_Compound": ["c1", "c1", "c2"], "assay": ["a"] * 3, "probability": [0.2, 0.6, 0.9]})
    out = compound_predictions(wells).set_index("Metadata_Compound")
    assert out.loc["c1", "probability"] == pytest.approx(0.4) and out.loc["c1", "n_wells"] == 2


def test_paper_grid():
    from momil.presets import preset_values

    points = grid(CVSettings(**preset_values("paper", "cv")))
    assert len(points) == 2 * 3 * 3
    assert {p["projector_dim"] for p in points} == {64, 128} and {p["lr"] for p in points} == {1e-4, 5e-5, 1e-5}


def _folds(labels, k=5):
    compounds = list(labels.compounds)
    return pd.DataFrame({"Metadata_Compound": compounds, "fold": [i % k for i in range(len(compounds))]})


def test_cross_validation_never_trains_on_test_compounds(tmp_path, monkeypatch):
    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=6)
    folds = _folds(labels)
    fold_of = dict(zip(folds["Metadata_Compound"], folds["fold"]))
    seen = []
    real_fit = evaluate.fit

    def spying_fit(store_, pairs, train_wells, val_wells, *args, **kwargs):
        seen.append(
            (
                set(store_.wells["Metadata_Compound"].iloc[train_wells]),
                set(store_.wells["Metadata_Compound"].iloc[val_wells]),
            )
        )
        return real_fit(store_, pairs, train_wells, val_wells, *args, **kwargs)

    monkeypatch.setattr(evaluate, "fit", spying_fit)
    result = cross_validate(
        store,
        labels,
        folds,
        ["needle"],
        tmp_path / "cv",
        CVSettings(projector_dims="8", head_dims="8", lrs="1e-2,1e-3"),
        TrainSettings(epochs=3, warmup_epochs=1, batch_wells=8),
        show_progress=False,
    )
    assert len(seen) == 5 * 2
    for i, (train_c, val_c) in enumerate(seen):
        test_fold = i // 2
        assert all(fold_of[c] != test_fold for c in train_c | val_c)
        assert all(fold_of[c] == (test_fold + 1) % 5 for c in val_c)
    predictions = result.compound_predictions
    assert set(predictions["Metadata_Compound"]) == set(labels.compounds)  # every compound tested once
    assert predictions.groupby("Metadata_Compound")["fold"].nunique().max() == 1
    assert (predictions["n_wells"] == 2).all()
    assert result.selections["selected"].sum() == 5
    for name in (
        "metrics.csv",
        "summary.json",
        "well_predictions.parquet",
        "compound_predictions.parquet",
        "selections.csv",
    ):
        assert (tmp_path / "cv" / name).exists()
    assert len(list((tmp_path / "cv" / "models").glob("*.pt"))) == 5
    # a finished cross-validation is not overwritten by accident
    with pytest.raises(MomilError, match="finished cross-validation"):
        cross_validate(store, labels, folds, ["needle"], tmp_path / "cv", show_progress=False)


def test_stl_trains_one_model_per_primary_assay(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=30, per_well=4)
    long = labels.to_long()
    second = long.assign(assay="needle-2", label=1 - long["label"])
    from momil.io.contract import LabelMatrix

    both = LabelMatrix.from_long(pd.concat([long, second], ignore_index=True))
    result = cross_validate(
        store,
        both,
        _folds(both),
        ["needle", "needle-2"],
        tmp_path / "cv",
        CVSettings(configuration="stl", projector_dims="4", head_dims="4", lrs="1e-2", rotations="0,1"),
        TrainSettings(epochs=2, warmup_epochs=1),
        show_progress=False,
    )
    assert len(list((tmp_path / "cv" / "models").glob("*.pt"))) == 2 * 2
    assert set(result.metrics["assay"]) == {"needle", "needle-2"}
    assert result.summary["rotations"] == [0, 1]


def test_resumed_cross_validation_reuses_finished_fits(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=20, per_well=4)
    settings = CVSettings(projector_dims="4", head_dims="4", lrs="1e-2", rotations="0")
    train = TrainSettings(epochs=3, warmup_epochs=1)
    first = cross_validate(
        store, labels, _folds(labels), ["needle"], tmp_path / "cv", settings, train, show_progress=False
    )
    (tmp_path / "cv" / "summary.json").unlink()  # as if killed before the end
    second = cross_validate(
        store, labels, _folds(labels), ["needle"], tmp_path / "cv", settings, train, show_progress=False
    )
    pd.testing.assert_frame_equal(first.compound_predictions, second.compound_predictions)
    assert np.isclose(first.summary["mean_roc_auc_primary"], second.summary["mean_roc_auc_primary"], equal_nan=True)


def test_no_primary_with_labels_refused(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=6, per_well=3)
    with pytest.raises(MomilError, match="no primary assay has labels"):
        cross_validate(store, labels, _folds(labels, 3), ["absent"], tmp_path / "cv", show_progress=False)


def test_select_and_impute_inside_cv_never_see_test_compounds(tmp_path, monkeypatch):
    import momil.protocol.selection as selection
    import momil.training.fit as train_module
    import momil.training.inference as inference
    from momil.protocol.imputation import ImputeSettings
    from momil.protocol.selection import SelectSettings
    from test_selection import ASSOCIATIONS, planted_screen

    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=50, density=0.7)
    folds = _folds(labels)
    fold_of = dict(zip(folds["Metadata_Compound"], folds["fold"]))
    phase = {"test_fold": None}
    leaks = []
    for module in (inference, train_module):  # every bag that selection, imputation and training read
        real = module.bag_batches

        def spy(store_, wells, *args, _real=real, **kwargs):
            compounds = store_.wells["Metadata_Compound"].iloc[np.asarray(wells)]
            leaks.extend(c for c in compounds if fold_of[c] == phase["test_fold"])
            return _real(store_, wells, *args, **kwargs)

        monkeypatch.setattr(module, "bag_batches", spy)
    original = selection.select_assays

    def tracking_select(store_, labels_, assays_, associations_, train_wells, val_wells, out, *args, **kwargs):
        phase["test_fold"] = int(str(out).split("rot")[-1].split("/")[0])
        return original(store_, labels_, assays_, associations_, train_wells, val_wells, out, *args, **kwargs)

    monkeypatch.setattr(selection, "select_assays", tracking_select)

    cv = CVSettings(projector_dims="8", head_dims="8", lrs="3e-3", rotations="0,1", select=True, impute=True)
    train = TrainSettings(epochs=12, warmup_epochs=1, batch_wells=16, dropout=0.0)
    result = cross_validate(
        store,
        labels,
        folds,
        ["P"],
        tmp_path / "cv",
        cv,
        train,
        show_progress=False,
        assays_frame=assays,
        associations=ASSOCIATIONS,
        select=SelectSettings(stl_head_dim=8, stl_lr=1e-2),
        impute=ImputeSettings(min_correct=2),
    )
    assert leaks == []
    # imputed labels sit on training compounds of their rotation only
    imputed = result.imputed
    assert imputed is not None
    for k in (0, 1):
        mine = imputed[imputed["test_fold"] == k]
        assert not {fold_of[c] for c in mine["Metadata_Compound"]} & {k, (k + 1) % 5}
    sel = result.assay_selection
    assert set(sel["test_fold"]) == {0, 1} and "S_unrelated" not in set(sel.loc[sel["selected"], "assay"])
    # the associated assay passes biology in every rotation (whether its single-assay model then clears the
    # performance bar on 50 compounds is chance; tests/test_selection.py checks the stages on a larger screen)
    assert sel.loc[sel["assay"] == "S_related", "bio_kept"].all()
    assert not sel.loc[sel["assay"] == "S_unrelated", "bio_kept"].any()
    assert len(imputed) > 0
    assert result.summary["select"] and result.summary["impute"]
    assert (tmp_path / "cv" / "assay_selection.csv").exists()


def test_paired_bootstrap_by_hand():
    from momil.protocol.scoring import paired_bootstrap

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    good = y + rng.normal(scale=0.3, size=80)  # nearly separates
    noise = rng.normal(size=80)

    def frame(p):
        return pd.DataFrame(
            {"Metadata_Compound": [f"c{i}" for i in range(80)], "assay": "a", "label": y, "probability": p}
        )

    better = paired_bootstrap(frame(good), frame(noise), n_boot=300).set_index("assay")
    assert better.loc["a", "difference"] > 0.3 and better.loc["a", "p_value"] < 0.01
    assert better.loc["a", "p_value"] >= 1 / 301  # (1 + 0) / (1 + draws): never exactly 0
    reverse = paired_bootstrap(frame(noise), frame(good), n_boot=300).set_index("assay")
    assert reverse.loc["a", "p_value"] > 0.99
    same = paired_bootstrap(frame(good), frame(good), n_boot=50).set_index("assay")
    assert same.loc["a", "difference"] == 0 and same.loc["a", "p_value"] == 1.0  # ties count against A
    assert "mean" in better.index and better.loc["mean", "draws"] == 300
    # the same seed gives the same p-values
    again = paired_bootstrap(frame(good), frame(noise), n_boot=300).set_index("assay")
    assert again.loc["a", "p_value"] == better.loc["a", "p_value"]


def test_instance_count_baseline_reads_only_counts(tmp_path):
    from momil.io.contract import LabelMatrix
    from momil.io.store import InstanceStore, StoreWriter
    from momil.protocol.cv import instance_count_predictions

    rng = np.random.default_rng(0)
    active = rng.random(60) < 0.5
    with StoreWriter.create(tmp_path / "s", dim=2) as writer:
        for c in range(60):
            n = int(rng.integers(5, 8)) if active[c] else int(rng.integers(10, 14))  # actives kill cells
            writer.add_bag(
                {
                    "Metadata_Plate": "P",
                    "Metadata_Well": f"W{c:03d}",
                    "Metadata_Batch": "b",
                    "Metadata_Compound": f"c{c}",
                    "Metadata_ControlType": "trt",
                },
                rng.normal(size=(n, 2)),
            )
    store = InstanceStore(tmp_path / "s")
    labels = LabelMatrix.from_long(
        pd.DataFrame({"Metadata_Compound": [f"c{c}" for c in range(60)], "assay": "tox", "label": active.astype(int)})
    )
    frame = instance_count_predictions(store, labels, ["tox"], np.arange(40), np.arange(40, 60))
    from sklearn.metrics import roc_auc_score

    assert len(frame) == 20 and roc_auc_score(active[40:], frame["probability"]) == 1.0


def test_baselines_run_through_cv(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=30, per_well=6)
    folds = _folds(labels)
    train = TrainSettings(epochs=2, warmup_epochs=1, batch_wells=16)
    cv = CVSettings(projector_dims="8", head_dims="4", lrs="1e-3", rotations="0")
    for model in ("mean-mlp", "multilabel-mil", "instance-count"):
        result = cross_validate(
            store,
            labels,
            folds,
            ["needle"],
            tmp_path / model,
            cv,
            TrainSettings(**{**train.__dict__, "model": model}),
            show_progress=False,
        )
        assert len(result.compound_predictions) == 6 and result.compound_predictions["probability"].between(0, 1).all()
    amtl = cross_validate(
        store,
        labels,
        folds,
        ["needle"],
        tmp_path / "amtl",
        cv,
        TrainSettings(**{**train.__dict__, "balancing": "amtl"}),
        show_progress=False,
    )
    assert len(amtl.compound_predictions) == 6 and (tmp_path / "amtl" / "potentials" / "rot0").exists()
    with pytest.raises(MomilError, match="neither --select nor --impute"):
        cross_validate(
            store,
            labels,
            folds,
            ["needle"],
            tmp_path / "x",
            CVSettings(impute=True),
            TrainSettings(model="instance-count"),
            show_progress=False,
        )
