"""Readers for the six parts of the input contract (docs: ../shared/docs/input-contract.md), each validated.

1. wells            :func:`read_wells`
2a. instance features :class:`InstanceSource` (streams in row groups)
2b. images (LoadData) :func:`read_load_data`
3. compounds        :func:`read_compounds`
4. assay labels     :func:`read_labels` (long, wide or MatrixMarket) -> :class:`LabelMatrix`
5. assays           :func:`read_assays`
6. protein associations :func:`read_associations`
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from momil.errors import InputError
from momil.io.readers import guarded_batches
from momil.io.tables import (
    as_string_column,
    normalise_wells,
    read_table,
    refuse_padded,
    require_columns,
    require_no_missing,
    rows_text,
)

log = logging.getLogger(__name__)

PLATE, WELL, BATCH, COMPOUND, CONTROL, SITE = (
    "Metadata_Plate",
    "Metadata_Well",
    "Metadata_Batch",
    "Metadata_Compound",
    "Metadata_ControlType",
    "Metadata_Site",
)
SMILES, INCHIKEY = "Metadata_SMILES", "Metadata_InChIKey"
CONTROL_TYPES = ("negcon", "poscon", "trt")


# ----------------------------------------------------------------------------------------------------- wells
def read_wells(path) -> pd.DataFrame:
    """Contract part 1. Returns columns plate, well (A01 style), batch, compound, control_type (+ extras)."""
    frame = read_table(path, dtype_str=(PLATE, WELL, BATCH, COMPOUND, CONTROL))
    return validate_wells(frame, path)


def validate_wells(frame: pd.DataFrame, path="wells") -> pd.DataFrame:
    require_columns(frame, (PLATE, WELL, COMPOUND), path, "wells")
    frame = frame.reset_index(drop=True).copy()
    if len(frame) == 0:
        raise InputError(path, "the wells table has no rows", "list one row per well")
    for column in (PLATE, WELL, COMPOUND, BATCH, CONTROL):
        if column in frame.columns:
            frame[column] = as_string_column(frame[column])
            refuse_padded(frame[column], path, column)
    require_no_missing(frame, (PLATE, WELL, COMPOUND), path)
    frame[WELL] = normalise_wells(frame[WELL], path)
    duplicated = frame.duplicated([PLATE, WELL], keep=False)
    if duplicated.any():
        first = frame.loc[duplicated, [PLATE, WELL]].iloc[0]
        raise InputError(
            path,
            f"(Metadata_Plate, Metadata_Well) is not unique: {first[PLATE]}/{first[WELL]} and others at "
            f"{rows_text(np.flatnonzero(duplicated.to_numpy()))}",
            "keep one row per well (wells written as A1 and A01 are the same well)",
        )
    if BATCH not in frame.columns:
        frame[BATCH] = pd.array([pd.NA] * len(frame), dtype="string")
    frame[BATCH] = frame[BATCH].fillna("batch0")
    if CONTROL in frame.columns:
        control = frame[CONTROL].fillna("").str.lower()
        control = control.where(~control.str.startswith("poscon"), "poscon")
        control = control.where(~control.isin(["", "nan", "na", "none", "treatment", "trt"]), "trt")
        bad = ~control.isin(CONTROL_TYPES)
        if bad.any():
            values = sorted(set(frame.loc[bad, CONTROL].astype(str)))[:5]
            raise InputError(
                path,
                f"column {CONTROL} has unknown values {values} at {rows_text(np.flatnonzero(bad.to_numpy()))}",
                "use negcon, poscon, trt or leave it empty",
            )
        frame[CONTROL] = control.astype("string")
    else:
        frame[CONTROL] = pd.array(["trt"] * len(frame), dtype="string")
    return frame


# ------------------------------------------------------------------------------------------ instance features
@dataclasses.dataclass
class InstanceChunk:
    plates: np.ndarray  # (rows,) object
    wells: np.ndarray  # (rows,) object, A01 style
    features: np.ndarray  # (rows, D) float32
    meta: pd.DataFrame  # other Metadata_* columns of these rows
    first_row: int  # index of the chunk's first row in the whole source


class InstanceSource:
    """Contract part 2a: instance features in one Parquet/CSV file or a folder of Parquet parts.

    Never holds the file in memory: :meth:`iter_chunks` yields row groups (at most ``chunk_rows`` rows).
    Feature columns are every non-``Metadata_*`` column and must be numeric; all parts share them.
    """

    def __init__(self, path, chunk_rows: int = 65536):
        self.path = Path(path)
        self.chunk_rows = int(chunk_rows)
        if not self.path.exists():
            raise InputError(self.path, "file not found", "check the path")
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.iterdir() if p.suffix in (".parquet", ".pq"))
            if not self.files:
                raise InputError(self.path, "the folder holds no .parquet files", "point to the instance table")
        else:
            self.files = [self.path]
        self.feature_names: list[str] = []
        self.meta_names: list[str] = []
        self._check_schemas()

    def _schema(self, file: Path) -> pa.Schema:
        if file.suffix in (".parquet", ".pq"):
            try:
                return pq.read_schema(file)
            except (pa.ArrowException, OSError) as err:
                raise InputError(file, f"cannot read the Parquet schema ({err})") from err
        try:
            reader = pacsv.open_csv(file, read_options=pacsv.ReadOptions(block_size=1 << 20))
        except (pa.ArrowException, OSError) as err:
            raise InputError(file, f"cannot read the CSV table ({err})") from err
        return reader.schema

    def _check_schemas(self) -> None:
        for number, file in enumerate(self.files):
            schema = self._schema(file)
            names = schema.names
            missing = [c for c in (PLATE, WELL) if c not in names]
            if missing:
                raise InputError(
                    file,
                    f"missing required column(s) {', '.join(missing)} in the instance table",
                    "name them Metadata_Plate and Metadata_Well",
                )
            features = [n for n in names if not n.startswith("Metadata_")]
            if not features:
                raise InputError(
                    file, "no feature columns (every column starts with Metadata_)", "add the numeric feature columns"
                )
            for name in features:
                field_type = schema.field(name).type
                if not (
                    pa.types.is_integer(field_type)
                    or pa.types.is_floating(field_type)
                    or pa.types.is_null(field_type)
                    or pa.types.is_boolean(field_type)
                ):
                    raise InputError(
                        file,
                        f"feature column {name!r} has type {field_type}, expected numbers",
                        "every column not named Metadata_* is a feature and must be numeric; "
                        "prefix metadata columns with Metadata_",
                    )
            if number == 0:
                self.feature_names = features
                self.meta_names = [n for n in names if n.startswith("Metadata_") and n not in (PLATE, WELL)]
            elif features != self.feature_names:
                raise InputError(
                    file,
                    f"its {len(features)} feature columns differ from the {len(self.feature_names)} of "
                    f"{self.files[0].name}",
                    "all instance files must have the same feature columns in the same order",
                )

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    def _batches(self, file: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
        if file.suffix in (".parquet", ".pq"):
            # pre_buffer=False: pyarrow otherwise reads ahead and holds far more than one row group
            try:
                handle = pq.ParquetFile(file, pre_buffer=False)
            except (pa.ArrowException, OSError) as err:
                raise InputError(
                    file, f"cannot read the Parquet file ({str(err).splitlines()[0]})", "is it a valid Parquet file?"
                ) from err
            yield from guarded_batches(
                handle.iter_batches(batch_size=self.chunk_rows, columns=columns, use_threads=False),
                file,
                "instance table",
            )
        else:
            # bytes per block ~ rows x columns x ~10 characters: keeps memory near the Parquet path's.
            block = max(1 << 20, self.chunk_rows * (len(columns) + 2) * 10)
            convert = pacsv.ConvertOptions(
                include_columns=columns, column_types={PLATE: pa.string(), WELL: pa.string()}
            )
            try:
                reader = pacsv.open_csv(file, read_options=pacsv.ReadOptions(block_size=block), convert_options=convert)
            except (pa.ArrowException, OSError) as err:
                raise InputError(file, f"cannot read the CSV table ({str(err).splitlines()[0]})") from err
            yield from guarded_batches(reader, file, "instance table")

    def iter_keys(self) -> Iterator[tuple[np.ndarray, np.ndarray, int, Path]]:
        """(plates, wells, first_row, file) per chunk, reading only the two key columns (cheap first pass)."""
        row = 0
        for file in self.files:
            for batch in self._batches(file, [PLATE, WELL]):
                plates, wells = self._keys(batch, file, row)
                yield plates, wells, row, file
                row += batch.num_rows

    def _keys(self, batch: pa.RecordBatch, file: Path, first_row: int) -> tuple[np.ndarray, np.ndarray]:
        plates = pd.Series(batch.column(PLATE).to_pandas(), dtype="object")
        wells = pd.Series(batch.column(WELL).to_pandas(), dtype="object")
        for name, values in ((PLATE, plates), (WELL, wells)):
            empty = values.isna()
            if empty.any():
                raise InputError(
                    file,
                    f"column {name} is empty at data row {first_row + int(np.argmax(empty)) + 1}",
                    "every instance needs its plate and well",
                )
        plates = as_string_column(plates)
        refuse_padded(plates, file, PLATE, first_row)
        wells = normalise_wells(wells, file, first_row=first_row)
        return plates.to_numpy(dtype=object), wells.to_numpy(dtype=object)

    def iter_chunks(self, with_meta: bool = True) -> Iterator[InstanceChunk]:
        row = 0
        columns = [PLATE, WELL] + (self.meta_names if with_meta else []) + self.feature_names
        for file in self.files:
            for batch in self._batches(file, columns):
                plates, wells = self._keys(batch, file, row)
                features = self._features(batch, file, row)
                meta = (
                    pd.DataFrame({n: batch.column(n).to_pandas() for n in self.meta_names})
                    if with_meta
                    else pd.DataFrame(index=range(batch.num_rows))
                )
                yield InstanceChunk(plates, wells, features, meta, row)
                row += batch.num_rows

    def _features(self, batch: pa.RecordBatch, file: Path, first_row: int) -> np.ndarray:
        columns = []
        for name in self.feature_names:
            column = batch.column(name)
            if pa.types.is_null(column.type):
                raise InputError(file, f"feature column {name!r} is entirely empty", "drop it or fill it")
            columns.append(column.to_numpy(zero_copy_only=False).astype(np.float32, copy=False))
        features = np.stack(columns, axis=1) if columns else np.zeros((batch.num_rows, 0), np.float32)
        finite = np.isfinite(features)
        if not finite.all():
            bad_row, bad_col = np.argwhere(~finite)[0]
            count = int((~finite).any(axis=1).sum())
            raise InputError(
                file,
                f"{count} instance(s) in rows {first_row + 1}..{first_row + batch.num_rows} have NaN or "
                f"infinite features; the first is data row {first_row + int(bad_row) + 1}, column "
                f"{self.feature_names[bad_col]!r} = {features[bad_row, bad_col]}",
                "drop or impute those instances before ingesting",
            )
        return features


# -------------------------------------------------------------------------------------------- images (LoadData)
def read_load_data(path) -> tuple[pd.DataFrame, list[str]]:
    """Contract part 2b: a CellProfiler LoadData index. Returns (table, channel names in column order)."""
    frame = read_table(path, dtype_str=(PLATE, WELL, SITE))
    require_columns(frame, (PLATE, WELL, SITE), path, "LoadData")
    # image channels; FileName_Illum* are CellProfiler illumination functions, not images
    channels = [
        c[len("FileName_") :] for c in frame.columns if c.startswith("FileName_") and not c.startswith("FileName_Illum")
    ]
    if not channels:
        raise InputError(
            path,
            "no FileName_<Channel> columns",
            "add FileName_<Channel> and PathName_<Channel> for every channel (CellProfiler LoadData convention)",
        )
    missing = [f"PathName_{c}" for c in channels if f"PathName_{c}" not in frame.columns]
    if missing:
        raise InputError(
            path, f"missing column(s) {', '.join(missing)}", "every FileName_<Channel> needs its PathName_<Channel>"
        )
    frame = frame.reset_index(drop=True).copy()
    if len(frame) == 0:
        raise InputError(path, "the LoadData table has no rows", "list one row per field of view")
    require_no_missing(frame, [PLATE, WELL, SITE] + [f"FileName_{c}" for c in channels], path)
    frame[WELL] = normalise_wells(frame[WELL], path)
    duplicated = frame.duplicated([PLATE, WELL, SITE], keep=False)
    if duplicated.any():
        raise InputError(
            path,
            f"(plate, well, site) is not unique at {rows_text(np.flatnonzero(duplicated))}",
            "keep one row per field of view",
        )
    for channel in channels:
        frame[f"PathName_{channel}"] = frame[f"PathName_{channel}"].fillna("").astype(str)
    return frame, channels


def require_listed_fields(table: pd.DataFrame, wells: pd.DataFrame, path) -> None:
    """Every LoadData field (``table``) must belong to a well of the wells table (``momil extract`` and
    ``momil validate`` refuse the same way)."""
    keys = set(zip(wells[PLATE], wells[WELL]))
    unknown = [i for i, k in enumerate(zip(table[PLATE], table[WELL])) if k not in keys]
    if unknown:
        raise InputError(
            path,
            f"{len(unknown)} field(s) belong to wells the wells table lacks (first: data row {unknown[0] + 1}, "
            f"plate {table[PLATE].iat[unknown[0]]}, well {table[WELL].iat[unknown[0]]})",
            "add those wells to wells.parquet or drop the fields",
        )


def missing_image_files(frame: pd.DataFrame, channels: Sequence[str], root) -> list[tuple[int, str, Path]]:
    """(data row, channel, path) of every LoadData image file that does not exist (relative PathName_ columns
    start from ``root``)."""
    missing = []
    root = Path(root) if root is not None else None
    for row, record in enumerate(frame.to_dict("records")):
        for channel in channels:
            path = image_path(record, channel, root)
            if not path.is_file():
                missing.append((row, channel, path))
    return missing


def image_path(row, channel: str, root: Path | None) -> Path:
    """The file of ``channel`` in a LoadData row: PathName_ / FileName_, relative paths from ``root``."""
    path = Path(str(row.get(f"PathName_{channel}", "") or "")) / str(row[f"FileName_{channel}"])
    if not path.is_absolute() and root is not None:
        path = root / path
    return path


# ------------------------------------------------------------------------------------------------- compounds
def read_compounds(path) -> pd.DataFrame:
    """Contract part 3: Metadata_Compound plus Metadata_SMILES and/or Metadata_InChIKey."""
    frame = read_table(path, dtype_str=(COMPOUND, SMILES, INCHIKEY))
    require_columns(frame, (COMPOUND,), path, "compounds")
    if SMILES not in frame.columns and INCHIKEY not in frame.columns:
        raise InputError(
            path, "neither Metadata_SMILES nor Metadata_InChIKey is present", "add at least one structure column"
        )
    frame = frame.reset_index(drop=True).copy()
    require_no_missing(frame, (COMPOUND,), path)
    for column in (SMILES, INCHIKEY):
        if column not in frame.columns:
            frame[column] = pd.array([pd.NA] * len(frame), dtype="string")
        frame[column] = frame[column].replace("", pd.NA)
    duplicated = frame.duplicated(COMPOUND, keep=False)
    if duplicated.any():
        conflicting = frame[duplicated].groupby(COMPOUND)[[SMILES, INCHIKEY]].nunique(dropna=True).max(axis=1) > 1
        if conflicting.any():
            name = conflicting[conflicting].index[0]
            raise InputError(
                path,
                f"compound {name!r} is listed with different structures at "
                f"{rows_text(np.flatnonzero(frame[COMPOUND].eq(name)))}",
                "keep one structure per compound",
            )
        frame = frame.drop_duplicates(COMPOUND).reset_index(drop=True)
    return frame


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
