"""Chemical-similarity folds: Butina equal to RDKit's, scaffolds, balance, hash fallback, 3-1-1 rotation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.io.contract import LabelMatrix
from momil.prep.splits import (
    SplitSettings,
    butina_clusters,
    make_folds,
    morgan_bits,
    pack_clusters,
    parse_smiles,
    rotation,
    rotation_compounds,
    rotations,
    scaffold_clusters,
    tanimoto_neighbours,
)

from conftest import resource


def real_smiles(n=None):
    frame = pd.read_csv(resource("hti-cnn-labels", "hti_compounds_smiles.csv.gz"), usecols=["inchikey", "smiles"])
    frame = frame.dropna()
    return frame if n is None else frame.head(n)


@pytest.mark.parametrize("cutoff", [0.4, 0.7])
def test_butina_equals_rdkit(cutoff):
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator
    from rdkit.ML.Cluster import Butina

    mols = parse_smiles(real_smiles(400)["smiles"])
    ours = butina_clusters(tanimoto_neighbours(morgan_bits(mols), cutoff, block_rows=64))
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [generator.GetFingerprint(m) for m in mols]
    distances = []
    for i in range(1, len(fps)):
        distances.extend(1.0 - s for s in DataStructs.BulkTanimotoSimilarity(fps[i], fps[:i]))
    reference = Butina.ClusterData(distances, len(fps), cutoff, isDistData=True)
    expected = np.empty(len(fps), dtype=int)
    for k, members in enumerate(reference):
        expected[list(members)] = k
    np.testing.assert_array_equal(ours, expected)


def test_scaffold_groups():
    mols = parse_smiles(["c1ccccc1CC", "c1ccccc1CCO", "C1CCNCC1C", "CCCC", "CCO"])
    cluster = scaffold_clusters(mols)
    assert cluster[0] == cluster[1]  # benzene scaffold
    assert len({cluster[2], cluster[0]}) == 2
    assert cluster[3] != cluster[4]  # acyclic compounds are their own groups


def test_pack_clusters_balances_labels():
    rng = np.random.default_rng(0)
    vectors = rng.poisson(1.0, size=(300, 9)).astype(float)
    fold = pack_clusters(vectors, 5)
    loads = np.stack([vectors[fold == k].sum(axis=0) for k in range(5)])
    target = vectors.sum(axis=0) / 5
    assert np.all(np.abs(loads - target) / target < 0.1)


def test_folds_on_real_compounds_are_balanced_and_deterministic():
    frame = real_smiles(600)
    compounds = frame["inchikey"].tolist()
    structures = pd.DataFrame(
        {"Metadata_Compound": compounds, "Metadata_SMILES": frame["smiles"].tolist(), "Metadata_InChIKey": compounds}
    )
    rng = np.random.default_rng(1)
    long = pd.DataFrame(
        {
            "Metadata_Compound": rng.choice(compounds, 3000),
            "assay": rng.choice(["a", "b", "c"], 3000),
            "label": rng.integers(0, 2, 3000),
        }
    ).drop_duplicates(["Metadata_Compound", "assay"])
    labels = LabelMatrix.from_long(long)
    folds = make_folds(compounds, structures, labels, SplitSettings(cutoff=0.6), show_progress=False)
    again = make_folds(compounds, structures, labels, SplitSettings(cutoff=0.6), show_progress=False)
    pd.testing.assert_frame_equal(folds, again)
    assert set(folds["fold"]) == set(range(5))
    # every cluster sits in one fold
    assert (folds.groupby("cluster")["fold"].nunique() == 1).all()
    # per assay and class, each fold holds close to a fifth of the labels
    fold_of = dict(zip(folds["Metadata_Compound"], folds["fold"]))
    long["fold"] = long["Metadata_Compound"].map(fold_of)
    counts = long.groupby(["assay", "label", "fold"]).size().unstack(fill_value=0)
    share = counts.div(counts.sum(axis=1), axis=0)
    assert share.to_numpy().min() > 0.12 and share.to_numpy().max() < 0.28


def test_compounds_without_structure_hash_with_warning():
    compounds = ["a", "b", "c", "d"]
    structures = pd.DataFrame(
        {
            "Metadata_Compound": compounds,
            "Metadata_SMILES": ["CCO", None, "not a smiles", None],
            "Metadata_InChIKey": [None, "AAAAAAAAAAAAAA-BBBBBBBBBB-N", None, "AAAAAAAAAAAAAA-CCCCCCCCCC-N"],
        }
    )
    with pytest.warns(UserWarning, match=r"3 of 4 compounds have no usable structure \(1 SMILES could not be parsed\)"):
        folds = make_folds(compounds, structures, settings=SplitSettings(n_folds=3), show_progress=False)
    by = folds.set_index("Metadata_Compound")
    assert by.loc["b", "fold"] == by.loc["d", "fold"]  # same InChIKey skeleton -> same fold
    assert by.loc["b", "cluster"] == "inchikey:AAAAAAAAAAAAAA"
    assert by.loc["c", "cluster"] == "id:c"
    assert not by.loc["b", "has_structure"] and by.loc["a", "has_structure"]


def test_rotation_3_1_1():
    assert rotation(0, 5).val_fold == 1 and rotation(0, 5).train_folds == (2, 3, 4)
    assert rotation(4, 5).val_fold == 0 and rotation(4, 5).train_folds == (1, 2, 3)
    tests = [r.test_fold for r in rotations(5)]
    vals = [r.val_fold for r in rotations(5)]
    assert sorted(tests) == sorted(vals) == list(range(5))
    folds = pd.DataFrame({"Metadata_Compound": list("abcdefghij"), "fold": [0, 1, 2, 3, 4] * 2})
    parts = rotation_compounds(folds, rotation(2, 5))
    assert set(parts["test"]) == {"c", "h"} and set(parts["val"]) == {"d", "i"}
    assert len(parts["train"]) == 6 and not set(parts["train"]) & (set(parts["test"]) | set(parts["val"]))
    with pytest.raises(MomilError):
        rotation(5, 5)


def test_bad_settings():
    with pytest.raises(MomilError, match="--n-folds must be >= 3"):
        make_folds(["a"], settings=SplitSettings(n_folds=2), show_progress=False)
    with pytest.raises(MomilError, match="butina.*scaffold"):
        make_folds(["a"], settings=SplitSettings(method="kmeans"), show_progress=False)


@pytest.mark.slow
def test_fifty_thousand_compounds_in_minutes():
    """50,000 analogue compounds (the simulator's chemical series) split with exact Butina."""
    from momil.simulate.screen import analogue_smiles

    parents = real_smiles()["smiles"].tolist()
    series = analogue_smiles(parents, 16, np.random.default_rng(0))
    smiles = [s for group in series for s in group][:50_000]
    compounds = [f"c{i}" for i in range(len(smiles))]
    structures = pd.DataFrame({"Metadata_Compound": compounds, "Metadata_SMILES": smiles})
    started = time.perf_counter()
    folds = make_folds(compounds, structures, settings=SplitSettings(), show_progress=False)
    seconds = time.perf_counter() - started
    assert len(folds) == 50_000 and folds["has_structure"].all()
    print(f"50,000 compounds split in {seconds:.0f} s into {folds['cluster'].nunique()} clusters")
    assert seconds < 600
