"""Part 4 of the input contract: assay labels (long, wide or MatrixMarket) -> :class:`LabelMatrix`."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from momil.errors import InputError
from momil.io.columns import COMPOUND, CONTROL
from momil.io.tables import (
    as_string_column,
    read_table,
    refuse_padded,
    require_columns,
    require_no_missing,
    rows_text,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- labels
@dataclasses.dataclass
class LabelMatrix:
    """A sparse compound x assay matrix of known binary labels (absent = unknown)."""

    compounds: np.ndarray  # (C,) object, compound identifiers
    assays: np.ndarray  # (T,) object, assay names
    rows: np.ndarray  # (L,) int64 compound index
    cols: np.ndarray  # (L,) int64 assay index
    values: np.ndarray  # (L,) int8, 0 inactive / 1 active
    source: str = ""

    @property
    def n_labels(self) -> int:
        return int(len(self.values))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.compounds), len(self.assays)

    @property
    def density(self) -> float:
        c, t = self.shape
        return self.n_labels / float(c * t) if c and t else 0.0

    def to_long(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                COMPOUND: pd.array(self.compounds[self.rows], dtype="string"),
                "assay": pd.array(self.assays[self.cols], dtype="string"),
                "label": self.values.astype(np.int8),
            }
        )

    def to_dense(self) -> np.ndarray:
        """(C, T) float32 with NaN for unknown. Only for small matrices."""
        dense = np.full(self.shape, np.nan, dtype=np.float32)
        dense[self.rows, self.cols] = self.values
        return dense

    def labelled_assays(self) -> list[str]:
        """Assays with at least one known label, in the matrix's order."""
        used = np.zeros(len(self.assays), dtype=bool)
        used[self.cols] = True
        return [str(a) for a in self.assays[used]]

    def counts(self) -> pd.DataFrame:
        """Per assay: n_labelled, n_pos, n_neg."""
        n = np.bincount(self.cols, minlength=len(self.assays))
        pos = np.bincount(self.cols, weights=self.values, minlength=len(self.assays)).astype(np.int64)
        return pd.DataFrame({"assay": self.assays, "n_labelled": n, "n_pos": pos, "n_neg": n - pos})

    def subset_compounds(self, keep: Sequence[str]) -> LabelMatrix:
        keep_set = set(keep)
        mask_comp = np.array([c in keep_set for c in self.compounds], dtype=bool)
        new_index = -np.ones(len(self.compounds), dtype=np.int64)
        new_index[mask_comp] = np.arange(int(mask_comp.sum()))
        mask = mask_comp[self.rows]
        return LabelMatrix(
            self.compounds[mask_comp],
            self.assays,
            new_index[self.rows[mask]],
            self.cols[mask],
            self.values[mask],
            self.source,
        )

    @classmethod
    def from_long(cls, frame: pd.DataFrame, path="labels") -> LabelMatrix:
        compounds, rows = np.unique(frame[COMPOUND].to_numpy(dtype=object), return_inverse=True)
        assays, cols = np.unique(frame["assay"].to_numpy(dtype=object), return_inverse=True)
        return cls(
            compounds,
            assays,
            rows.astype(np.int64),
            cols.astype(np.int64),
            frame["label"].to_numpy().astype(np.int8),
            str(path),
        )


def _label_values(values: pd.Series, path, column: str, allowed: dict) -> pd.Series:
    """Map raw label values to 0/1 with the allowed mapping; name the rows of anything else."""
    as_text = values.astype("string").str.strip().str.lower()
    mapped = as_text.map(allowed)
    bad = mapped.isna() & values.notna()
    if bad.any():
        examples = sorted(set(values[bad].astype(str)))[:5]
        raise InputError(
            path,
            f"column {column} has values {examples} that are not labels at {rows_text(np.flatnonzero(bad.to_numpy()))}",
            "use 1 for active and 0 for inactive (empty = unknown in a wide table)",
        )
    return mapped


_LONG_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "true": 1, "false": 0, "active": 1, "inactive": 0}
_MTX_VALUES = {"1": 1, "-1": 0, "1.0": 1, "-1.0": 0, "+1": 1}


def _finish_long(frame: pd.DataFrame, path) -> LabelMatrix:
    frame = frame.dropna(subset=["label"]).copy()
    frame["label"] = frame["label"].astype(np.int8)
    counts = frame.groupby([COMPOUND, "assay"], sort=False)["label"].agg(["min", "max"])
    conflicts = counts[counts["min"] != counts["max"]]
    if len(conflicts):
        compound, assay = conflicts.index[0]
        raise InputError(
            path,
            f"{len(conflicts)} conflicting duplicate label(s), e.g. compound {compound!r} in "
            f"assay {assay!r} is both 0 and 1",
            "keep one label per compound and assay",
        )
    frame = frame.drop_duplicates([COMPOUND, "assay"])
    if frame.empty:
        raise InputError(path, "holds no known labels", "add labels (1 active, 0 inactive)")
    return LabelMatrix.from_long(frame.reset_index(drop=True), path)


def read_labels(path, row_index=None, column_index=None) -> LabelMatrix:
    """Contract part 4: long, wide or MatrixMarket labels (the form is detected)."""
    path = Path(path)
    if path.suffix.lower() == ".mtx" or path.name.endswith(".mtx.gz"):
        return read_labels_mtx(path, row_index, column_index)
    frame = read_table(path, dtype_str=(COMPOUND, "assay"))
    require_columns(frame, (COMPOUND,), path, "labels")
    require_no_missing(frame, (COMPOUND,), path)
    if "assay" in frame.columns or "label" in frame.columns:
        require_columns(frame, (COMPOUND, "assay", "label"), path, "labels (long form)")
        require_no_missing(frame, ("assay",), path)
        frame = frame[[COMPOUND, "assay", "label"]].copy()
        frame["label"] = _label_values(frame["label"], path, "label", _LONG_VALUES)
        missing = frame["label"].isna()
        if missing.any():
            raise InputError(
                path,
                f"column label is empty at {rows_text(np.flatnonzero(missing.to_numpy()))}",
                "a long table lists known labels only: drop rows without a label",
            )
        return _finish_long(frame, path)
    # wide: every column but Metadata_* is an assay
    assays = [c for c in frame.columns if not str(c).startswith("Metadata_")]
    if not assays:
        raise InputError(path, "no assay columns", "a wide table has one column per assay besides Metadata_Compound")
    long_parts = []
    for assay in assays:
        mapped = _label_values(frame[assay], path, str(assay), _LONG_VALUES)
        known = mapped.notna()
        long_parts.append(
            pd.DataFrame(
                {
                    COMPOUND: frame.loc[known, COMPOUND].to_numpy(),
                    "assay": str(assay),
                    "label": mapped[known].to_numpy(),
                }
            )
        )
    return _finish_long(pd.concat(long_parts, ignore_index=True), path)


def _index_file(mtx: Path, given, candidates: Sequence[str], what: str) -> Path:
    if given is not None:
        return Path(given)
    for name in candidates:
        if (mtx.parent / name).exists():
            return mtx.parent / name
    raise InputError(
        mtx,
        f"no {what} index file found beside the matrix (looked for {', '.join(candidates)})",
        f"pass the {what} index file explicitly",
    )


def read_labels_mtx(path, row_index=None, column_index=None) -> LabelMatrix:
    """MatrixMarket labels (+1 active, -1 inactive, absent unknown) with row and column index files.

    Index files are CSVs with one row per matrix row/column, in order; the identifier is the last column
    (``INDEX,INCHIKEY`` and ``ASSAY_ID`` in hti-cnn's files).
    """
    import scipy.io

    path = Path(path)
    row_path = _index_file(
        path,
        row_index,
        ("row-compound-index.csv", "row-compound-index.csv.gz", "rows.csv", "row-index.csv"),
        "row (compound)",
    )
    col_path = _index_file(
        path,
        column_index,
        ("column-assay-index.csv", "column-assay-index.csv.gz", "columns.csv", "column-index.csv"),
        "column (assay)",
    )
    try:
        matrix = scipy.io.mmread(str(path)).tocoo()
    except (ValueError, OSError, IndexError) as err:
        raise InputError(path, f"cannot read the MatrixMarket file ({err})") from err
    compounds = read_table(row_path, dtype_str=()).iloc[:, -1]
    assays = read_table(col_path, dtype_str=()).iloc[:, -1]
    compounds, assays = as_string_column(compounds), as_string_column(assays)
    refuse_padded(compounds, row_path, "compound")
    refuse_padded(assays, col_path, "assay")
    if len(compounds) != matrix.shape[0]:
        raise InputError(
            row_path,
            f"has {len(compounds)} rows but the matrix has {matrix.shape[0]}",
            "the row index must list every matrix row in order",
        )
    if len(assays) != matrix.shape[1]:
        raise InputError(
            col_path,
            f"has {len(assays)} rows but the matrix has {matrix.shape[1]} columns",
            "the column index must list every matrix column in order",
        )
    repeated = assays.duplicated(keep=False)
    if repeated.any():
        # distinct matrix columns that share an identifier (hti-cnn has 5 such ids): keep them apart
        occurrence = assays.groupby(assays).cumcount()
        renamed = assays.where(occurrence == 0, assays + "_" + (occurrence + 1).astype("string"))
        warnings.warn(
            f"{col_path}: {int(repeated.sum())} columns share {assays[repeated].nunique()} assay "
            f"identifiers (e.g. {assays[repeated].iloc[0]}); later copies are named <id>_2, <id>_3",
            stacklevel=2,
        )
        assays = renamed
    raw = pd.Series(matrix.data)
    values = _label_values(
        raw.astype(np.int64).astype(str) if np.all(np.mod(matrix.data, 1) == 0) else raw, path, "value", _MTX_VALUES
    )
    frame = pd.DataFrame(
        {
            COMPOUND: compounds.to_numpy(dtype=object)[matrix.row],
            "assay": assays.to_numpy(dtype=object)[matrix.col],
            "label": values.to_numpy(),
        }
    )
    return _finish_long(frame, path)


def align_labels(
    labels: LabelMatrix, wells: pd.DataFrame, path="labels", strict: bool = False
) -> tuple[LabelMatrix, list[str]]:
    """Keep labels of compounds that have wells; report the others (an error when ``strict``). A label for a
    compound whose wells are all controls (DMSO) is an error of the labels file."""
    if CONTROL in wells.columns:
        controls = set(wells.loc[wells[CONTROL] != "trt", COMPOUND].astype(str))
        controls -= set(wells.loc[wells[CONTROL] == "trt", COMPOUND].astype(str))
        labelled_controls = [c for c in labels.compounds if c in controls]
        if labelled_controls:
            raise InputError(
                path,
                f"{len(labelled_controls)} labelled compound(s) are only in control wells "
                f"(e.g. {', '.join(map(str, labelled_controls[:3]))})",
                "remove the labels of control compounds such as DMSO; only treatments are learned",
            )
    present = set(wells[COMPOUND].astype(str))
    unknown = [c for c in labels.compounds if c not in present]
    if unknown:
        message = (
            f"{len(unknown)} labelled compound(s) have no wells (e.g. {', '.join(map(str, unknown[:3]))}); "
            "their labels are left out"
        )
        if strict:
            raise InputError(
                path,
                message.replace("; their labels are left out", ""),
                "fix the compound identifiers or drop those labels",
            )
        warnings.warn(f"{path}: {message}", stacklevel=2)
        labels = labels.subset_compounds([c for c in labels.compounds if c in present])
    if labels.n_labels == 0:
        raise InputError(
            path,
            "no labelled compound matches a compound in the wells table",
            "labels and wells must use the same Metadata_Compound identifiers",
        )
    return labels, unknown
