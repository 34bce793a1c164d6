"""The linear floor (FM -> Mean -> LR): compound-mean profiles, standardised, C by inner CV on training compounds
only; and `momil cv --model mean-lr` through the protocol."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import momil.model.linear as linear
from momil.data.pairs import rotation_wells
from momil.io.store import InstanceStore
from momil.protocol.cv import CVSettings, cross_validate
from momil.simulate.screen import SimulateSettings
from momil.training.settings import TrainSettings

from conftest import simulated_screen


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear")
    settings = SimulateSettings(
        n_compounds=80,
        replicates=2,
        negcon_per_plate=8,
        dim=8,
        instances=12,
        n_assays=6,
        n_primary=2,
        n_targets=3,
        responder_fraction=0.6,
        effect_size=2.5,
        plate_effect=0.5,
        batch_effect=0.5,
        label_density=0.5,
        primary_density=0.8,
        hit_rate=0.4,
    )
    store, labels, folds = simulated_screen(root, settings, n_folds=3)
    return root, store, labels, folds


def fitted(monkeypatch) -> list:
    """Record every (x, y, model) that mean_lr_predictions fits."""
    seen = []
    real = linear.fit_assay

    def spy(x, y, seed=0):
        model = real(x, y, seed)
        seen.append((x.copy(), y.copy(), model))
        return model

    monkeypatch.setattr(linear, "fit_assay", spy)
    return seen


def test_only_training_compounds_reach_the_scaling_and_the_choice_of_c(screen, monkeypatch):
    root, store, labels, folds = screen
    _, wells = rotation_wells(store.wells, folds, 0)
    assays = list(labels.assays[:2])
    seen = fitted(monkeypatch)
    linear.mean_lr_predictions(store, labels, assays, wells["train"], wells["test"])
    first = [(x, m) for x, _, m in seen]
    # the same fit when every validation and test well is replaced by noise: nothing of them reached it
    noisy = root / "noisy"
    if not noisy.exists():
        import shutil

        shutil.copytree(root / "store", noisy)
        manifest = json.loads((noisy / "manifest.json").read_text())
        features = np.memmap(
            noisy / "features.bin", dtype=np.float32, mode="r+", shape=(manifest["n_instances"], manifest["dim"])
        )
        for well in np.concatenate([wells["val"], wells["test"]]):
            start, count = int(store.offsets[well]), int(store.counts[well])
            features[start : start + count] = np.random.default_rng(int(well)).normal(size=(count, manifest["dim"]))
        features.flush()
    seen.clear()
    linear.mean_lr_predictions(InstanceStore(noisy), labels, assays, wells["train"], wells["test"])
    assert len(seen) == len(first) > 0
    for (x_a, model_a), (x_b, _, model_b) in zip(first, seen):
        np.testing.assert_array_equal(x_a, x_b)
        scaler_a, scaler_b = model_a[0], model_b[0]
        np.testing.assert_array_equal(scaler_a.mean_, scaler_b.mean_)
        np.testing.assert_array_equal(model_a[-1].coef_, model_b[-1].coef_)
        assert model_a[-1].C_[0] == model_b[-1].C_[0]  # the inner CV chose the same C


def test_profiles_are_the_mean_of_replicate_well_means(screen):
    _, store, labels, _ = screen
    trt = np.flatnonzero((store.wells["Metadata_ControlType"] == "trt").to_numpy())
    profiles = linear.compound_profiles(store, trt)
    compound = profiles.index[0]
    mine = trt[(store.wells["Metadata_Compound"].iloc[trt] == compound).to_numpy()]
    expected = np.mean([store.bag(int(w)).astype(np.float64).mean(axis=0) for w in mine], axis=0)
    np.testing.assert_allclose(profiles.loc[compound].to_numpy(), expected)
    assert len(mine) == 2 and "DMSO" not in profiles.index


def test_mean_lr_through_the_protocol_beats_chance(screen, tmp_path):
    _, store, labels, folds = screen
    primary = list(labels.assays[:2])
    result = cross_validate(
        store,
        labels,
        folds,
        primary,
        tmp_path / "cv",
        CVSettings(configuration="mtl-primary"),
        TrainSettings(model="mean-lr"),
        show_progress=False,
    )
    metrics = result.metrics[result.metrics["primary"]]
    assert metrics["defined"].all() and metrics["roc_auc"].mean() > 0.7, metrics
    assert {"roc_auc_per_rotation", "pr_auc"} <= set(metrics.columns)
    assert metrics["roc_auc_per_rotation"].notna().all()
    assert (tmp_path / "cv" / "compound_predictions.parquet").exists()
    assert pd.read_parquet(tmp_path / "cv" / "compound_predictions.parquet")["fold"].nunique() == 3
