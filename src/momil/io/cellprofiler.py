"""Per-cell CellProfiler output -> one instance table (a row per cell) that `momil ingest` reads.

The engineered-feature baseline of the paper ("Acapella -> MLP") treats each cell's measured features as an
instance. CellProfiler writes one CSV per compartment (``Cells.csv``, ``Cytoplasm.csv``, ``Nuclei.csv``) and an
``Image.csv`` with the plate, well and site of every image. Compartments are joined as pycytominer's
``SingleCells`` does by default: each cytoplasm object links to its cell (``Parent_Cells``) and its nucleus
(``Parent_Nuclei``) in the same image; without a Cytoplasm table, cells link to nuclei through the cells'
``Parent_Nuclei``. Features are named ``<Compartment>_<feature>``.

Kept: numeric measurements. Left out: object and image numbers, parent/child links, and position features
(``Location_*``, ``AreaShape_Center_*``, bounding boxes, neighbour object numbers), which say where a cell lies in
the field, not what it looks like. A feature that is missing or infinite for any cell is dropped (CellProfiler
leaves NaN where a measurement is undefined) and the count is reported, because the store refuses non-finite
features.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from momil.errors import InputError, MomilError

POSITIONAL = re.compile(
    r"(^|_)(ImageNumber|ObjectNumber|Number_Object_Number|Parent_\w+|Children_\w+|Location_\w+|"
    r"AreaShape_Center_\w+|AreaShape_BoundingBox\w+|Neighbors_\w*ObjectNumber\w*)$"
)
IMAGE_KEYS = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


def _read(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise InputError(
            path,
            f"the CellProfiler {what} table is missing",
            "point to a folder with CellProfiler's "
            "per-compartment CSV output (Image.csv, Cells.csv, Cytoplasm.csv, Nuclei.csv)",
        )
    try:
        return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(path, f"cannot read the CellProfiler {what} table ({err})") from err


def _require(frame: pd.DataFrame, columns, path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            path,
            f"missing column(s) {missing}",
            "use CellProfiler's default object and image "
            "measurements (ExportToSpreadsheet with ImageNumber, ObjectNumber and parent links)",
        )


def _features(frame: pd.DataFrame, compartment: str, **keys) -> pd.DataFrame:
    """The compartment's measurement columns, prefixed, beside the join ``keys`` (name -> values)."""
    keep = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not POSITIONAL.search(c)]
    return pd.concat([pd.DataFrame(keys, index=frame.index), frame[keep].add_prefix(f"{compartment}_")], axis=1)


def _linked_objects(tables: dict[str, pd.DataFrame], folder: Path) -> pd.DataFrame:
    """One row per cell with every compartment's features, joined through CellProfiler's parent links
    (Cytoplasm -> Cells and Nuclei, or Cells -> Nuclei); objects without their linked object are left out, with a
    warning."""
    if "Cytoplasm" in tables:
        anchor = tables["Cytoplasm"]
        _require(anchor, ("Parent_Cells", "Parent_Nuclei"), folder / "Cytoplasm.csv")
        merged = _features(
            anchor,
            "Cytoplasm",
            ImageNumber=anchor["ImageNumber"].to_numpy(),
            ObjectNumber=anchor["ObjectNumber"].to_numpy(),
            _cell=anchor["Parent_Cells"].to_numpy(),
            _nucleus=anchor["Parent_Nuclei"].to_numpy(),
        )
    elif "Cells" in tables:
        anchor = tables["Cells"]
        _require(anchor, ("Parent_Nuclei",), folder / "Cells.csv")
        merged = pd.DataFrame(
            {
                "ImageNumber": anchor["ImageNumber"].to_numpy(),
                "ObjectNumber": anchor["ObjectNumber"].to_numpy(),
                "_cell": anchor["ObjectNumber"].to_numpy(),
                "_nucleus": anchor["Parent_Nuclei"].to_numpy(),
            }
        )
    else:
        raise MomilError("compartments must include Cytoplasm or Cells")
    for name, key in (("Cells", "_cell"), ("Nuclei", "_nucleus")):
        if name not in tables:
            continue
        table = tables[name]
        part = _features(
            table, name, ImageNumber=table["ImageNumber"].to_numpy(), **{key: table["ObjectNumber"].to_numpy()}
        )
        before = len(merged)
        merged = merged.merge(part, on=["ImageNumber", key], how="inner")
        if len(merged) < before:
            warnings.warn(
                f"{folder / (name + '.csv')}: {before - len(merged)} object(s) have no linked {name} "
                "object and are left out",
                stacklevel=3,
            )
    return merged


def read_cellprofiler(folder, compartments=("Cells", "Cytoplasm", "Nuclei")) -> tuple[pd.DataFrame, dict]:
    """One row per cell: Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_ImageNumber,
    Metadata_ObjectNumber, then ``<Compartment>_<feature>`` columns. Returns (table, report)."""
    from momil.io.tables import normalise_well

    folder = Path(folder)
    image = _read(folder / "Image.csv", "image")
    _require(image, ("ImageNumber",) + IMAGE_KEYS, folder / "Image.csv")
    tables = {c: _read(folder / f"{c}.csv", c) for c in compartments}
    for name, table in tables.items():
        _require(table, ("ImageNumber", "ObjectNumber"), folder / f"{name}.csv")
    merged = _linked_objects(tables, folder)
    meta = image[["ImageNumber", *IMAGE_KEYS]].copy()
    meta["Metadata_Well"] = [normalise_well(w) for w in meta["Metadata_Well"].astype(str)]
    merged = merged.merge(meta, on="ImageNumber", how="left")
    unknown = merged["Metadata_Plate"].isna()
    if unknown.any():
        raise InputError(
            folder / "Image.csv",
            f"{int(unknown.sum())} cell(s) belong to images it does not list",
            "export Image.csv from the same CellProfiler run",
        )
    features = [c for c in merged.columns if c.startswith(tuple(f"{n}_" for n in compartments))]
    values = merged[features].to_numpy(dtype=np.float64)
    finite = np.isfinite(values).all(axis=0)
    dropped = [f for f, ok in zip(features, finite) if not ok]
    kept = [f for f, ok in zip(features, finite) if ok]
    out = pd.DataFrame(
        {
            "Metadata_Plate": merged["Metadata_Plate"].astype(str).to_numpy(),
            "Metadata_Well": merged["Metadata_Well"].to_numpy(),
            "Metadata_Site": merged["Metadata_Site"].to_numpy(),
            "Metadata_ImageNumber": merged["ImageNumber"].to_numpy(),
            "Metadata_ObjectNumber": merged["ObjectNumber"].to_numpy(),
        }
    )
    out = pd.concat([out, merged[kept].astype(np.float32).reset_index(drop=True)], axis=1)
    report = {
        "cells": int(len(out)),
        "features": len(kept),
        "dropped_non_finite": len(dropped),
        "dropped_examples": dropped[:5],
        "images": int(out["Metadata_ImageNumber"].nunique()),
    }
    return out, report


def cellprofiler_to_instances(folders, out) -> dict:
    """Several CellProfiler output folders (e.g. one per plate or site) -> one instance Parquet file at ``out``.
    Only features every folder has and that are finite everywhere are kept."""
    from momil.io.atomic import atomic_path

    frames, reports = [], []
    for folder in folders:
        frame, report = read_cellprofiler(folder)
        frames.append(frame)
        reports.append(report)
    shared = set.intersection(*(set(f.columns) for f in frames))
    columns = [c for c in frames[0].columns if c in shared]
    table = pd.concat([f[columns] for f in frames], ignore_index=True)
    with atomic_path(Path(out)) as tmp:
        table.to_parquet(tmp, index=False)
    features = [c for c in columns if not c.startswith("Metadata_")]
    return {
        "cells": int(len(table)),
        "features": len(features),
        "folders": len(frames),
        "dropped_non_finite": int(sum(r["dropped_non_finite"] for r in reports)),
    }
