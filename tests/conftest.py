"""Tiny fixtures made in code, and paths to the real data the tests read: cut-down copies in tests/data
(scripts/cut_test_data.py, provenance and licences in tests/data/README.md) and the package's own resources."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("MOMIL_NO_PROGRESS", "1")

REAL_DATA = Path(__file__).resolve().parent / "data"


def real_data(*parts) -> Path:
    """A real file in tests/data: always there, never skipped."""
    path = REAL_DATA.joinpath(*parts)
    assert path.exists(), f"{path} is missing: tests/data is part of the repository (scripts/cut_test_data.py)"
    return path


def resource(*parts) -> Path:
    """A real file the package ships (src/momil/resources)."""
    from momil.simulate.screen import data_path

    path = data_path(*parts)
    assert path.exists(), f"{path} is missing from the package's resources"
    return path


def tiny_wells(plates=("P1", "P2"), wells_per_plate=6, negcon=2, batch=True) -> pd.DataFrame:
    rows = []
    for p, plate in enumerate(plates):
        for w in range(wells_per_plate):
            well = f"{chr(ord('A') + w // 12)}{w % 12 + 1:02d}"
            control = "negcon" if w < negcon else "trt"
            compound = "DMSO" if control == "negcon" else f"C{(w - negcon) % 3 + 1}"
            rows.append(
                {
                    "Metadata_Plate": plate,
                    "Metadata_Well": well,
                    "Metadata_Compound": compound,
                    "Metadata_ControlType": control,
                    "Metadata_Batch": f"B{p % 2}" if batch else None,
                }
            )
    return pd.DataFrame(rows)


def tiny_instances(wells: pd.DataFrame, per_well=3, dim=4, seed=0, shuffle=False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for _, w in wells.iterrows():
        for i in range(per_well):
            rows.append(
                {
                    "Metadata_Plate": w["Metadata_Plate"],
                    "Metadata_Well": w["Metadata_Well"],
                    "Metadata_Site": i + 1,
                    **{f"feat{j}": rng.normal() for j in range(dim)},
                }
            )
    frame = pd.DataFrame(rows)
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    return frame


def render_screen(path, **overrides):
    """A tiny simulated screen with rendered 5-channel fields and a LoadData index; returns its folder."""
    from momil.simulate.screen import SimulateSettings, simulate

    settings = dict(
        n_compounds=4,
        replicates=1,
        negcon_per_plate=2,
        render_images=True,
        image_size=64,
        sites=1,
        instances=8,
        n_assays=4,
        n_primary=2,
        n_targets=3,
    )
    simulate(path, SimulateSettings(**{**settings, **overrides}), show_progress=False)
    return path


@pytest.fixture
def tiny_screen(tmp_path):
    """wells.parquet + instances.parquet for 2 plates x 6 wells x 3 instances x 4 features."""
    wells = tiny_wells()
    instances = tiny_instances(wells)
    wells.to_parquet(tmp_path / "wells.parquet", index=False)
    instances.to_parquet(tmp_path / "instances.parquet", index=False)
    return tmp_path, wells, instances


# the model commands' inputs inside a prepared workspace (see prepared_workspace)
WORKSPACE_MODEL = [
    "--store",
    "corr",
    "--labels",
    "screen/labels.parquet",
    "--folds",
    "folds.parquet",
    "--assays",
    "screen/assays.parquet",
]


def prepared_workspace(root: Path, *extra_steps) -> Path:
    """A 40-compound simulated screen taken from the shell through simulate -> ingest (``store``) -> correct
    (``corr``) -> split (``folds.parquet``, 3 folds) inside ``root``, then ``extra_steps`` (more `momil` argv
    lists), plus rendered fields in ``root/render``. Shared by the bad-input and fault suites."""
    from momil.cli import main

    steps = [
        [
            "simulate",
            "--out",
            "screen",
            "--n-compounds",
            40,
            "--replicates",
            2,
            "--negcon-per-plate",
            8,
            "--dim",
            6,
            "--instances",
            5,
            "--n-assays",
            8,
        ],
        ["ingest", "--instances", "screen/instances.parquet", "--wells", "screen/wells.parquet", "--out", "store"],
        ["correct", "--store", "store", "--out", "corr"],
        [
            "split",
            "--wells",
            "screen/wells.parquet",
            "--labels",
            "screen/labels.parquet",
            "--compounds",
            "screen/compounds.parquet",
            "--out",
            "folds.parquet",
            "--n-folds",
            3,
        ],
        *extra_steps,
    ]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for argv in steps:
            assert main([str(a) for a in argv] + ["--quiet"]) == 0, argv
    finally:
        os.chdir(cwd)
    render_screen(root / "render")
    return root


def simulated_screen(root: Path, settings, n_folds: int):
    """A `momil simulate` screen under ``root`` taken through ingest, correct and split (Butina folds):
    (corrected store, labels, folds)."""
    from momil.io.contract import read_labels
    from momil.io.ingest import ingest
    from momil.prep.correct import correct
    from momil.prep.splits import SplitSettings, make_folds
    from momil.simulate.screen import simulate

    simulate(root / "screen", settings, show_progress=False)
    ingest(root / "screen" / "instances.parquet", root / "screen" / "wells.parquet", root / "raw", show_progress=False)
    store = correct(root / "raw", root / "store", show_progress=False)
    labels = read_labels(root / "screen" / "labels.parquet")
    folds = make_folds(labels.compounds, labels=labels, settings=SplitSettings(n_folds=n_folds), show_progress=False)
    return store, labels, folds
