"""Plate-wise robust z-score: equal to pycytominer on a real plate; per-plate; errors for plates without DMSO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.io.store import InstanceStore, StoreWriter
from momil.prep.correct import CorrectSettings, correct, load_correction_stats, mad_robustize, plate_variance_fraction

from conftest import real_data


def store_from_profiles(frame: pd.DataFrame, features: list[str], path, control_of) -> InstanceStore:
    """One instance per well (a profile table is one vector per well)."""
    with StoreWriter.create(path, dim=len(features), dtype="float32", feature_names=features) as writer:
        for _, row in frame.iterrows():
            writer.add_bag(
                {
                    "Metadata_Plate": row["Metadata_Plate"],
                    "Metadata_Well": row["Metadata_Well"],
                    "Metadata_Batch": "b",
                    "Metadata_Compound": row["Metadata_broad_sample"],
                    "Metadata_ControlType": control_of(row),
                },
                row[features].to_numpy(np.float64)[None, :],
            )
    return InstanceStore(path)


@pytest.mark.parametrize("eps", [1e-18, 1e-6])
def test_equals_pycytominer_on_real_lincs_plate(tmp_path, eps):
    from pycytominer import normalize

    profiles = pd.read_csv(real_data("profiles", "SQ00015054_normalized_feature_select.csv.gz"))
    features = [c for c in profiles.columns if not c.startswith("Metadata_")]
    # float32 store: compare against pycytominer on the same float32-rounded values
    profiles[features] = profiles[features].astype(np.float32).astype(np.float64)
    reference = normalize(
        profiles=profiles,
        features=features,
        samples="Metadata_broad_sample == 'DMSO'",
        method="mad_robustize",
        mad_robustize_epsilon=eps,
    )
    store_from_profiles(
        profiles, features, tmp_path / "raw", lambda row: "negcon" if row["Metadata_broad_sample"] == "DMSO" else "trt"
    )
    ours = correct(
        tmp_path / "raw", tmp_path / "corrected", CorrectSettings(eps=eps, dtype="float32"), show_progress=False
    )
    got = pd.DataFrame(np.asarray(ours.features), columns=features)
    got[["Metadata_Plate", "Metadata_Well"]] = ours.wells[["Metadata_Plate", "Metadata_Well"]].to_numpy()
    expected = reference.set_index("Metadata_Well").loc[got["Metadata_Well"], features].to_numpy(np.float64)
    assert expected.shape == (384, len(features))
    scale = np.maximum(1.0, np.abs(expected))
    np.testing.assert_array_less(np.abs(got[features].to_numpy(np.float64) - expected) / scale, 1e-5)
    # the DMSO wells themselves now have median 0 per feature
    dmso = (ours.wells["Metadata_ControlType"] == "negcon").to_numpy()
    assert dmso.sum() == 24
    np.testing.assert_allclose(np.median(np.asarray(ours.features)[dmso], axis=0), 0.0, atol=1e-6)


def _two_plate_store(path, stats_rng=0):
    rng = np.random.default_rng(stats_rng)
    with StoreWriter.create(path, dim=3) as writer:
        for p, (offset, gain) in enumerate([(10.0, 1.0), (-5.0, 3.0)]):
            for w in range(6):
                control = "negcon" if w < 3 else "trt"
                bag = rng.normal(size=(4, 3)) * gain + offset
                writer.add_bag(
                    {
                        "Metadata_Plate": f"P{p}",
                        "Metadata_Well": f"A{w + 1:02d}",
                        "Metadata_Batch": "b",
                        "Metadata_Compound": "DMSO" if control == "negcon" else f"C{w}",
                        "Metadata_ControlType": control,
                    },
                    bag,
                )
    return InstanceStore(path)


def test_instance_and_well_level_statistics(tmp_path):
    raw = _two_plate_store(tmp_path / "raw")
    inst = correct(tmp_path / "raw", tmp_path / "inst", show_progress=False)
    well = correct(tmp_path / "raw", tmp_path / "well", CorrectSettings(stats="well"), show_progress=False)
    for plate in ["P0", "P1"]:
        rows = raw.wells.index[raw.wells["Metadata_Plate"] == plate]
        negcon = [i for i in rows if raw.wells.loc[i, "Metadata_ControlType"] == "negcon"]
        all_rows = np.concatenate([raw.bag(i) for i in rows])
        controls = np.concatenate([raw.bag(i) for i in negcon])
        np.testing.assert_allclose(
            np.concatenate([inst.bag(i) for i in rows]), mad_robustize(all_rows, controls), rtol=1e-5, atol=1e-5
        )
        means = np.stack([raw.bag(i).astype(np.float64).mean(axis=0) for i in negcon])
        np.testing.assert_allclose(
            np.concatenate([well.bag(i) for i in rows]), mad_robustize(all_rows, means), rtol=1e-5, atol=1e-5
        )
    stats = load_correction_stats(tmp_path / "inst")
    assert set(stats) == {"P0", "P1"}
    assert inst.manifest["history"][-1]["stage"] == "correct"


def test_mad_formula_by_hand():
    controls = np.array([[1.0], [2.0], [4.0]])  # median 2, |dev| = 1, 0, 2 -> MAD 1
    z = mad_robustize(np.array([[5.0]]), controls, eps=0.0)
    assert z[0, 0] == pytest.approx(3.0 / 1.4826)


def test_plate_without_negcon(tmp_path):
    with StoreWriter.create(tmp_path / "raw", dim=2) as writer:
        for p in range(2):
            for w in range(3):
                control = "negcon" if (p == 0 and w == 0) else "trt"
                writer.add_bag(
                    {
                        "Metadata_Plate": f"P{p}",
                        "Metadata_Well": f"A{w + 1:02d}",
                        "Metadata_Batch": "b",
                        "Metadata_Compound": "x",
                        "Metadata_ControlType": control,
                    },
                    np.random.default_rng(w).normal(size=(3, 2)),
                )
    with pytest.raises(MomilError, match=r"1 plate\(s\) have no negcon wells \(P1\).*--fallback all"):
        correct(tmp_path / "raw", tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="plate P1 has no negcon wells"):
        out = correct(tmp_path / "raw", tmp_path / "out", CorrectSettings(fallback="all"), show_progress=False)
    assert out.n_instances == 18


def test_correction_removes_simulated_plate_effects(tmp_path):
    from momil.io.ingest import ingest
    from momil.simulate.screen import SimulateSettings, simulate

    simulate(
        tmp_path / "screen",
        SimulateSettings(
            n_compounds=40, replicates=2, negcon_per_plate=16, dim=8, instances=12, n_assays=8, n_targets=6
        ),
        show_progress=False,
    )
    raw = ingest(
        tmp_path / "screen" / "instances.parquet",
        tmp_path / "screen" / "wells.parquet",
        tmp_path / "raw",
        show_progress=False,
    )
    corrected = correct(tmp_path / "raw", tmp_path / "corrected", show_progress=False)
    assert plate_variance_fraction(raw) > 0.5
    assert plate_variance_fraction(corrected) < 0.1
