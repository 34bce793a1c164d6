"""Parts 5 and 6 of the input contract: the assays table and the protein associations."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from momil.errors import InputError
from momil.io.tables import (
    as_string_column,
    read_table,
    refuse_padded,
    require_columns,
    require_no_missing,
    rows_text,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- assays
def read_assays(path, label_assays: Sequence[str] | None = None) -> pd.DataFrame:
    """Contract part 5: assay, role (primary|secondary), target_genes ('|'-separated symbols)."""
    frame = read_table(path, dtype_str=("assay", "role", "target_genes"))
    require_columns(frame, ("assay",), path, "assays")
    frame = frame.reset_index(drop=True).copy()
    require_no_missing(frame, ("assay",), path)
    duplicated = frame.duplicated("assay", keep=False)
    if duplicated.any():
        raise InputError(
            path, f"assay listed twice at {rows_text(np.flatnonzero(duplicated.to_numpy()))}", "keep one row per assay"
        )
    if "role" not in frame.columns:
        frame["role"] = "primary"
    role = frame["role"].fillna("primary").str.strip().str.lower()
    bad = ~role.isin(["primary", "secondary"])
    if bad.any():
        raise InputError(
            path,
            f"column role has values {sorted(set(frame.loc[bad, 'role']))[:5]} at "
            f"{rows_text(np.flatnonzero(bad.to_numpy()))}",
            "use primary or secondary",
        )
    frame["role"] = role
    if "target_genes" not in frame.columns:
        frame["target_genes"] = pd.array([pd.NA] * len(frame), dtype="string")
    frame["target_genes"] = frame["target_genes"].fillna("")
    if label_assays is not None:
        listed = set(frame["assay"])
        absent = [a for a in label_assays if a not in listed]
        if absent:
            warnings.warn(
                f"{path}: {len(absent)} labelled assay(s) are not listed (e.g. {absent[:3]}); "
                "they are taken as primary",
                stacklevel=2,
            )
            frame = pd.concat(
                [frame, pd.DataFrame({"assay": absent, "role": "primary", "target_genes": ""})], ignore_index=True
            )
    return frame


def default_assays(assays: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({"assay": list(assays), "role": "primary", "target_genes": ""})


def assay_genes(assays: pd.DataFrame) -> dict[str, list[str]]:
    return {
        a: [g.strip() for g in str(genes).split("|") if g.strip()]
        for a, genes in zip(assays["assay"], assays["target_genes"].fillna(""))
    }


# -------------------------------------------------------------------------------------- protein associations
def read_associations(path, info=None) -> pd.DataFrame:
    """Contract part 6: gene_a, gene_b, score in [0, 1] (the stronger of duplicate pairs is kept).

    Accepts STRING's ``protein.links`` file (space-separated ``protein1 protein2 combined_score`` 0-1000,
    with its ``protein.info`` file mapping protein ids to symbols), a gene table (``gene_a, gene_b, score``),
    or a network with ``from, to, cost`` (cost = 1 - score, as ``irefindex_pcsf_edges.csv``).
    """
    path = Path(path)
    if info is not None or "protein.links" in path.name:
        return _read_string_links(path, info)
    frame = read_table(path, dtype_str=("gene_a", "gene_b", "from", "to"))
    if {"from", "to", "cost"} <= set(frame.columns) and "gene_a" not in frame.columns:
        frame = frame.rename(columns={"from": "gene_a", "to": "gene_b"})
        cost = pd.to_numeric(frame["cost"], errors="coerce")
        frame["score"] = 1.0 - cost
    require_columns(frame, ("gene_a", "gene_b", "score"), path, "protein association")
    return _finish_associations(frame, path, scale=1.0)


def _read_string_links(path: Path, info) -> pd.DataFrame:
    if info is None:
        candidate = Path(str(path).replace("protein.links", "protein.info"))
        if not candidate.exists():
            raise InputError(
                path,
                "STRING links need the matching protein.info file to map proteins to genes",
                "pass it with --string-info",
            )
        info = candidate
    try:
        links = pd.read_csv(path, sep=r"\s+", dtype={"protein1": str, "protein2": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(path, f"cannot read the STRING links file ({err})") from err
    require_columns(links, ("protein1", "protein2", "combined_score"), path, "STRING links")
    try:
        names = pd.read_csv(info, sep="\t", dtype=str)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(info, f"cannot read the STRING info file ({err})") from err
    names.columns = [c.lstrip("#") for c in names.columns]
    id_col = "string_protein_id" if "string_protein_id" in names.columns else names.columns[0]
    sym_col = "preferred_name" if "preferred_name" in names.columns else names.columns[1]
    mapping = dict(zip(names[id_col], names[sym_col]))
    frame = pd.DataFrame(
        {
            "gene_a": links["protein1"].map(mapping),
            "gene_b": links["protein2"].map(mapping),
            "score": links["combined_score"],
        }
    )
    unmapped = frame["gene_a"].isna() | frame["gene_b"].isna()
    if unmapped.all():
        raise InputError(info, "maps none of the proteins in the links file", "use the info file of the same release")
    frame = frame[~unmapped]
    return _finish_associations(frame, path, scale=1000.0)


def _finish_associations(frame: pd.DataFrame, path, scale: float) -> pd.DataFrame:
    frame = frame[["gene_a", "gene_b", "score"]].copy().reset_index(drop=True)
    score = pd.to_numeric(frame["score"], errors="coerce") / scale
    bad = score.isna() | (score < 0) | (score > 1)
    if bad.any():
        raise InputError(
            path,
            f"score is missing or outside [0, {scale:g}] at {rows_text(np.flatnonzero(bad))}",
            "scores are confidences between 0 and 1 (STRING: 0-1000)",
        )
    frame["score"] = score.astype(np.float64)
    for column in ("gene_a", "gene_b"):
        frame[column] = as_string_column(frame[column])
        refuse_padded(frame[column], path, column)
        frame[column] = frame[column].str.upper()
    require_no_missing(frame, ("gene_a", "gene_b"), path)
    # symmetric, best score per unordered pair
    a, b = frame["gene_a"].to_numpy(dtype=object), frame["gene_b"].to_numpy(dtype=object)
    low = np.where(a <= b, a, b)
    high = np.where(a <= b, b, a)
    out = pd.DataFrame({"gene_a": low, "gene_b": high, "score": frame["score"].to_numpy()})
    out = out.groupby(["gene_a", "gene_b"], as_index=False, sort=True)["score"].max()
    return out
