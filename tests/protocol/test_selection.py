"""Assay selection: biology by gene associations, single-assay performance, influence; planted screen."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from momil.data.pairs import wells_of
from momil.errors import MomilError
from momil.io.contract import LabelMatrix
from momil.io.store import InstanceStore, StoreWriter
from momil.protocol.selection import SelectSettings, biological_similarity, load_selection, select_assays
from momil.training.settings import TrainSettings

# which latent target (or none) each planted assay reads, its role and target genes
PLANTED = {
    "P": ("A", "primary", "EGFR"),
    "S_related": ("A", "secondary", "ERBB2"),  # associated with EGFR, reads the primary's target
    "S_shared_gene": ("A", "secondary", "EGFR|TP53"),  # shares the primary's gene
    "S_unrelated": (None, "secondary", "UNREL1"),  # no association, labels independent of the images
    "S_noise": (None, "secondary", "GRB2"),  # associated, but its labels are noise: fails performance
    "S_other": ("B", "secondary", "SOS1"),  # associated, learnable, but reads another target: fails influence
    "S_no_genes": ("A", "secondary", ""),  # no target genes
}
ASSOCIATIONS = pd.DataFrame(
    {
        "gene_a": ["EGFR", "EGFR", "EGFR", "GRB2"],
        "gene_b": ["ERBB2", "GRB2", "SOS1", "SOS1"],
        "score": [0.9, 0.8, 0.75, 0.99],
    }
)


def planted_screen(path, n_compounds=90, per_well=12, dim=8, seed=0, density=1.0):
    """Two latent targets A and B, each shown by a few responding instances along its own feature; a per-well
    nuisance shift along both features swamps well means. Assays of PLANTED read A, B or nothing."""
    rng = np.random.default_rng(seed)
    active = {"A": rng.random(n_compounds) < 0.5, "B": rng.random(n_compounds) < 0.5}
    with StoreWriter.create(path, dim=dim) as writer:
        for c in range(n_compounds):
            for r in range(2):
                bag = rng.normal(size=(per_well, dim))
                bag[:, :2] += rng.normal(scale=3.0, size=2)  # nuisance
                if active["A"][c]:
                    bag[:3, 0] += 12.0
                if active["B"][c]:
                    bag[3:6, 1] += 12.0
                writer.add_bag(
                    {
                        "Metadata_Plate": f"P{r}",
                        "Metadata_Well": f"W{c:04d}",
                        "Metadata_Batch": "b",
                        "Metadata_Compound": f"c{c:03d}",
                        "Metadata_ControlType": "trt",
                    },
                    bag,
                )
    rows, truth = [], []
    for name, (target, _, _) in PLANTED.items():
        values = active[target] if target else rng.random(n_compounds) < 0.5
        for c in range(n_compounds):
            truth.append((f"c{c:03d}", name, int(values[c])))
            if rng.random() < density:
                rows.append(truth[-1])
    columns = ["Metadata_Compound", "assay", "label"]
    labels = LabelMatrix.from_long(pd.DataFrame(rows, columns=columns))
    assays = pd.DataFrame(
        {
            "assay": list(PLANTED),
            "role": [v[1] for v in PLANTED.values()],
            "target_genes": [v[2] for v in PLANTED.values()],
        }
    )
    return InstanceStore(path), labels, assays, pd.DataFrame(truth, columns=columns)


def split(labels, store):
    compounds = list(labels.compounds)
    n = len(compounds)
    parts = compounds[: int(0.6 * n)], compounds[int(0.6 * n) : int(0.8 * n)], compounds[int(0.8 * n) :]
    return [wells_of(store.wells, p) for p in parts]


FAST = TrainSettings(epochs=30, warmup_epochs=2, patience=25, batch_wells=16, dropout=0.0, seed=0)
SETTINGS = SelectSettings(stl_head_dim=16, stl_lr=1e-2)


def test_biological_similarity_is_the_best_gene_pair():
    genes = {"P": ["EGFR"], "S1": ["ERBB2", "SOS1"], "S2": ["EGFR", "TP53"], "S3": ["X"], "S4": []}
    bio = biological_similarity(genes, ASSOCIATIONS, ["P"], ["S1", "S2", "S3", "S4"]).set_index("secondary")
    assert bio.loc["S1", "score"] == 0.9 and bio.loc["S1", "gene_secondary"] == "ERBB2"
    assert bio.loc["S2", "score"] == 1.0 and bio.loc["S2", "gene_primary"] == "EGFR"  # a shared gene counts 1
    assert bio.loc["S3", "score"] == 0.0 and bio.loc["S4", "score"] == 0.0
    # gene case and pair order do not matter
    lower = {"P": ["egfr"], "S1": ["erbb2"]}
    flipped = ASSOCIATIONS.rename(columns={"gene_a": "gene_b", "gene_b": "gene_a"})
    assert biological_similarity(lower, flipped, ["P"], ["S1"])["score"].iloc[0] == 0.9


def test_selection_keeps_related_and_drops_unrelated(tmp_path):
    store, labels, assays, _ = planted_screen(tmp_path / "store")
    train, val, test = split(labels, store)
    result = select_assays(
        store, labels, assays, ASSOCIATIONS, train, val, tmp_path / "sel", SETTINGS, FAST, show_progress=False
    )
    table = result.table.set_index("assay")
    assert set(result.selected) == {"S_related", "S_shared_gene"}, table
    assert table.loc["S_unrelated", "reason"].startswith("association 0.00")
    assert table.loc["S_no_genes", "reason"] == "no target genes"
    assert not table.loc["S_noise", "perf_kept"] and "th_perf" in table.loc["S_noise", "reason"]
    assert table.loc["S_other", "perf_kept"] and not table.loc["S_other", "influence_kept"]
    assert "th_inf" in table.loc["S_other", "reason"]
    assert table.loc["S_related", "influence_ratio"] >= 0.9 and table.loc["S_related", "perf_auc"] >= 0.7
    # the written report and its reuse
    saved = pd.read_csv(tmp_path / "sel" / "selection.csv")
    assert list(saved["assay"]) == list(result.table["assay"])
    record = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert record["selected"] == result.selected and record["settings"]["select"]["th_perf"] == 0.7
    assert load_selection(tmp_path / "sel", train, val) == result.selected
    with pytest.raises(MomilError, match="other training/validation wells"):
        load_selection(tmp_path / "sel", val, train)
    # running again reuses the single-assay models and gives the same table
    again = select_assays(
        store, labels, assays, ASSOCIATIONS, train, val, tmp_path / "sel", SETTINGS, FAST, show_progress=False
    )
    pd.testing.assert_frame_equal(again.table, result.table)


def test_stages_run_alone(tmp_path):
    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=40)
    train, val, _ = split(labels, store)
    bio_only = select_assays(
        store,
        labels,
        assays,
        ASSOCIATIONS,
        train,
        val,
        tmp_path / "bio",
        SelectSettings(stages="biology", th_bio=0.7),
        FAST,
        show_progress=False,
    )
    assert set(bio_only.selected) == {"S_related", "S_shared_gene", "S_noise", "S_other"}
    assert not (tmp_path / "bio" / "stl").exists()  # no model was trained for the biology stage
    keep = select_assays(
        store,
        labels,
        assays,
        ASSOCIATIONS,
        train,
        val,
        tmp_path / "keep",
        SelectSettings(stages="biology", keep_without_genes=True),
        FAST,
        show_progress=False,
    )
    assert "S_no_genes" in keep.selected
    with pytest.raises(MomilError, match="needs protein associations"):
        select_assays(store, labels, assays, None, train, val, tmp_path / "x", SelectSettings(), FAST)
    assert not (tmp_path / "x").exists()  # refused before anything is written
    with pytest.raises(MomilError, match="stages must be"):
        SelectSettings(stages="biology,magic").stage_list()


def test_selection_sees_only_training_and_validation_wells(tmp_path, monkeypatch):
    import momil.training.fit as train_module
    import momil.training.inference as inference

    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=40)
    train, val, test = split(labels, store)
    loaded = []
    for module in (inference, train_module):  # every bag that selection and its fits read
        real = module.bag_batches

        def spy(store_, wells, *args, _real=real, **kwargs):
            loaded.append(np.asarray(wells).copy())
            return _real(store_, wells, *args, **kwargs)

        monkeypatch.setattr(module, "bag_batches", spy)
    select_assays(
        store,
        labels,
        assays,
        ASSOCIATIONS,
        train,
        val,
        tmp_path / "sel",
        SelectSettings(stl_head_dim=8),
        TrainSettings(epochs=2, warmup_epochs=0, batch_wells=16),
        show_progress=False,
    )
    seen = np.unique(np.concatenate(loaded))
    assert len(seen) and not np.isin(seen, test).any()


@pytest.mark.parametrize("executor", ["processes", "ray"])
def test_single_assay_models_fan_out_to_the_local_result(tmp_path, executor, monkeypatch):
    """Every single-assay model of the performance stage is one task of the executor; the table is the local one."""
    import momil.protocol.single_assay as single_assay
    from momil.protocol.executor import ExecutorSettings

    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=40)
    train, val, _ = split(labels, store)
    quick = TrainSettings(epochs=4, warmup_epochs=1, batch_wells=16, dropout=0.0, seed=0)
    common = (store, labels, assays, ASSOCIATIONS, train, val)
    local = select_assays(*common, tmp_path / "local", SETTINGS, quick, show_progress=False)

    def not_here(*args, **kwargs):
        raise AssertionError("a single-assay model was trained by the driver, not by a worker")

    monkeypatch.setattr(single_assay, "fit", not_here)  # the workers are other processes: they train as usual
    if executor == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runner = ExecutorSettings(executor, workers=2, threads=1)
        fanned = select_assays(*common, tmp_path / "fanned", SETTINGS, quick, show_progress=False, executor=runner)
    finally:
        if executor == "ray":
            ray.shutdown()
    assert fanned.selected == local.selected
    models = sorted(p.parent.name for p in (tmp_path / "fanned" / "stl").glob("*/model.pt"))
    assert models == sorted(p.parent.name for p in (tmp_path / "local" / "stl").glob("*/model.pt")) and models
    numeric = ["perf_auc", "influence_ratio"]
    pd.testing.assert_frame_equal(fanned.table.drop(columns=numeric), local.table.drop(columns=numeric))
    np.testing.assert_allclose(fanned.table[numeric], local.table[numeric], atol=1e-4)
