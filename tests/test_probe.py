"""The linear probe of instance features on compound classes, and the simulator's classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.imaging.probe import linear_probe, well_means
from momil.io.store import InstanceStore, StoreWriter
from momil.simulate import SimulateSettings, compound_classes, simulate


def _store(path, informative: bool):
    rng = np.random.default_rng(0)
    classes = {}
    with StoreWriter.create(path, dim=4) as writer:
        for c in range(40):
            label = c % 2
            classes[f"c{c}"] = f"class{label}"
            bag = rng.normal(size=(5, 4))
            if informative:
                bag[:, 0] += 3.0 * label
            writer.add_bag({"Metadata_Plate": "P", "Metadata_Well": f"W{c:03d}", "Metadata_Batch": "b",
                            "Metadata_Compound": f"c{c}", "Metadata_ControlType": "trt"}, bag)
    return InstanceStore(path), pd.Series(classes)


def test_probe_tells_informative_features_from_noise(tmp_path):
    good, classes = _store(tmp_path / "good", True)
    noise, _ = _store(tmp_path / "noise", False)
    a, b = linear_probe(good, classes), linear_probe(noise, classes)
    assert a["wells"] == 40 and a["classes"] == 2 and a["majority"] == 0.5
    assert a["accuracy"] > 0.9 and a["roc_auc"] > 0.95
    assert b["accuracy"] < 0.75
    x, y = well_means(good, classes.iloc[:10])  # wells of compounds without a class are left out
    assert x.shape == (10, 4) and set(y) == {"class0", "class1"}
    with pytest.raises(MomilError, match="two classes"):
        linear_probe(good, classes.iloc[:4])


def test_simulated_compound_classes(tmp_path):
    simulate(tmp_path / "s", SimulateSettings(n_compounds=30, n_assays=4, n_primary=2, n_targets=3, instances=4,
                                              replicates=1), show_progress=False)
    classes = compound_classes(tmp_path / "s")
    potency = pd.read_parquet(tmp_path / "s" / "truth" / "compound_potency.parquet").set_index("Metadata_Compound")
    assert len(classes) == 30 and set(classes) <= {"inactive", "target_0", "target_1", "target_2"}
    for compound, value in classes.items():
        row = potency.loc[compound]
        assert value == ("inactive" if (row <= 0).all() else row.idxmax())
    with pytest.raises(MomilError, match="compound_potency"):
        compound_classes(tmp_path)
