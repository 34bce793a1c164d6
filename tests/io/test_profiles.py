"""`momil profiles`: well- and compound-level profiles that pycytominer and copairs read as they are."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from momil.cli import main
from momil.io.profiles import METADATA_ORDER, feature_columns
from momil.io.store import InstanceStore
from momil.training.checkpoints import load_model

from conftest import WORKSPACE_MODEL, prepared_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = prepared_workspace(tmp_path_factory.mktemp("profiles"))
    train = ["train", *WORKSPACE_MODEL, "--out", "m", "--epochs", 2, "--projector-dim", 8, "--head-dim", 8]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main([str(a) for a in train] + ["--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return root


def profiles(root, *argv) -> tuple[int, pd.DataFrame | None]:
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = main(["profiles", *[str(a) for a in argv], "--quiet"])
    finally:
        os.chdir(cwd)
    out = root / argv[list(argv).index("--out") + 1]
    return code, (pd.read_parquet(out) if code == 0 else None)


def test_well_profiles_are_the_well_means_in_pycytominer_shape(workspace):
    code, table = profiles(workspace, "--store", "corr", "--out", "wells.parquet")
    assert code == 0
    store = InstanceStore(workspace / "corr")
    features = feature_columns(table)
    assert features == [f"Momil_{n}" for n in store.feature_names]
    meta = [c for c in table.columns if c.startswith("Metadata_")]
    assert meta[: len(METADATA_ORDER)] == METADATA_ORDER and table.columns[: len(meta)].tolist() == meta
    assert len(table) == store.n_wells
    expected = np.stack([store.bag(i).astype(np.float64).mean(axis=0) for i in range(store.n_wells)])
    np.testing.assert_allclose(table[features].to_numpy(), expected, rtol=1e-6, atol=1e-6)
    record = json.loads((workspace / "wells_provenance.json").read_text())
    assert record["settings"]["features"] == features and record["settings"]["level"] == "well"


def test_pycytominer_reads_them_and_agrees_on_the_consensus(workspace):
    from pycytominer import aggregate, feature_select

    _, wells = profiles(workspace, "--store", "corr", "--out", "w2.parquet")
    code, compounds = profiles(workspace, "--store", "corr", "--level", "compound", "--out", "c.parquet")
    assert code == 0
    features = feature_columns(wells)
    selected = feature_select(wells, features=features, operation=["variance_threshold", "correlation_threshold"])
    assert set(feature_columns(selected)) <= set(features) and "Metadata_Compound" in selected.columns
    theirs = aggregate(wells, strata=["Metadata_Compound"], features=features, operation="median")
    theirs = theirs.sort_values("Metadata_Compound").reset_index(drop=True)
    assert compounds["Metadata_Compound"].tolist() == theirs["Metadata_Compound"].tolist()
    np.testing.assert_allclose(compounds[features].to_numpy(), theirs[features].to_numpy(), rtol=1e-9)
    counts = wells.groupby("Metadata_Compound").size()
    assert (compounds.set_index("Metadata_Compound")["Metadata_Wells"] == counts).all()
    assert [c for c in compounds.columns if c.startswith("Metadata_")] == [
        "Metadata_Compound",
        "Metadata_ControlType",
        "Metadata_Wells",
    ]


def test_copairs_reads_them(workspace):
    from copairs.map import average_precision

    _, wells = profiles(workspace, "--store", "corr", "--out", "w3.parquet")
    features = feature_columns(wells)
    treated = wells["Metadata_ControlType"] != "negcon"
    wells = wells.assign(Metadata_reference=np.where(treated, wells["Metadata_Compound"], "DMSO")).reset_index(
        drop=True
    )
    meta = wells[[c for c in wells.columns if c.startswith("Metadata_")]]
    ap = average_precision(
        meta,
        wells[features].to_numpy(),
        pos_sameby=["Metadata_reference"],
        pos_diffby=[],
        neg_sameby=[],
        neg_diffby=["Metadata_reference"],
        progress_bar=False,
    )
    scored = ap.dropna(subset=["average_precision"])
    assert len(scored) > 0 and scored["average_precision"].between(0, 1).all()


def test_a_heads_embedding_and_the_flags_that_go_together(workspace, capsys):
    store = InstanceStore(workspace / "corr")
    assay = load_model(workspace / "m" / "model.pt")[0].assays[0]
    code, table = profiles(
        workspace, "--store", "corr", "--model", "m/model.pt", "--assay", assay, "--out", "e.parquet"
    )
    assert code == 0 and len(table) == store.n_wells
    assert feature_columns(table) == [f"Momil_emb_{i:04d}" for i in range(8)]  # head_dim 8
    code, _ = profiles(workspace, "--store", "corr", "--model", "m/model.pt", "--out", "bad.parquet")
    assert code == 2 and "--model and --assay go together" in capsys.readouterr().err
    assert not (workspace / "bad.parquet").exists()
    code, _ = profiles(workspace, "--store", "corr", "--feature-prefix", "Metadata_x", "--out", "bad.parquet")
    assert code == 2 and "--feature-prefix" in capsys.readouterr().err and not (workspace / "bad.parquet").exists()
