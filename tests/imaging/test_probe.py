"""The linear probe of instance features on compound classes, and the simulator's classes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.imaging.probe import linear_probe, well_means
from momil.io.store import InstanceStore, StoreWriter
from momil.simulate.screen import SimulateSettings, compound_classes, simulate


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
            writer.add_bag(
                {
                    "Metadata_Plate": "P",
                    "Metadata_Well": f"W{c:03d}",
                    "Metadata_Batch": "b",
                    "Metadata_Compound": f"c{c}",
                    "Metadata_ControlType": "trt",
                },
                bag,
            )
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
    simulate(
        tmp_path / "s",
        SimulateSettings(n_compounds=30, n_assays=4, n_primary=2, n_targets=3, instances=4, replicates=1),
        show_progress=False,
    )
    classes = compound_classes(tmp_path / "s")
    potency = pd.read_parquet(tmp_path / "s" / "truth" / "compound_potency.parquet").set_index("Metadata_Compound")
    assert len(classes) == 30 and set(classes) <= {"inactive", "target_0", "target_1", "target_2"}
    for compound, value in classes.items():
        row = potency.loc[compound]
        assert value == ("inactive" if (row <= 0).all() else row.idxmax())
    with pytest.raises(MomilError, match="compound_potency"):
        compound_classes(tmp_path)


@pytest.mark.filterwarnings("ignore:no --weights")
def test_compare_backbones_extracts_once_per_backbone_and_probes_every_target(tmp_path):
    from momil.imaging.extract import ExtractSettings
    from momil.imaging.fields import FieldSettings
    from momil.imaging.probe import compare_backbones
    from momil.io.atomic import safe_name

    from conftest import render_screen

    screen = render_screen(tmp_path / "screen", n_compounds=20, hit_rate=0.5)
    classes = compound_classes(screen)
    active = (classes != "inactive").astype(int)
    assert active.value_counts().min() >= 3
    table = compare_backbones(
        screen / "load_data.parquet",
        screen / "wells.parquet",
        {"random": "", "random again": ""},
        {"active": active},
        tmp_path,
        FieldSettings(size=64, tile=32, stride=32, drop_background=False),
        ExtractSettings(backbone="vit-tiny", batch_tiles=8, dtype="float32", device="cpu"),
        cs=(0.1, 1.0),
        folds=3,
    )
    assert list(table.columns) == ["features", "target", "C", "wells", "classes", "accuracy", "majority", "roc_auc"]
    assert table["features"].tolist() == ["random"] * 2 + ["random again"] * 2
    assert (table["wells"] == 20).all() and (table["classes"] == 2).all()
    assert table["accuracy"].between(0, 1).all() and table["roc_auc"].between(0, 1).all()
    # random weights come from the same seed: the same features, so the same probe scores
    np.testing.assert_allclose(table["accuracy"].iloc[:2], table["accuracy"].iloc[2:])
    assert (tmp_path / f"store-{safe_name('random again', 20)}").exists()


def test_probe_from_the_shell(tmp_path, capsys):
    from momil.cli import main

    _store(tmp_path / "good", True)
    _, classes = _store(tmp_path / "noise", False)
    table = tmp_path / "classes.csv"
    classes.rename("moa").rename_axis("Metadata_Compound").reset_index().to_csv(table, index=False)
    out = tmp_path / "probe.parquet"
    code = main(
        [
            "probe",
            "--store",
            str(tmp_path / "good"),
            "--store",
            str(tmp_path / "noise"),
            "--classes",
            str(table),
            "--class-column",
            "moa",
            "--c",
            "0.1,1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    frame = pd.read_parquet(out)
    assert frame["store"].tolist() == [str(tmp_path / "good")] * 2 + [str(tmp_path / "noise")] * 2
    assert frame["C"].tolist() == [0.1, 1.0, 0.1, 1.0]
    assert (frame["accuracy"].iloc[:2] > 0.9).all() and (frame["accuracy"].iloc[2:] < 0.75).all()
    assert "accuracy" in capsys.readouterr().out
    # bad input: a missing class column, an unknown store; nothing written
    bad = tmp_path / "bad.parquet"
    code = main(["probe", "--store", str(tmp_path / "good"), "--classes", str(table), "--out", str(bad)])
    assert code == 2 and "missing required column(s) class" in capsys.readouterr().err and not bad.exists()
    code = main(
        [
            "probe",
            "--store",
            str(tmp_path / "good"),
            "--store",
            str(tmp_path / "nowhere"),
            "--classes",
            str(table),
            "--class-column",
            "moa",
            "--out",
            str(bad),
        ]
    )
    assert code == 2 and "nowhere" in capsys.readouterr().err and not bad.exists()
    code = main(["probe", "--store", str(tmp_path / "good"), "--class-column", "moa"])
    assert code == 2 and "--simulated" in capsys.readouterr().err
