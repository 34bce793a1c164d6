"""`momil benchmark`: every method through one protocol, Table 2 with bootstrap p-values, reuse of runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import momil.evaluate as evaluate
from momil.benchmark import BenchmarkSettings, run_benchmark
from momil.errors import MomilError
from momil.evaluate import CVSettings
from momil.selection import SelectSettings
from momil.train import TrainSettings
from test_selection import ASSOCIATIONS, planted_screen


def _folds(labels, k=5):
    compounds = list(labels.compounds)
    return pd.DataFrame({"Metadata_Compound": compounds, "fold": [i % k for i in range(len(compounds))]})


def test_benchmark_table_pvalues_and_reuse(tmp_path, monkeypatch):
    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=60, density=0.8)
    folds = _folds(labels)
    settings = BenchmarkSettings(methods="instance-count,mean-mlp,momil-stl,momil-all,momil-as", focus="momil-as",
                                 reference="mean-mlp", n_boot=200, probes=3, shots="5,all", probe_repeats=2)
    cv = CVSettings(projector_dims="8", head_dims="8", lrs="3e-3", rotations="0,1")
    train = TrainSettings(epochs=6, warmup_epochs=1, batch_wells=16, dropout=0.0)
    select = SelectSettings(stl_head_dim=8, stl_lr=1e-2)
    result = run_benchmark(store, labels, folds, assays, ASSOCIATIONS, tmp_path / "bench", settings, cv, train,
                           select, show_progress=False)
    table = result.table.set_index("method")
    assert list(table.index) == ["instance-count", "mean-mlp", "momil-stl", "momil-all", "momil-as"]
    assert table["P"].between(0, 1).all() and (table["mean"] == table["P"]).all()  # one primary assay
    assert table.loc["instance-count", "P"] == pytest.approx(0.5, abs=0.2)  # counts carry nothing here
    text = (tmp_path / "bench" / "table2.md").read_text()
    assert "MoMIL + AS" in text and "p-value, MoMIL + AS > FM -> Mean -> MLP" in text
    pvalues = pd.read_csv(tmp_path / "bench" / "pvalues.csv")
    assert set(pvalues["other"]) == {"instance-count", "mean-mlp", "momil-stl", "momil-all"}
    assert pvalues["p_value"].between(0, 1).all()
    assert (tmp_path / "bench" / "selection" / "rot0" / "selection.json").exists()
    # Table 3: unseen assays (associated with P, selected in no rotation) probed on the MTL and STL heads
    table3 = result.table3
    assert table3 is not None and len(table3) and set(table3["primary"]) == {"P"}
    assert {"MoMIL + AS head (MTL)", "STL head of the primary", "single-task model on the assay"} <= set(table3["source"])
    assert not set(table3["assay"]) & set(pd.read_csv(tmp_path / "bench" / "selection" / "rot0" / "selection.csv")
                                          .query("selected")["assay"])
    assert "single-task model" in (tmp_path / "bench" / "table3.md").read_text()
    # the report: one offline HTML page with the tables and figures
    page = (tmp_path / "bench" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http://" not in page.replace(
        "http://www.w3.org/2000/svg", "")
    assert "Table 2" in page and "Table 3" in page and page.count("<svg") >= 3 and "Attention" in page
    attention = pd.read_parquet(tmp_path / "bench" / "attention.parquet")
    sums = attention.groupby(["Metadata_Plate", "Metadata_Well", "assay"])["attention"].sum()
    assert len(sums) and np.allclose(sums, 1.0, atol=1e-5)
    record = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert record["methods"] == list(table.index)

    # a second run reuses every finished method: nothing is trained again, same table
    def refuse(*args, **kwargs):
        raise AssertionError("cross_validate called again")
    monkeypatch.setattr(evaluate, "cross_validate", refuse)
    again = run_benchmark(store, labels, folds, assays, ASSOCIATIONS, tmp_path / "bench", settings, cv, train, select,
                          show_progress=False)
    pd.testing.assert_frame_equal(again.table, result.table)


def test_benchmark_checks_its_settings(tmp_path):
    with pytest.raises(MomilError, match="unknown method"):
        BenchmarkSettings(methods="momil-all,magic").method_list()
    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=20)
    with pytest.raises(MomilError, match="need protein associations"):
        run_benchmark(store, labels, _folds(labels), assays, None, tmp_path / "b",
                      BenchmarkSettings(methods="momil-as"), show_progress=False)
    assert not (tmp_path / "b").exists()


def test_report_from_the_shell_refuses_a_folder_without_a_benchmark(tmp_path, capsys):
    from momil.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "run `momil benchmark` first" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
