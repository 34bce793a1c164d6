"""Prediction quality with the defaults, on a small simulated regime (fixed seed): MoMIL learns (beats chance)
and reaches the linear floor (FM -> Mean -> LR on the same corrected features and folds) within 0.02. The panel
of regimes that judges the defaults is `benchmarks/bench_quality.py`; this is its fast guard in the default run."""

from __future__ import annotations

import pandas as pd
import pytest

from momil.protocol.cv import CVSettings, cross_validate
from momil.simulate.screen import SimulateSettings
from momil.training.settings import TrainSettings

from conftest import simulated_screen


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    settings = SimulateSettings(
        n_compounds=150,
        replicates=3,
        negcon_per_plate=8,
        dim=16,
        instances=12,
        instances_jitter=4,
        n_assays=8,
        n_primary=3,
        n_targets=4,
        responder_fraction=0.4,
        effect_size=2.0,
        label_density=0.3,
        primary_density=0.6,
        seed=0,
    )
    store, labels, folds = simulated_screen(root, settings, n_folds=5)
    assays = pd.read_parquet(root / "screen" / "assays.parquet")
    primary = assays.loc[assays["role"] == "primary", "assay"].astype(str).tolist()
    return root, store, labels, folds, primary


def primary_auc(screen, tmp_path, model: str) -> float:
    _, store, labels, folds, primary = screen
    result = cross_validate(
        store, labels, folds, primary, tmp_path / model, CVSettings(), TrainSettings(model=model), show_progress=False
    )
    return result.summary["mean_roc_auc_primary"]


def test_momil_with_the_defaults_learns_and_reaches_the_linear_floor(screen, tmp_path):
    floor = primary_auc(screen, tmp_path, "mean-lr")
    momil = primary_auc(screen, tmp_path, "momil")
    assert floor > 0.6, floor  # the regime holds signal in the well mean
    assert momil > 0.6, momil
    assert momil >= floor - 0.02, (momil, floor)
