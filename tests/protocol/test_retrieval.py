"""copairs mAP of well profiles (momil.protocol.retrieval, `momil probe`): equal to a direct copairs call."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.cli import main
from momil.errors import MomilError
from momil.io.profiles import feature_columns, well_profiles
from momil.protocol.retrieval import phenotypic_activity, phenotypic_consistency
from momil.simulate.screen import SimulateSettings, compound_classes
from test_correct import store_from_profiles

from conftest import real_data, simulated_screen


def test_consistency_on_the_real_lincs_plate_equals_copairs(tmp_path):
    from copairs.map import average_precision, mean_average_precision

    plate = pd.read_csv(real_data("profiles", "SQ00015054_normalized_feature_select.csv.gz"))
    features = [c for c in plate.columns if not c.startswith("Metadata_")]
    plate[features] = plate[features].astype(np.float32).astype(np.float64)  # the store holds float32
    control = lambda row: "negcon" if row["Metadata_broad_sample"] == "DMSO" else "trt"  # noqa: E731
    store = store_from_profiles(plate, features, tmp_path / "store", control)
    moa = plate.dropna(subset=["Metadata_moa"]).drop_duplicates("Metadata_broad_sample")
    classes = moa.set_index("Metadata_broad_sample")["Metadata_moa"]
    profiles = well_profiles(store)
    ours, summary = phenotypic_consistency(profiles, feature_columns(profiles), classes, null_size=2000, seed=0)
    # the direct call: wells with a MoA shared by two or more compounds, positives of other compounds
    direct = plate.dropna(subset=["Metadata_moa"])
    shared = direct.groupby("Metadata_moa")["Metadata_broad_sample"].nunique()
    direct = direct[direct["Metadata_moa"].isin(shared.index[shared >= 2])].reset_index(drop=True)
    ap = average_precision(
        direct[["Metadata_broad_sample", "Metadata_moa"]],
        direct[features].to_numpy(),
        pos_sameby=["Metadata_moa"],
        pos_diffby=["Metadata_broad_sample"],
        neg_sameby=[],
        neg_diffby=["Metadata_moa"],
        progress_bar=False,
    )
    theirs = mean_average_precision(ap, ["Metadata_moa"], null_size=2000, threshold=0.05, seed=0, progress_bar=False)
    merged = ours.merge(theirs, left_on="class", right_on="Metadata_moa", suffixes=("", "_copairs"))
    assert len(merged) == len(theirs) == len(ours) >= 3
    np.testing.assert_allclose(merged["mean_average_precision"], merged["mean_average_precision_copairs"], atol=1e-6)
    np.testing.assert_allclose(merged["p_value"], merged["p_value_copairs"], atol=1e-12)
    assert summary["null_size"] == 2000 and summary["seed"] == 0 and summary["consistency_groups"] == len(ours)


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    settings = SimulateSettings(
        n_compounds=40, replicates=4, negcon_per_plate=8, dim=8, instances=12, n_assays=4, n_primary=2, n_targets=2,
        responder_fraction=0.8, effect_size=5.0, plate_effect=0.3, batch_effect=0.3,
    )  # fmt: skip
    store, _, _ = simulated_screen(root, settings, n_folds=3)
    return root, store


def test_activity_on_a_simulated_screen_equals_copairs(screen):
    from copairs.map import average_precision, mean_average_precision

    root, store = screen
    profiles = well_profiles(store)
    features = feature_columns(profiles)
    ours, summary = phenotypic_activity(profiles, features, null_size=2000, seed=1)
    meta = profiles[["Metadata_Compound", "Metadata_ControlType"]].copy()
    meta["negcon"] = (meta["Metadata_ControlType"] == "negcon").astype(int)
    ap = average_precision(
        meta, profiles[features].to_numpy(), ["Metadata_Compound"], [], [], ["negcon"], progress_bar=False
    )
    theirs = mean_average_precision(
        ap[ap["negcon"] == 0], ["Metadata_Compound"], null_size=2000, threshold=0.05, seed=1, progress_bar=False
    )
    merged = ours.merge(theirs, on="Metadata_Compound", suffixes=("", "_copairs"))
    assert (
        len(merged)
        == len(theirs)
        == len(ours)
        == (profiles["Metadata_ControlType"] == "trt").groupby(profiles["Metadata_Compound"]).any().sum()
    )
    np.testing.assert_allclose(merged["mean_average_precision"], merged["mean_average_precision_copairs"], atol=1e-9)
    np.testing.assert_array_equal(merged["below_corrected_p"], merged["below_corrected_p_copairs"])
    # compounds the simulator made active are retrieved against DMSO more often than the inactive ones
    classes = compound_classes(root / "screen")
    merged["active"] = classes.reindex(merged["Metadata_Compound"]).ne("inactive").to_numpy()
    by = merged.groupby("active")["mean_average_precision"].mean()
    assert by[True] > by[False] + 0.3, by  # measured 0.75 vs 0.16
    assert 0 < summary["activity_retrieved"] <= 1 and summary["null_size"] == 2000 and summary["seed"] == 1
    with pytest.raises(MomilError, match="negative-control"):
        phenotypic_activity(profiles[profiles["Metadata_ControlType"] != "negcon"], features)


def test_probe_prints_map_beside_the_linear_probe(screen, capsys, tmp_path):
    root, _ = screen
    argv = ["probe", "--store", str(root / "store"), "--simulated", str(root / "screen"), "--c", "1", "--folds", "3"]
    assert main(argv + ["--map-null-size", "500", "--out", str(tmp_path / "probe.parquet"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "activity_map" in out and "consistency_map" in out and "accuracy" in out
    table = pd.read_parquet(tmp_path / "probe.parquet")
    assert table["activity_map"].between(0, 1).all() and table["consistency_map"].between(0, 1).all()


def test_the_benchmark_reports_the_stores_phenotypic_activity(screen, tmp_path):
    import json

    from momil.protocol.benchmark import store_retrieval
    from momil.report.html import render_report

    _, store = screen
    summary = store_retrieval(store, tmp_path, null_size=500)
    scores = pd.read_csv(tmp_path / "retrieval.csv")
    assert summary["activity_groups"] == len(scores) > 0 and summary["null_size"] == 500
    assert summary["activity_map"] == pytest.approx(scores["mean_average_precision"].mean())
    pd.DataFrame({"method": ["m"], "label": ["M"], "a": [0.5], "mean": [0.5]}).to_csv(
        tmp_path / "table2.csv", index=False
    )
    (tmp_path / "benchmark.json").write_text(json.dumps({"retrieval": summary, "focus": "m"}))
    page = render_report(tmp_path).read_text()
    assert "phenotypic activity (copairs mAP)" in page and f"{summary['activity_map']:.3f}" in page
