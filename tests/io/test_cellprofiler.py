"""Per-cell CellProfiler output -> instance table -> store (the engineered-feature baseline's input)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from momil.cli import main
from momil.errors import InputError
from momil.io.cellprofiler import read_cellprofiler
from momil.io.store import InstanceStore

from conftest import real_data

FOLDER = ("single-cell", "cellprofiler-BR00121431-A01-1")


def test_real_cellprofiler_site_merges_compartments():
    folder = real_data(*FOLDER)
    table, report = read_cellprofiler(folder)
    assert report["cells"] == len(table) == 89 and report["images"] == 1
    assert set(table["Metadata_Well"]) == {"A01"} and set(table["Metadata_Plate"]) == {"BR00121431"}
    # every cytoplasm row carries its own cell's and nucleus' measurements
    cyto = pd.read_csv(folder / "Cytoplasm.csv")
    cells = pd.read_csv(folder / "Cells.csv").set_index(["ImageNumber", "ObjectNumber"])
    nuclei = pd.read_csv(folder / "Nuclei.csv").set_index(["ImageNumber", "ObjectNumber"])
    row = table.iloc[5]
    source = cyto[
        (cyto["ImageNumber"] == row["Metadata_ImageNumber"]) & (cyto["ObjectNumber"] == row["Metadata_ObjectNumber"])
    ].iloc[0]
    assert row["Cells_AreaShape_Area"] == pytest.approx(
        cells.loc[(source["ImageNumber"], source["Parent_Cells"]), "AreaShape_Area"]
    )
    assert row["Nuclei_AreaShape_Area"] == pytest.approx(
        nuclei.loc[(source["ImageNumber"], source["Parent_Nuclei"]), "AreaShape_Area"]
    )
    assert row["Cytoplasm_AreaShape_Area"] == pytest.approx(source["AreaShape_Area"])
    # identifiers and positions are not features
    features = [c for c in table.columns if not c.startswith("Metadata_")]
    assert not [c for c in features if "ObjectNumber" in c or "Location_" in c or "Parent_" in c or "_Center_" in c]
    assert report["features"] == len(features) > 150  # tests/data keeps AreaShape and mean intensities (165)


def test_cells_to_store_from_the_shell(tmp_path, capsys):
    folder = real_data(*FOLDER)
    assert main(["cells", "--cellprofiler", str(folder), "--out", str(tmp_path / "cells.parquet")]) == 0
    assert "89 cells" in capsys.readouterr().out
    pd.DataFrame(
        {
            "Metadata_Plate": ["BR00121431"],
            "Metadata_Well": ["A1"],
            "Metadata_Compound": ["DMSO"],
            "Metadata_ControlType": ["negcon"],
            "Metadata_Batch": ["b"],
        }
    ).to_parquet(tmp_path / "wells.parquet")
    assert (
        main(
            [
                "ingest",
                "--instances",
                str(tmp_path / "cells.parquet"),
                "--wells",
                str(tmp_path / "wells.parquet"),
                "--out",
                str(tmp_path / "store"),
                "--quiet",
            ]
        )
        == 0
    )
    store = InstanceStore(tmp_path / "store")
    assert store.n_instances == 89 and store.counts[0] == 89 and store.dim > 150


def test_bad_cellprofiler_output_is_refused(tmp_path):
    folder = real_data(*FOLDER)
    copy = tmp_path / "cp"
    shutil.copytree(folder, copy)
    (copy / "Image.csv").unlink()
    with pytest.raises(InputError, match="Image.csv"):
        read_cellprofiler(copy)
    shutil.copy(folder / "Image.csv", copy / "Image.csv")
    cyto = pd.read_csv(copy / "Cytoplasm.csv").drop(columns=["Parent_Cells"])
    cyto.to_csv(copy / "Cytoplasm.csv", index=False)
    with pytest.raises(InputError, match="Parent_Cells"):
        read_cellprofiler(copy)
    shutil.copy(folder / "Cytoplasm.csv", copy / "Cytoplasm.csv")
    cells = pd.read_csv(copy / "Cells.csv")
    cells.loc[3, "AreaShape_Area"] = np.nan  # an undefined measurement: the feature is dropped
    cells.to_csv(copy / "Cells.csv", index=False)
    table, report = read_cellprofiler(copy)
    assert report["dropped_non_finite"] == 1 and "Cells_AreaShape_Area" not in table.columns
