"""`momil ingest`: streaming two-pass ingest into the store, with every bad input refused before a store exists."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.errors import InputError
from momil.io.ingest import IngestSettings, _rows_per_chunk, ingest
from momil.io.store import InstanceStore

from conftest import tiny_instances, tiny_wells


def expected_bag(instances: pd.DataFrame, plate: str, well: str) -> np.ndarray:
    rows = instances[(instances["Metadata_Plate"] == plate) & (instances["Metadata_Well"] == well)]
    return rows[[c for c in instances.columns if c.startswith("feat")]].to_numpy(np.float32)


@pytest.mark.parametrize("shuffle", [False, True])
def test_ingest_keeps_file_order_within_wells(tmp_path, shuffle):
    wells = tiny_wells()
    instances = tiny_instances(wells, per_well=4, dim=3, shuffle=shuffle)
    wells.to_parquet(tmp_path / "wells.parquet")
    instances.to_parquet(tmp_path / "inst.parquet", row_group_size=5)
    store = ingest(
        tmp_path / "inst.parquet",
        tmp_path / "wells.parquet",
        tmp_path / "store",
        IngestSettings(memory_mb=1),
        show_progress=False,
    )
    assert store.n_wells == len(wells) and store.n_instances == len(instances)
    for i, row in store.wells.iterrows():
        np.testing.assert_array_equal(
            store.bag(i), expected_bag(instances, row["Metadata_Plate"], row["Metadata_Well"])
        )
        sites = instances[
            (instances["Metadata_Plate"] == row["Metadata_Plate"])
            & (instances["Metadata_Well"] == row["Metadata_Well"])
        ]["Metadata_Site"]
        assert list(store.instance_meta(i)["Metadata_Site"]) == list(sites)
    # plate-major order, control types and compounds carried over
    assert list(store.wells["Metadata_Plate"]) == sorted(store.wells["Metadata_Plate"])
    assert (store.wells["Metadata_ControlType"] == "negcon").sum() == 4
    assert store.manifest["history"][-1]["stage"] == "ingest"


def test_memory_bound_sets_chunk_rows():
    assert _rows_per_chunk(768, 512) == 512 * 1024 * 1024 // (768 * 16)
    assert _rows_per_chunk(768, 1) == 1024  # floor


def test_float16_and_csv(tmp_path):
    wells = tiny_wells()
    instances = tiny_instances(wells, dim=2)
    wells.to_csv(tmp_path / "wells.csv", index=False)
    instances.to_csv(tmp_path / "inst.csv", index=False)
    store = ingest(
        tmp_path / "inst.csv",
        tmp_path / "wells.csv",
        tmp_path / "store",
        IngestSettings(dtype="float16"),
        show_progress=False,
    )
    assert store.features.dtype == np.float16
    np.testing.assert_allclose(store.bag(0), expected_bag(instances, "P1", "A01"), atol=5e-3)


def test_unknown_well_refused_and_nothing_written(tmp_path):
    wells = tiny_wells()
    instances = tiny_instances(wells)
    instances.loc[4, "Metadata_Well"] = "H12"
    wells.to_parquet(tmp_path / "wells.parquet")
    instances.to_parquet(tmp_path / "inst.parquet")
    with pytest.raises(
        InputError,
        match=r"inst.parquet: instance row 5 belongs to well P1/H12, which "
        r"wells.parquet does not list",
    ):
        ingest(tmp_path / "inst.parquet", tmp_path / "wells.parquet", tmp_path / "store", show_progress=False)
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".store")]


def test_empty_bags_refused_or_dropped(tmp_path):
    wells = tiny_wells()
    instances = tiny_instances(wells)
    instances = instances[instances["Metadata_Well"] != "A03"]
    wells.to_parquet(tmp_path / "wells.parquet")
    instances.to_parquet(tmp_path / "inst.parquet")
    with pytest.raises(
        InputError,
        match=r"2 well\(s\) listed in wells.parquet have no instance \(empty bags: "
        r"P1/A03, P2/A03\).*--drop-empty-wells",
    ):
        ingest(tmp_path / "inst.parquet", tmp_path / "wells.parquet", tmp_path / "store", show_progress=False)
    assert not (tmp_path / "store").exists()
    with pytest.warns(UserWarning, match="they are dropped"):
        store = ingest(
            tmp_path / "inst.parquet",
            tmp_path / "wells.parquet",
            tmp_path / "store",
            IngestSettings(drop_empty_wells=True),
            show_progress=False,
        )
    assert store.n_wells == len(wells) - 2


def test_nan_in_late_chunk_leaves_no_store(tmp_path):
    wells = tiny_wells()
    instances = tiny_instances(wells, per_well=50)
    instances.loc[len(instances) - 3, "feat1"] = np.nan
    wells.to_parquet(tmp_path / "wells.parquet")
    instances.to_parquet(tmp_path / "inst.parquet", row_group_size=100)
    with pytest.raises(InputError, match="NaN or infinite"):
        ingest(
            tmp_path / "inst.parquet",
            tmp_path / "wells.parquet",
            tmp_path / "store",
            IngestSettings(memory_mb=1),
            show_progress=False,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inst.parquet", "wells.parquet"]


def test_existing_store_not_overwritten(tmp_path, tiny_screen):
    folder, _, _ = tiny_screen
    ingest(folder / "instances.parquet", folder / "wells.parquet", folder / "store", show_progress=False)
    with pytest.raises(Exception, match="already exists"):
        ingest(folder / "instances.parquet", folder / "wells.parquet", folder / "store", show_progress=False)
    store = ingest(
        folder / "instances.parquet",
        folder / "wells.parquet",
        folder / "store",
        IngestSettings(overwrite=True),
        show_progress=False,
    )
    assert isinstance(store, InstanceStore)
