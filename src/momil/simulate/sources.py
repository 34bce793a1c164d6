"""What the simulator builds on: the real data shipped in the package (plate map, hti-cnn labels and SMILES,
protein network) and RDKit analogues of real compounds."""

from __future__ import annotations

import gzip
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from momil.io.contract import read_labels_mtx
from momil.simulate.images import (  # noqa: F401 (moved there; re-exported)
    CHANNELS,
    _write_images,
    render_field,
)


# --------------------------------------------------------------------------------------------- shipped data
def data_path(*parts: str) -> Path:
    return Path(str(resources.files("momil").joinpath("resources", *parts)))


def real_platemap() -> pd.DataFrame:
    """JUMP-Target-1's 384-well map: well_position and negcon flag (empty broad_sample = DMSO)."""
    frame = pd.read_csv(data_path("jump-target", "JUMP-Target-1_compound_platemap.tsv"), sep="\t", dtype=str)
    frame["negcon"] = frame["broad_sample"].isna() | (frame["broad_sample"].fillna("") == "")
    return frame[["well_position", "negcon"]]


def hti_cnn_labels():
    import warnings

    with warnings.catch_warnings():  # the shipped matrix repeats 5 assay ids; read_labels_mtx renames them
        warnings.simplefilter("ignore")
        return read_labels_mtx(
            data_path("hti-cnn-labels", "label-matrix.mtx.gz"),
            data_path("hti-cnn-labels", "row-compound-index.csv.gz"),
            data_path("hti-cnn-labels", "column-assay-index.csv"),
        )


def hti_cnn_smiles() -> pd.DataFrame:
    return pd.read_csv(data_path("hti-cnn-labels", "hti_compounds_smiles.csv.gz"), dtype=str)


def ppi_network() -> pd.DataFrame:
    with gzip.open(data_path("ppi", "irefindex_pcsf_edges.csv.gz"), "rt") as handle:
        frame = pd.read_csv(handle, dtype={"from": str, "to": str})
    frame["score"] = 1.0 - frame["cost"].astype(float)
    return frame


# -------------------------------------------------------------------------------------------------- chemistry
_SUBSTITUENTS = ("C", "F", "Cl", "O", "N", "C(F)(F)F", "OC", "C#N", "Br", "CC")


def analogue_smiles(parents: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` analogues of each parent: 1-2 random substituents on ring carbons bearing hydrogens."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = []
    for parent in parents:
        mol = Chem.MolFromSmiles(parent)
        series = [Chem.MolToSmiles(mol)]
        attempts = 0
        while len(series) < n and attempts < 20 * n:
            attempts += 1
            rw = Chem.RWMol(mol)
            sites = [a.GetIdx() for a in rw.GetAtoms() if a.GetSymbol() == "C" and a.GetTotalNumHs() > 0]
            if not sites:
                break
            for _ in range(int(rng.integers(1, 3))):
                site = int(rng.choice(sites))
                fragment = Chem.MolFromSmiles(_SUBSTITUENTS[int(rng.integers(len(_SUBSTITUENTS)))])
                combined = Chem.RWMol(Chem.CombineMols(rw, fragment))
                combined.AddBond(site, rw.GetNumAtoms(), Chem.BondType.SINGLE)
                rw = combined
            try:
                candidate = rw.GetMol()
                Chem.SanitizeMol(candidate)
                smiles = Chem.MolToSmiles(candidate)
            except Exception:  # noqa: BLE001 - RDKit raises several sanitisation errors; try another
                continue
            if smiles not in series:
                series.append(smiles)
        while len(series) < n:  # tiny parents with no site left: repeat with a tag so ids stay distinct
            series.append(series[-1])
        out.append(series)
    return out
