"""The instance store: ragged memory-mapped bags, atomic commits, appends that survive interruption."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.io.store import InstanceStore, StoreWriter


def well(plate, name, compound="C1", control="trt"):
    return {
        "Metadata_Plate": plate,
        "Metadata_Well": name,
        "Metadata_Batch": "B1",
        "Metadata_Compound": compound,
        "Metadata_ControlType": control,
    }


def test_bags_round_trip_and_are_views(tmp_path):
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(n, 3)).astype(np.float32) for n in (2, 5, 1)]
    with StoreWriter.create(tmp_path / "s", dim=3, feature_names=["a", "b", "c"]) as writer:
        for i, bag in enumerate(bags):
            writer.add_bag(well("P1", f"A0{i + 1}"), bag, meta=pd.DataFrame({"Metadata_Site": np.arange(len(bag)) + 1}))
    store = InstanceStore(tmp_path / "s")
    assert store.n_wells == 3 and store.n_instances == 8 and store.feature_names == ["a", "b", "c"]
    for i, bag in enumerate(bags):
        got = store.bag(i)
        np.testing.assert_array_equal(got, bag)
        assert isinstance(got, np.memmap)  # a view into the file, not a copy of the store
        assert np.shares_memory(got, store.features)
    assert list(store.offsets) == [0, 2, 7] and list(store.counts) == [2, 5, 1]
    assert list(store.instance_meta(1)["Metadata_Site"]) == [1, 2, 3, 4, 5]
    assert store.well_index("P1", "A03") == 2
    np.testing.assert_array_equal(store.read_rows(2, 7), bags[1])


def test_float16_store(tmp_path):
    data = np.linspace(-3, 3, 12, dtype=np.float32).reshape(4, 3)
    with StoreWriter.create(tmp_path / "s", dim=3, dtype="float16") as writer:
        writer.add_bag(well("P1", "A01"), data)
    store = InstanceStore(tmp_path / "s")
    assert store.features.dtype == np.float16
    assert (tmp_path / "s" / "features.bin").stat().st_size == 4 * 3 * 2
    np.testing.assert_allclose(store.bag(0), data, atol=2e-3)


def test_interrupted_create_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter.create(tmp_path / "s", dim=2) as writer:
            writer.add_bag(well("P1", "A01"), np.ones((3, 2)))
            raise RuntimeError("killed")
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MomilError, match="not an instance store"):
        InstanceStore(tmp_path / "s")


def test_store_without_manifest_does_not_open(tmp_path):
    with StoreWriter.create(tmp_path / "s", dim=2) as writer:
        writer.add_bag(well("P1", "A01"), np.ones((3, 2)))
    (tmp_path / "s" / "manifest.json").unlink()
    with pytest.raises(MomilError, match="never completed"):
        InstanceStore(tmp_path / "s")


def test_append_and_interrupted_append(tmp_path):
    with StoreWriter.create(tmp_path / "s", dim=2) as writer:
        writer.add_bag(well("P1", "A01"), np.ones((3, 2)))
    # an append that dies after writing rows but before its commit
    with pytest.raises(RuntimeError):
        with StoreWriter.append_to(tmp_path / "s") as writer:
            writer.add_bag(well("P1", "A02"), np.full((4, 2), 7.0))
            raise RuntimeError("killed")
    store = InstanceStore(tmp_path / "s")
    assert store.n_wells == 1 and store.n_instances == 3
    # a crash that skips abort entirely (kill -9): rows past the committed end, manifest untouched
    with open(tmp_path / "s" / "features.bin", "ab") as handle:
        handle.write(np.full((5, 2), 9.0, dtype=np.float32).tobytes())
    assert InstanceStore(tmp_path / "s").n_instances == 3
    with StoreWriter.append_to(tmp_path / "s") as writer:
        writer.add_bag(well("P2", "A01"), np.full((2, 2), 5.0))
    store = InstanceStore(tmp_path / "s")
    assert store.n_instances == 5 and store.n_wells == 2
    np.testing.assert_array_equal(store.bag(1), np.full((2, 2), 5.0))
    assert (tmp_path / "s" / "features.bin").stat().st_size == 5 * 2 * 4
    wells_files = list((tmp_path / "s").glob("wells-*.parquet"))
    assert len(wells_files) == 1  # the old index generation is gone


def test_append_refuses_duplicates_and_widths(tmp_path):
    with StoreWriter.create(tmp_path / "s", dim=2) as writer:
        writer.add_bag(well("P1", "A01"), np.ones((3, 2)))
    with pytest.raises(Exception, match="already in the store"):
        with StoreWriter.append_to(tmp_path / "s") as writer:
            writer.add_bag(well("P1", "A01"), np.ones((1, 2)))
    with pytest.raises(MomilError, match=r"expected \(n, 2\)"):
        with StoreWriter.append_to(tmp_path / "s") as writer:
            writer.add_bag(well("P1", "A09"), np.ones((1, 3)))
    with pytest.raises(MomilError, match="NaN"):
        with StoreWriter.append_to(tmp_path / "s") as writer:
            writer.add_bag(well("P1", "A09"), np.array([[np.nan, 1.0]]))
    assert InstanceStore(tmp_path / "s").n_instances == 3


def test_existing_output_needs_overwrite(tmp_path):
    with StoreWriter.create(tmp_path / "s", dim=1) as writer:
        writer.add_bag(well("P1", "A01"), np.ones((1, 1)))
    with pytest.raises(MomilError, match="already exists"):
        StoreWriter.create(tmp_path / "s", dim=1)
    with StoreWriter.create(tmp_path / "s", dim=1, overwrite=True) as writer:
        writer.add_bag(well("P1", "A01"), np.zeros((2, 1)))
    assert InstanceStore(tmp_path / "s").n_instances == 2


def test_manifest_records_provenance(tmp_path):
    with StoreWriter.create(tmp_path / "s", dim=1) as writer:
        writer.add_bag(well("P1", "A01"), np.ones((1, 1)))
        writer.set_provenance({"stage": "test", "settings": {"x": 1}})
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["history"][-1]["stage"] == "test"
