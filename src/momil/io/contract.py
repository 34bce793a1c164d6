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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from momil.errors import InputError
from momil.io.assays import (  # noqa: F401 (re-exported: parts 5 and 6 of the contract)
    assay_genes,
    default_assays,
    read_assays,
    read_associations,
)
from momil.io.columns import (  # noqa: F401 (the column names are part of this module's interface)
    BATCH,
    COMPOUND,
    CONTROL,
    CONTROL_TYPES,
    INCHIKEY,
    PLATE,
    SITE,
    SMILES,
    WELL,
)
from momil.io.labels import (  # noqa: F401 (re-exported: part 4 of the contract)
    LabelMatrix,
    align_labels,
    read_labels,
    read_labels_mtx,
)
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
