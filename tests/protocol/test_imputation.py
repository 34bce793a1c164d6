"""Conformal label imputation: thresholds by hand, labels only for unlabelled training wells, self-training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from momil.data.pairs import WellPairs
from momil.errors import MomilError
from momil.io.contract import LabelMatrix
from momil.io.store import InstanceStore, StoreWriter
from momil.protocol.imputation import ImputeSettings, conformal_thresholds, impute_round, imputed_counts, self_train
from momil.training.settings import TrainSettings
from test_selection import planted_screen, split


def test_thresholds_by_hand():
    # assay 0 (primary): correct wells have probabilities 0.0 0.1 0.2 0.4 | 0.6 0.8 0.9 1.0; two are wrong
    # assay 1 (secondary): the same numbers; assay 2: only inactives are called right; assay 3: too few wells
    probs = [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 0.3, 0.7]
    truth = [0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    assay = np.array([0] * 10 + [1] * 10 + [2] * 5 + [3] * 2)
    label = np.array(truth + truth + [0, 0, 0, 0, 1] + [1, 0], dtype=float)
    prob = np.array(probs + probs + [0.1, 0.2, 0.3, 0.4, 0.45] + [0.9, 0.1])
    table = conformal_thresholds(
        assay,
        label,
        prob,
        ["p", "s", "neg-only", "few"],
        np.array([False, True, False, False]),
        ImputeSettings(min_correct=4),
    )
    table = table.set_index("assay")
    # 8 sorted correct values, linear interpolation: q = 0.9 -> position 6.3 -> 0.9 + 0.3 * 0.1
    assert table.loc["p", "n_correct"] == 8 and table.loc["p", "n_val"] == 10
    assert table.loc["p", "th_pos"] == pytest.approx(0.93) and table.loc["p", "th_neg"] == pytest.approx(0.07)
    # secondary: p + alpha = 0.95 -> position 6.65; 0.05 -> position 0.35
    assert table.loc["s", "quantile"] == pytest.approx(0.95)
    assert table.loc["s", "th_pos"] == pytest.approx(0.965) and table.loc["s", "th_neg"] == pytest.approx(0.035)
    # only inactives called right: no active is ever imputed; the inactive threshold is the 10th percentile
    assert np.isnan(table.loc["neg-only", "th_pos"])
    assert table.loc["neg-only", "th_neg"] == pytest.approx(0.13)
    # fewer correct wells than min_correct: no thresholds
    assert np.isnan(table.loc["few", "th_pos"]) and np.isnan(table.loc["few", "th_neg"])


def test_thresholds_never_cross_one_half():
    # correct wells are mostly inactive, so the raw 90th percentile (0.4) lies below 0.5: clipped to 0.5
    prob = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.4, 0.4, 0.4, 0.4, 0.95])
    label = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=float)
    table = conformal_thresholds(
        np.zeros(10, int), label, prob, ["a"], np.array([False]), ImputeSettings(min_correct=1)
    )
    assert table["th_pos"].iloc[0] == 0.5 and table["th_neg"].iloc[0] < 0.5


class MeanFeatureModel:
    """A stand-in model: probability of assay t = sigmoid(mean of feature t over the bag)."""

    def __init__(self, assays):
        self.assays = list(assays)

    def eval(self):
        return self

    def predict(self, bags, mask, assays=None):
        means = (bags * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return torch.sigmoid(means[:, : len(self.assays)])


def _store(path, values):
    with StoreWriter.create(path, dim=2) as writer:
        for i, (a, b) in enumerate(values):
            writer.add_bag(
                {
                    "Metadata_Plate": "P",
                    "Metadata_Well": f"W{i:02d}",
                    "Metadata_Batch": "b",
                    "Metadata_Compound": f"c{i}",
                    "Metadata_ControlType": "trt",
                },
                np.array([[a, b], [a, b]], dtype=np.float32),
            )
    return InstanceStore(path)


def test_impute_round_labels_only_unlabelled_training_pairs(tmp_path):
    # logits per well for assays x and y; sigmoid(3) = 0.95, sigmoid(-3) = 0.05, sigmoid(0) = 0.5
    store = _store(tmp_path / "s", [(3, 3), (-3, 0), (0, -3), (3, -3), (3, 3)])
    labels = LabelMatrix.from_long(pd.DataFrame({"Metadata_Compound": ["c0"], "assay": ["x"], "label": [1]}))
    pairs = WellPairs.build(store.wells, labels, ["x", "y"])
    thresholds = pd.DataFrame({"assay": ["x", "y"], "th_pos": [0.9, 0.9], "th_neg": [0.1, np.nan]})
    train = np.array([0, 1, 2, 3])  # well 4 is not a training well
    new = impute_round(MeanFeatureModel(["x", "y"]), store, pairs, train, thresholds, "cpu")
    got = {(int(w), a): int(y) for w, a, y in zip(new["well"], new["assay"], new["label"])}
    # (0, x) is measured; y has no negative threshold; well 4 is never touched
    assert got == {(0, "y"): 1, (1, "x"): 0, (3, "x"): 1}
    assert set(new.columns) >= {"well", "assay", "label", "probability", "th_pos", "th_neg"}


def test_settings_are_checked():
    with pytest.raises(MomilError, match="alpha"):
        ImputeSettings(confidence=0.9, alpha=0.2).check()
    with pytest.raises(MomilError, match="confidence"):
        ImputeSettings(confidence=0.3).check()


def test_self_training_adds_correct_labels_to_training_wells_only(tmp_path):
    store, labels, _, truth = planted_screen(tmp_path / "store", n_compounds=90, density=0.5, seed=3)
    train, val, test = split(labels, store)
    assays = ["P", "S_related", "S_other"]
    settings = TrainSettings(
        epochs=20,
        warmup_epochs=2,
        patience=20,
        batch_wells=16,
        dropout=0.0,
        lr=3e-3,
        projector_dim=16,
        head_dim=16,
        seed=0,
    )

    def run(impute: ImputeSettings, folder: str):
        out = tmp_path / folder
        return self_train(store, labels, assays, ["P"], train, val, settings, impute, out, show_progress=False)

    result = run(ImputeSettings(rounds=2, keep_best_round=True), "imp")
    imputed = result.imputed
    assert len(imputed) > 20  # dozens of labels (35 at this seed), nearly all correct (below)
    assert np.isin(imputed["well"], train).all()  # never a validation or test well
    known = set(zip(*labels.to_long()[["Metadata_Compound", "assay"]].to_numpy().T))
    assert not any((c, a) in known for c, a in zip(imputed["Metadata_Compound"], imputed["assay"]))
    true = truth.set_index(["Metadata_Compound", "assay"])["label"]
    hits = [true[(c, a)] == y for c, a, y in zip(imputed["Metadata_Compound"], imputed["assay"], imputed["label"])]
    assert np.mean(hits) > 0.9, np.mean(hits)
    assert set(imputed["round"]) <= {1, 2} and list(result.rounds["round"])[0] == 0
    rounds = result.rounds
    assert rounds["kept"].sum() == 1 and rounds.loc[rounds["kept"], "val_auc"].iloc[0] == rounds["val_auc"].max()
    assert result.fit.best_score == rounds["val_auc"].max()
    # counts per assay and round agree with the thresholds table and the files written
    counts = imputed_counts(imputed)
    th = result.thresholds.set_index(["round", "assay"])
    for _, row in counts.iterrows():
        assert th.loc[(row["round"], row["assay"]), "imputed_pos"] == row["positive"]
    assert th.loc[(1, "S_other"), "quantile"] == pytest.approx(0.95)  # secondary: p + alpha
    saved = pd.read_parquet(tmp_path / "imp" / "imputed_labels.parquet")
    assert len(saved) == len(imputed)
    record = json.loads((tmp_path / "imp" / "imputation.json").read_text())
    assert record["summary"]["imputed_labels"] == len(imputed)
    # running again reuses every round's checkpoint and gives the same labels
    again = run(ImputeSettings(rounds=2, keep_best_round=True), "imp")
    pd.testing.assert_frame_equal(again.imputed, imputed)
    # with a cap, every assay and class holds at most max_ratio x its measured training labels
    capped = run(ImputeSettings(rounds=2, keep_best_round=True, max_ratio=0.25), "imp-capped")
    pairs = WellPairs.build(store.wells, labels, assays)
    _, m_assay, m_label = pairs.pairs(pairs.labelled_wells(np.asarray(train)))
    measured = pd.DataFrame({"assay": np.array(assays, dtype=object)[m_assay], "label": m_label})
    limit = (measured.groupby(["assay", "label"]).size() * 0.25).astype(int)
    counts = capped.imputed.groupby(["assay", "label"]).size()
    assert len(capped.imputed) and all(counts[key] <= limit.get(key, 0) for key in counts.index)
    assert len(capped.imputed) < len(imputed)


def test_last_round_is_kept_by_default(tmp_path):
    store, labels, _, _ = planted_screen(tmp_path / "store", n_compounds=50, density=0.5, seed=1)
    train, val, _ = split(labels, store)
    settings = TrainSettings(
        epochs=6, warmup_epochs=1, batch_wells=16, dropout=0.0, lr=3e-3, projector_dim=8, head_dim=8
    )
    result = self_train(
        store,
        labels,
        ["P", "S_related"],
        ["P"],
        train,
        val,
        settings,
        ImputeSettings(rounds=2, min_correct=2),
        tmp_path / "imp",
        show_progress=False,
    )
    assert bool(result.rounds["kept"].iloc[-1]) and result.rounds["kept"].sum() == 1
    assert result.summary()["kept_round"] == int(result.rounds["round"].iloc[-1])


def test_the_cap_keeps_the_most_confident_imputed_labels_per_assay_and_class():
    from momil.protocol.imputation import cap_imputed

    measured = pd.DataFrame({"assay": ["a"] * 6 + ["b"] * 2, "label": [1, 1, 0, 0, 0, 0, 1, 0]})
    new = pd.DataFrame(
        {
            "well": np.arange(8),
            "assay": ["a", "a", "a", "a", "a", "b", "b", "b"],
            "label": [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
            "probability": [0.95, 0.75, 0.85, 0.05, 0.2, 0.9, 0.1, 0.01],
            "th_pos": 0.7,
            "th_neg": 0.3,
        }
    )
    earlier = pd.DataFrame({"assay": ["a"], "label": [0.0]})
    kept = cap_imputed(new, earlier, measured, ratio=0.5)
    # a: 2 measured actives -> 1 imputed active (the 0.95); 4 measured inactives -> 2, one used earlier -> the 0.05
    # b: 1 measured active and 1 inactive -> 0 of each (int(0.5) = 0)
    assert kept["well"].tolist() == [0, 3]
    assert cap_imputed(new, earlier, measured, ratio=0).equals(new)  # no cap: the paper's
    assert len(cap_imputed(new, earlier.head(0), measured, ratio=10)) == len(new)
