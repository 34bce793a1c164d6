"""Extraction: rendered and real fields -> tiles -> embeddings -> a store; resume; missing files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import momil.imaging.extract as extract_module
from momil.cli import main
from momil.errors import InputError
from momil.imaging.extract import ExtractSettings, extract
from momil.imaging.fields import FieldSettings
from momil.io.store import InstanceStore

from conftest import render_screen
from test_fields import PHENIX, bray_load_data, phenix_load_data

pytestmark = pytest.mark.filterwarnings("ignore:no --weights")

FIELD = FieldSettings(size=64, tile=32, stride=32, drop_background=False)
TINY = ExtractSettings(backbone="vit-tiny", batch_tiles=8, dtype="float32", device="cpu", readers=2)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_screen(tmp_path_factory.mktemp("rendered") / "screen", sites=2)


def test_rendered_fields_become_a_store(rendered, tmp_path):
    with pytest.warns(UserWarning, match="random weights"):
        store = extract(
            rendered / "load_data.parquet",
            rendered / "wells.parquet",
            tmp_path / "store",
            FIELD,
            TINY,
            show_progress=False,
        ).store
    fields = len(pd.read_parquet(rendered / "load_data.parquet"))
    wells = pd.read_parquet(rendered / "wells.parquet")
    assert store.n_wells == len(wells) and store.n_instances == fields * 4  # 64 px fields, 32 px tiles
    assert store.dim == 192 and np.isfinite(store.features).all()
    meta = store.instance_meta(0)
    assert list(meta["Metadata_Site"].astype(int)) == [1] * 4 + [2] * 4
    assert set(zip(meta["Metadata_TileY"], meta["Metadata_TileX"])) == {(0, 0), (0, 32), (32, 0), (32, 32)}
    assert not (tmp_path / "store.extract").exists()  # the field cache goes once the store is built
    # the store is ready for correction
    assert main(["correct", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "corrected"), "--quiet"]) == 0


def test_interrupted_extraction_resumes_to_the_same_store(rendered, tmp_path, monkeypatch):
    whole = extract(
        rendered / "load_data.parquet", rendered / "wells.parquet", tmp_path / "whole", FIELD, TINY, show_progress=False
    )
    real_save = extract_module._save_field
    saved = []

    def dying_save(cache, info, features):
        if len(saved) == 5:
            raise KeyboardInterrupt
        saved.append(info["key"])
        real_save(cache, info, features)

    monkeypatch.setattr(extract_module, "_save_field", dying_save)
    with pytest.raises(KeyboardInterrupt):
        extract(
            rendered / "load_data.parquet",
            rendered / "wells.parquet",
            tmp_path / "again",
            FIELD,
            TINY,
            show_progress=False,
        )
    assert not (tmp_path / "again").exists() and len(list((tmp_path / "again.extract" / "fields").iterdir())) == 5
    monkeypatch.setattr(extract_module, "_save_field", real_save)
    resumed = extract(
        rendered / "load_data.parquet", rendered / "wells.parquet", tmp_path / "again", FIELD, TINY, show_progress=False
    )
    fields = len(pd.read_parquet(rendered / "load_data.parquet"))
    assert resumed.embedded_now == fields - 5  # finished fields were not embedded again
    assert np.allclose(resumed.store.features, whole.store.features, atol=1e-5)


def test_missing_fields_stop_or_are_skipped(rendered, tmp_path):
    load = pd.read_parquet(rendered / "load_data.parquet")
    load.loc[0, "FileName_OrigMito"] = "missing.tiff"
    load.to_parquet(tmp_path / "load_data.parquet")
    for name in ("images",):
        (tmp_path / name).symlink_to(rendered / name)
    with pytest.raises(InputError, match="missing.tiff"):
        extract(
            tmp_path / "load_data.parquet",
            rendered / "wells.parquet",
            tmp_path / "stopped",
            FIELD,
            TINY,
            show_progress=False,
        )
    assert not (tmp_path / "stopped").exists()
    skip = FieldSettings(**{**FIELD.__dict__, "on_missing": "skip"})
    result = extract(
        tmp_path / "load_data.parquet",
        rendered / "wells.parquet",
        tmp_path / "skipped",
        skip,
        TINY,
        show_progress=False,
    )
    assert len(result.skipped) == 1 and result.store.n_instances == (len(load) - 1) * 4


def test_real_fields_of_both_layouts(tmp_path, capsys):
    phenix = phenix_load_data().rename(
        columns={f"{k}_{c}": f"{k}_{c.replace('Orig', '')}" for c in PHENIX for k in ("FileName", "PathName")}
    )
    bray = bray_load_data()
    load = pd.concat([phenix, bray], ignore_index=True).drop(columns=["FileName_Brightfield", "PathName_Brightfield"])
    load.to_parquet(tmp_path / "load_data.parquet")
    wells = pd.DataFrame(
        {
            "Metadata_Plate": ["BR00143976", "24279"],
            "Metadata_Well": ["C03", "A01"],
            "Metadata_Compound": ["DMSO", "DMSO"],
            "Metadata_ControlType": ["negcon", "negcon"],
            "Metadata_Batch": ["b", "b"],
        }
    )
    wells.to_parquet(tmp_path / "wells.parquet")
    code = main(
        [
            "extract",
            "--load-data",
            str(tmp_path / "load_data.parquet"),
            "--wells",
            str(tmp_path / "wells.parquet"),
            "--out",
            str(tmp_path / "store"),
            "--backbone",
            "vit-tiny",
            "--size",
            "128",
            "--tile",
            "64",
            "--stride",
            "32",
            "--no-drop-background",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    store = InstanceStore(tmp_path / "store")
    assert store.n_wells == 2 and list(store.counts) == [9, 9]  # 128 px, 64 px tiles at stride 32: 3 x 3 each
    assert np.isfinite(store.features).all() and "18 tiles x 192 features" in out


def test_images_to_cross_validation_from_the_shell(tmp_path, capsys):
    """LoadData of rendered fields -> pretrain -> extract -> correct -> split -> cv: the extracted store is one
    that `momil cv` reads."""
    screen = render_screen(
        tmp_path / "screen",
        n_compounds=16,
        replicates=2,
        negcon_per_plate=2,
        n_assays=3,
        n_primary=1,
        label_density=0.9,
        primary_density=0.9,
    )
    load_data = screen / "load_data.parquet"

    def run(*argv):
        code = main([str(a) for a in argv] + ["--quiet"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out

    run(
        "pretrain",
        "--load-data",
        load_data,
        "--out",
        tmp_path / "fm",
        "--method",
        "dinov2",
        "--backbone",
        "vit-tiny",
        "--size",
        64,
        "--global-size",
        32,
        "--local-size",
        16,
        "--local-crops",
        1,
        "--out-dim",
        32,
        "--epochs",
        1,
        "--batch-fields",
        8,
        "--device",
        "cpu",
    )
    run(
        "extract",
        "--load-data",
        load_data,
        "--wells",
        screen / "wells.parquet",
        "--out",
        tmp_path / "raw",
        "--backbone",
        "vit-tiny",
        "--weights",
        tmp_path / "fm" / "backbone.pt",
        "--size",
        64,
        "--tile",
        32,
        "--stride",
        32,
        "--no-drop-background",
        "--device",
        "cpu",
    )
    run("correct", "--store", tmp_path / "raw", "--out", tmp_path / "store")
    run(
        "split",
        "--wells",
        screen / "wells.parquet",
        "--labels",
        screen / "labels.parquet",
        "--compounds",
        screen / "compounds.parquet",
        "--out",
        tmp_path / "folds.parquet",
        "--n-folds",
        3,
    )
    out = run(
        "cv",
        "--store",
        tmp_path / "store",
        "--labels",
        screen / "labels.parquet",
        "--folds",
        tmp_path / "folds.parquet",
        "--assays",
        screen / "assays.parquet",
        "--out",
        tmp_path / "cv",
        "--rotations",
        "0",
        "--projector-dims",
        8,
        "--head-dims",
        4,
        "--lrs",
        "1e-3",
        "--epochs",
        2,
        "--warmup-epochs",
        1,
        "--device",
        "cpu",
    )
    assert "ROC-AUC" in out
    metrics = pd.read_csv(tmp_path / "cv" / "metrics.csv")
    assert len(metrics) == 3 and metrics["primary"].sum() == 1
    assert InstanceStore(tmp_path / "store").dim == 192


def test_reader_threads_follow_the_device(rendered, tmp_path):
    from momil.errors import MomilError
    from momil.imaging.extract import reader_count

    assert reader_count(3, "cpu") == 3  # as asked
    assert reader_count(0, "cpu") == 1  # the CPU forward already uses every core
    assert 1 <= reader_count(0, "cuda") <= 8
    with pytest.raises(MomilError, match="--readers must be >= 0"):
        ExtractSettings(**{**TINY.__dict__, "readers": -1})
    assert not (tmp_path / "store").exists()
