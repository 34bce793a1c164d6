"""The screen simulator: contract-valid output, real plate map and label pattern, the properties it plants."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.io.contract import (
    InstanceSource,
    read_assays,
    read_associations,
    read_compounds,
    read_labels,
    read_load_data,
    read_wells,
)
from momil.simulate.screen import SimulateSettings, hti_cnn_labels, real_platemap, simulate


def small(**kw) -> SimulateSettings:
    base = dict(
        n_compounds=30, replicates=2, negcon_per_plate=8, dim=8, instances=10, n_assays=12, n_targets=8, n_primary=4
    )
    base.update(kw)
    return SimulateSettings(**base)


def test_output_follows_the_contract(tmp_path):
    summary = simulate(tmp_path / "s", small(), show_progress=False)
    wells = read_wells(tmp_path / "s" / "wells.parquet")
    labels = read_labels(tmp_path / "s" / "labels.parquet")
    compounds = read_compounds(tmp_path / "s" / "compounds.parquet")
    assays = read_assays(tmp_path / "s" / "assays.parquet")
    assoc = read_associations(tmp_path / "s" / "associations.parquet")
    source = InstanceSource(tmp_path / "s" / "instances.parquet")
    rows = sum(len(c.features) for c in source.iter_chunks())
    assert rows == summary["instances"] == len(wells) * 10
    assert source.dim == 8 and source.meta_names == ["Metadata_Site", "Metadata_Tile"]
    assert summary["wells"] == len(wells) == 30 * 2 + 2 * 8
    assert set(labels.compounds) <= set(wells["Metadata_Compound"])
    assert compounds["Metadata_SMILES"].notna().all()
    assert (assays["role"] == "primary").sum() == 4
    assert assoc["score"].between(0, 1).all()
    assert (tmp_path / "s" / "simulation.json").exists()


def test_same_seed_same_screen(tmp_path):
    simulate(tmp_path / "a", small(seed=3), show_progress=False)
    simulate(tmp_path / "b", small(seed=3), show_progress=False)
    for name in ("instances.parquet", "wells.parquet", "labels.parquet", "compounds.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / name), pd.read_parquet(tmp_path / "b" / name))


def test_replicates_on_different_plates_and_real_negcon_positions(tmp_path):
    simulate(tmp_path / "s", small(n_compounds=400, replicates=3, negcon_per_plate=0, n_batches=3), show_progress=False)
    wells = read_wells(tmp_path / "s" / "wells.parquet")
    trt = wells[wells["Metadata_ControlType"] == "trt"]
    per_compound = trt.groupby("Metadata_Compound")["Metadata_Plate"].agg(["count", "nunique"])
    assert (per_compound["count"] == 3).all() and (per_compound["nunique"] == 3).all()
    platemap = real_platemap()
    dmso_positions = set(platemap.loc[platemap["negcon"], "well_position"])
    assert len(dmso_positions) == 64
    for _, plate in wells.groupby("Metadata_Plate"):
        assert set(plate.loc[plate["Metadata_ControlType"] == "negcon", "Metadata_Well"]) == dmso_positions
        assert not set(plate.loc[plate["Metadata_ControlType"] == "trt", "Metadata_Well"]) & dmso_positions
    assert wells["Metadata_Batch"].nunique() == 3


def overlay(**kw) -> SimulateSettings:
    """``small`` in the hti-cnn mode, without the synthetic-only settings that mode refuses."""
    base = dict(n_compounds=30, replicates=2, negcon_per_plate=8, dim=8, instances=10, n_targets=8, n_primary=4)
    return SimulateSettings(**{**base, "mode": "hti-cnn", **kw})


def test_hti_cnn_overlay_keeps_the_real_pattern(tmp_path):
    summary = simulate(tmp_path / "s", overlay(n_compounds=150, n_targets=10, n_primary=6), show_progress=False)
    labels = read_labels(tmp_path / "s" / "labels.parquet")
    real = hti_cnn_labels()
    kept = real.subset_compounds(labels.compounds)
    ours = set(zip(labels.compounds[labels.rows], labels.assays[labels.cols]))
    theirs = set(zip(kept.compounds[kept.rows], kept.assays[kept.cols]))
    assert ours == theirs  # the same known (compound, assay) positions
    assert set(labels.compounds) <= set(real.compounds)  # real InChIKeys
    real_rate = kept.counts().set_index("assay")
    real_rate = real_rate[real_rate["n_labelled"] > 0]
    sim_rate = labels.counts().set_index("assay")
    np.testing.assert_array_equal(sim_rate.loc[real_rate.index, "n_pos"], real_rate["n_pos"])
    compounds = read_compounds(tmp_path / "s" / "compounds.parquet")
    assert compounds["Metadata_SMILES"].notna().sum() > 0  # real SMILES where hti-cnn has them
    assert summary["assays"] == 209


@pytest.mark.parametrize("key, value", [("n_assays", 12), ("label_density", 0.1), ("active_rate", 0.5)])
def test_hti_cnn_overlay_refuses_the_synthetic_only_settings_by_flag(tmp_path, key, value):
    with pytest.raises(MomilError, match=f"--{key.replace('_', '-')} {value} would be ignored"):
        overlay(**{key: value})
    assert set(SimulateSettings.SYNTHETIC_ONLY) <= {f.name for f in dataclasses.fields(SimulateSettings)}
    SimulateSettings(**{key: value})  # the synthetic mode reads them


def _well_label_signal(tmp_path, settings):
    """Mean |correlation| between the label and the projection on the assay's signature, per pooling."""
    simulate(tmp_path, settings, show_progress=False)
    truth = pd.read_parquet(tmp_path / "truth" / "compound_potency.parquet").set_index("Metadata_Compound")
    responders = pd.read_parquet(tmp_path / "truth" / "responders.parquet")
    instances = pd.read_parquet(tmp_path / "instances.parquet")
    wells = pd.read_parquet(tmp_path / "wells.parquet")
    return truth, responders, instances, wells


def test_only_a_fraction_of_instances_respond(tmp_path):
    settings = small(n_compounds=60, instances=40, responder_fraction=0.2, hit_rate=0.5)
    truth, responders, instances, wells = _well_label_signal(tmp_path / "s", settings)
    active = set(truth.index[(truth.to_numpy() > 0).any(axis=1)])
    trt = wells[wells["Metadata_ControlType"] == "trt"]
    active_wells = trt[trt["Metadata_Compound"].isin(active)]
    per_well = responders.groupby(["Metadata_Plate", "Metadata_Well"]).size()
    fraction = per_well.sum() / (len(active_wells) * 40)
    assert 0.15 < fraction < 0.25
    inactive_wells = set(zip(wells["Metadata_Plate"], wells["Metadata_Well"])) - set(
        zip(active_wells["Metadata_Plate"], active_wells["Metadata_Well"])
    )
    assert not inactive_wells & set(per_well.index)  # DMSO and inactive compounds have no responders


def test_related_assays_share_targets_and_genes(tmp_path):
    simulate(tmp_path / "s", small(n_assays=20, n_targets=8, n_primary=4, unrelated_fraction=0.25), show_progress=False)
    assays = pd.read_parquet(tmp_path / "s" / "truth" / "assays.parquet")
    assoc = read_associations(tmp_path / "s" / "associations.parquet")
    score = {(a, b): s for a, b, s in zip(assoc["gene_a"], assoc["gene_b"], assoc["score"])}

    def best(genes_a, genes_b):
        values = [1.0 if a == b else score.get((min(a, b), max(a, b)), 0.0) for a in genes_a for b in genes_b]
        return max(values)

    genes = {a: g.split("|") for a, g in zip(assays["assay"], assays["target_genes"])}
    target = dict(zip(assays["assay"], assays["latent_target"]))
    kinds = dict(zip(assays["assay"], assays["kind"]))
    primaries = [a for a in assays["assay"] if kinds[a] == "primary"]
    assert {"related", "unrelated", "other-target"} <= set(kinds.values())
    for assay, kind in kinds.items():
        if kind == "related":
            primary = next(p for p in primaries if target[p] == target[assay])
            assert best(genes[assay], genes[primary]) >= 0.6
        if kind == "unrelated":
            assert max(best(genes[assay], genes[p]) for p in primaries) == 0.0


def test_rendered_images(tmp_path):
    import tifffile

    simulate(
        tmp_path / "s",
        small(n_compounds=4, replicates=1, negcon_per_plate=2, render_images=True, image_size=48, sites=2, instances=6),
        show_progress=False,
    )
    table, channels = read_load_data(tmp_path / "s" / "load_data.parquet")
    assert channels == ["OrigDNA", "OrigER", "OrigRNA", "OrigAGP", "OrigMito"]
    assert len(table) == 6 * 2
    row = table.iloc[0]
    image = tifffile.imread(tmp_path / "s" / row["PathName_OrigDNA"] / row["FileName_OrigDNA"])
    assert image.shape == (48, 48) and image.dtype == np.uint16 and image.max() > 1000


def test_bad_settings(tmp_path):
    from momil.errors import MomilError

    with pytest.raises(MomilError, match="mode"):
        simulate(tmp_path / "x", small(mode="real"), show_progress=False)
    with pytest.raises(MomilError, match="n_primary"):
        simulate(tmp_path / "y", small(n_primary=9, n_targets=4), show_progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_hidden_signal_leaves_the_well_mean_and_shows_in_cells():
    """signal="hidden": responders move by +-shift, so a responder's distance from its state grows as with
    "shift" while the mean over responders stays near the state mean."""
    from momil.simulate.screen import World, well_instances

    rng = np.random.default_rng(0)
    signature = np.zeros((1, 8))
    signature[0, 0] = 1.0
    world = World(
        np.array(["c"]),
        [None],
        [None],
        np.array([[1.0]]),
        np.array(["a"]),
        np.array([0]),
        np.array(["primary"]),
        np.array(["primary"]),
        [["G"]],
        [["G"]],
        signature,
        np.zeros((1, 8)),
    )
    shift = SimulateSettings(dim=8, n_states=1, responder_fraction=0.5, effect_size=4.0)
    x, responders = well_instances(world, 0, 4000, shift, rng)
    assert x[responders, 0].mean() > 3.5
    hidden = SimulateSettings(dim=8, n_states=1, responder_fraction=0.5, effect_size=4.0, signal="hidden")
    x, responders = well_instances(world, 0, 4000, hidden, rng)
    assert abs(x[responders, 0].mean()) < 0.4 and np.abs(x[responders, 0]).mean() > 3.5


def test_per_target_subpopulations_put_each_target_in_its_own_cell_state():
    from momil.simulate.screen import World, well_instances

    rng = np.random.default_rng(1)
    states = np.eye(4, 8) * 20  # far apart: a cell's state is readable from its position
    signatures = np.zeros((2, 8))
    signatures[:, 7] = 1.0
    world = World(
        np.array(["c"]),
        [None],
        [None],
        np.array([[1.0, 0.0]]),
        np.array(["a"]),
        np.array([0]),
        np.array(["primary"]),
        np.array(["primary"]),
        [["G"], ["H"]],
        [["G"]],
        signatures,
        states,
    )
    settings = SimulateSettings(dim=8, n_states=4, responder_fraction=0.5, effect_size=5.0, subpopulations="per-target")
    x, responders = well_instances(world, 0, 2000, settings, rng)
    state = np.argmax(x[:, :4], axis=1)
    assert responders.any() and (state[responders] == 0).all()  # target 0 acts on cell state 0 only
    assert x[responders, 7].mean() > 4.0 and abs(x[~responders, 7].mean()) < 0.2


def test_default_regime_is_unchanged_by_the_new_settings(tmp_path):
    """The defaults (shift, shared) draw the same random numbers as before the regime settings existed."""
    simulate(tmp_path / "a", small(), show_progress=False)
    simulate(tmp_path / "b", small(signal="shift", subpopulations="shared"), show_progress=False)
    a = pd.read_parquet(tmp_path / "a" / "instances.parquet")
    b = pd.read_parquet(tmp_path / "b" / "instances.parquet")
    pd.testing.assert_frame_equal(a, b)
