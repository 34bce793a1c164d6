"""Few-shot probes of unseen assays on a primary head's embeddings (Table 3)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.data.pairs import WellPairs, wells_of
from momil.errors import MomilError
from momil.prep.splits import rotation, rotation_compounds
from momil.protocol.fewshot import ProbeSettings, choose_unseen, probe_unseen, shot_counts
from momil.training.checkpoints import save_model
from momil.training.fit import fit
from momil.training.settings import TrainSettings
from test_selection import planted_screen

TRAIN = TrainSettings(
    epochs=15, warmup_epochs=1, patience=15, batch_wells=16, dropout=0.0, lr=3e-3, projector_dim=16, head_dim=16
)


def _folds(labels, k=5):
    compounds = list(labels.compounds)
    return pd.DataFrame({"Metadata_Compound": compounds, "fold": [i % k for i in range(len(compounds))]})


def test_shot_counts():
    assert shot_counts("5,10,all") == [5, 10, 0]
    with pytest.raises(MomilError):
        shot_counts("5,ten")


def test_probes_transfer_to_a_related_unseen_assay(tmp_path):
    store, labels, _, _ = planted_screen(tmp_path / "store", n_compounds=100)
    folds = _folds(labels)
    paths = {}
    for k in (0, 1):  # models on P and S_other only: S_shared_gene and S_noise are unseen
        parts = rotation_compounds(folds, rotation(k, 5))
        pairs = WellPairs.build(store.wells, labels, ["P", "S_other"])
        result = fit(
            store,
            pairs,
            wells_of(store.wells, parts["train"]),
            wells_of(store.wells, parts["val"]),
            np.array([True, False]),
            TRAIN,
            show_progress=False,
        )
        paths[k] = save_model(tmp_path / f"rot{k}.pt", result.model)
    table = probe_unseen(
        store,
        labels,
        folds,
        paths,
        {"S_shared_gene": "P", "S_noise": "P"},
        ProbeSettings(shots="5,all", repeats=4),
        TRAIN,
        tmp_path / "work",
    )
    t = table.set_index(["assay", "source", "shots"])["auc_mean"]
    # the primary head knows target A, which S_shared_gene reads: a few shots suffice; S_noise stays near chance
    assert t[("S_shared_gene", "probe", 5)] > 0.85 and t[("S_shared_gene", "probe", "all")] > 0.9
    assert abs(t[("S_noise", "probe", "all")] - 0.5) < 0.25
    assert ("S_shared_gene", "single-task model on the assay", "all") in t.index
    row = table[(table["assay"] == "S_shared_gene") & (table["shots"].astype(str) == "5")].iloc[0]
    assert row["draws"] == 4 and row["n_compounds"] == 40  # test folds 0 and 1 of 100 compounds
    with pytest.raises(MomilError, match="not unseen"):
        probe_unseen(store, labels, folds, paths, {"S_other": "P"}, ProbeSettings(repeats=1))


def test_choose_unseen_takes_associated_unselected_assays(tmp_path):
    store, labels, _, _ = planted_screen(tmp_path / "store", n_compounds=30)
    table = pd.DataFrame(
        {
            "assay": ["S_related", "S_shared_gene", "S_noise", "S_unrelated"],
            "bio_kept": [True, True, True, False],
            "bio_primary": ["P", "P", "P", ""],
            "selected": [True, False, False, False],
        }
    )
    chosen = choose_unseen([table], labels, limit=5)
    assert chosen == {"S_shared_gene": "P", "S_noise": "P"}
