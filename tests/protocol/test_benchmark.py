"""`momil benchmark`: every method through one protocol, Table 2 with bootstrap p-values, reuse of runs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import momil.protocol.cv as evaluate
from momil.errors import MomilError
from momil.protocol.benchmark import BenchmarkSettings, run_benchmark
from momil.protocol.cv import CVSettings
from momil.protocol.selection import SelectSettings
from momil.training.settings import TrainSettings
from test_selection import ASSOCIATIONS, planted_screen

from conftest import render_screen


def _folds(labels, k=5):
    compounds = list(labels.compounds)
    return pd.DataFrame({"Metadata_Compound": compounds, "fold": [i % k for i in range(len(compounds))]})


def test_benchmark_table_pvalues_and_reuse(tmp_path, monkeypatch):
    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=60, density=0.8)
    folds = _folds(labels)
    settings = BenchmarkSettings(
        methods="instance-count,mean-mlp,momil-stl,momil-all,momil-as",
        focus="momil-as",
        reference="mean-mlp",
        n_boot=200,
        probes=3,
        shots="5,all",
        probe_repeats=2,
    )
    cv = CVSettings(projector_dims="8", head_dims="8", lrs="3e-3", rotations="0,1")
    train = TrainSettings(epochs=6, warmup_epochs=1, batch_wells=16, dropout=0.0)
    select = SelectSettings(stl_head_dim=8, stl_lr=1e-2)
    result = run_benchmark(
        store, labels, folds, assays, ASSOCIATIONS, tmp_path / "bench", settings, cv, train, select, show_progress=False
    )
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
    assert {"MoMIL + AS head (MTL)", "STL head of the primary", "single-task model on the assay"} <= set(
        table3["source"]
    )
    assert not set(table3["assay"]) & set(
        pd.read_csv(tmp_path / "bench" / "selection" / "rot0" / "selection.csv").query("selected")["assay"]
    )
    assert "single-task model" in (tmp_path / "bench" / "table3.md").read_text()
    # the report: one offline HTML page with the tables and figures
    page = (tmp_path / "bench" / "report.html").read_text()
    assert (
        page.startswith("<!DOCTYPE html>")
        and "<script" not in page
        and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    )
    assert "Table 2" in page and "Table 3" in page and "Attention" in page
    # the figures: matplotlib's, embedded as PNG and saved beside the page as PNG and SVG
    assert page.count("data:image/png;base64,") >= 4 and "Assay selection" in page
    # the planted screen has no negcon wells: no phenotypic activity to report (tests/test_retrieval.py has one)
    assert "phenotypic activity" not in page and not (tmp_path / "bench" / "retrieval.csv").exists()
    for name in ("auc_bars", "roc_curves", "selection_funnel", "attention_0"):
        png, svg = tmp_path / "bench" / "figures" / f"{name}.png", tmp_path / "bench" / "figures" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in svg.read_text()[:2000], name
    attention = pd.read_parquet(tmp_path / "bench" / "attention.parquet")
    sums = attention.groupby(["Metadata_Plate", "Metadata_Well", "assay"])["attention"].sum()
    assert len(sums) and np.allclose(sums, 1.0, atol=1e-5)
    record = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    assert record["methods"] == list(table.index)

    # a second run reuses every finished method: nothing is trained again, same table
    def refuse(*args, **kwargs):
        raise AssertionError("cross_validate called again")

    monkeypatch.setattr(evaluate, "cross_validate", refuse)
    again = run_benchmark(
        store, labels, folds, assays, ASSOCIATIONS, tmp_path / "bench", settings, cv, train, select, show_progress=False
    )
    pd.testing.assert_frame_equal(again.table, result.table)

    # with other settings a finished method is not silently reused: the folder and the first changed setting named
    def bench_again(cv, train):
        return run_benchmark(
            store, labels, folds, assays, ASSOCIATIONS, tmp_path / "bench", settings, cv, train, select, None, False
        )

    with pytest.raises(MomilError, match=r"instance-count was run with other train settings \(epochs: 6, now 7\)"):
        bench_again(cv, dataclasses.replace(train, epochs=7))
    # a folder made before a setting existed counts it at its default
    record_path = tmp_path / "bench" / "runs" / "mean-mlp" / "summary.json"
    record = json.loads(record_path.read_text())
    record["settings"]["train"].pop("linear_floor")
    record_path.write_text(json.dumps(record))
    # who runs the fits does not matter
    fanned = dataclasses.replace(cv, executor="processes", workers=2)
    rerun = bench_again(fanned, train)
    pd.testing.assert_frame_equal(rerun.table, result.table)


def test_benchmark_checks_its_settings(tmp_path):
    with pytest.raises(MomilError, match="unknown method"):
        BenchmarkSettings(methods="momil-all,magic").method_list()
    store, labels, assays, _ = planted_screen(tmp_path / "store", n_compounds=20)
    with pytest.raises(MomilError, match="need protein associations"):
        run_benchmark(
            store,
            labels,
            _folds(labels),
            assays,
            None,
            tmp_path / "b",
            BenchmarkSettings(methods="momil-as"),
            show_progress=False,
        )
    assert not (tmp_path / "b").exists()


def test_report_from_the_shell_refuses_a_folder_without_a_benchmark(tmp_path, capsys):
    from momil.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "run `momil benchmark` first" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_attention_drawn_on_the_fields_of_an_image_store(tmp_path):
    """An extracted store remembers its fields: the report shows them with the tiles outlined by attention."""
    import struct
    import warnings

    from momil.imaging.extract import ExtractSettings, extract
    from momil.imaging.fields import FieldSettings
    from momil.model.momil import MoMIL
    from momil.protocol.benchmark import attention_examples
    from momil.report import figures
    from momil.report.html import render_report
    from momil.training.checkpoints import save_model

    render_screen(tmp_path / "s", n_compounds=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = extract(
            tmp_path / "s" / "load_data.parquet",
            tmp_path / "s" / "wells.parquet",
            tmp_path / "store",
            FieldSettings(size=64, tile=32, stride=16, drop_background=False),
            ExtractSettings(backbone="vit-tiny", device="cpu", dtype="float32"),
            show_progress=False,
        ).store
    (tmp_path / "bench" / "models").mkdir(parents=True)
    save_model(tmp_path / "bench" / "models" / "rot0_model0.pt", MoMIL(store.dim, ["a"], projector_dim=8, head_dim=4))
    trt = store.wells[store.wells["Metadata_ControlType"] == "trt"]
    scored = pd.DataFrame(
        {"Metadata_Compound": trt["Metadata_Compound"], "assay": "a", "probability": 0.9, "fold": 0, "label": 1}
    )
    table = attention_examples(
        store, tmp_path / "bench" / "models", scored, ["a"], tmp_path / "bench" / "attention.parquet"
    )
    assert table is not None and {"Metadata_TileY", "Metadata_TileX", "Metadata_Site"} <= set(table.columns)
    pngs = sorted((tmp_path / "bench" / "fields").glob("*.png"))
    assert len(pngs) == table.groupby(["Metadata_Plate", "Metadata_Well"]).ngroups
    data = pngs[0].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (64, 64)
    pd.DataFrame({"method": ["m"], "label": ["M"], "a": [0.5], "mean": [0.5]}).to_csv(
        tmp_path / "bench" / "table2.csv", index=False
    )
    (tmp_path / "bench" / "table2.md").write_text("| method | a | mean |\n|---|---|---|\n| M | 0.5 | 0.5 |\n")
    page = render_report(tmp_path / "bench").read_text()
    assert "data:image/png;base64," in page and "tiles by attention" in page
    views = sorted((tmp_path / "bench" / "figures").glob("attention_*_site_*.svg"))
    assert views and all(v.with_suffix(".png").exists() for v in views)
    # each tile of the field shaded by its weight: one patch per tile (3 x 3 at tile 32, stride 16 on 64 px)
    first = table.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]).get_group(
        tuple(table[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].iloc[0])
    )
    view = figures.attention_field(np.zeros((64, 64, 3)), 1.0, 32, first)
    assert len(view.axes[0].patches) == len(first) == 9


def test_table2_cells_in_markdown_and_html_keep_their_pipes_and_marks():
    from momil.protocol.benchmark import markdown_table, table2_cells
    from momil.report.html import table_html

    table = pd.DataFrame(
        {"method": ["momil-all", "mean-lr"], "label": ["MoMIL (|T| = all)", "FM -> Mean -> LR"], "a": [0.812, 0.7]}
    ).assign(mean=lambda f: f["a"])
    pvalues = pd.DataFrame({"assay": ["a", "mean"], "other": "mean-lr", "p_value": [0.01, 0.2], "focus": "momil-all"})
    cells, bold = table2_cells(table, pvalues, "momil-all", "mean-lr")
    assert cells["a"].tolist() == ["0.812†", "0.700", "0.01"] and bold["a"].tolist() == [True, False, False]
    text = markdown_table(cells, bold)
    assert "| MoMIL (\\|T\\| = all) | **0.812†** |" in text
    page = table_html(cells, bold)
    assert ">MoMIL (|T| = all)</td>" in page and "font-weight: bold" in page and "FM -&gt; Mean -&gt; LR" in page
