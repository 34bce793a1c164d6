"""Reading contract tables (Parquet preferred, CSV/TSV accepted) and checking their columns.

Every check raises :class:`momil.errors.InputError` naming the file, the column or rows, and what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from momil.errors import InputError

TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
_WELL_RE = re.compile(r"^([A-Za-z]{1,2})[-_ ]?0*(\d{1,2})$")
MAX_ROWS, MAX_COLUMNS = 32, 48  # a 1536-well plate: rows A..AF, columns 1..48


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_table(path, columns: Sequence[str] | None = None, dtype_str: Iterable[str] = ()) -> pd.DataFrame:
    """Read a Parquet or delimited text table. Columns named in ``dtype_str`` are read as strings."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found", "check the path")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a table file (.parquet or .csv)")
    suffix = _suffix(path)
    dtype_str = list(dtype_str)
    try:
        if suffix in (".parquet", ".pq"):
            frame = pq.read_table(path, columns=list(columns) if columns else None).to_pandas()
        elif suffix in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz"):
            sep = "," if suffix.startswith(".csv") else "\t"
            frame = pd.read_csv(
                path,
                sep=sep,
                usecols=list(columns) if columns else None,
                dtype={c: str for c in dtype_str},
                keep_default_na=True,
                low_memory=False,
            )
        else:
            raise InputError(path, f"unknown table format '{suffix}'", "give a .parquet, .csv or .tsv file")
    except InputError:
        raise
    except ValueError as err:  # usecols not found, bad parquet columns
        raise InputError(path, f"cannot read the table ({err})") from err
    except (pa.ArrowInvalid, pa.ArrowException, OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(path, f"cannot read the table ({err})", "is it a valid Parquet/CSV file?") from err
    for column in dtype_str:
        if column in frame.columns:
            frame[column] = as_string_column(frame[column])
            refuse_padded(frame[column], path, column)
    return frame


def as_string_column(values: pd.Series) -> pd.Series:
    """Strings for identifier columns; integral floats (CSV readers' 24279.0) become '24279'; missing stays NA."""
    if pd.api.types.is_float_dtype(values):
        finite = values.dropna()
        if len(finite) and np.all(np.mod(finite, 1) == 0):
            values = values.astype("Int64")
    return values.astype("string")


def refuse_padded(values: pd.Series, path, column: str, first_row: int = 0) -> None:
    """Identifiers are matched exactly: a value with leading or trailing whitespace ("CPD-1 ") is refused with
    its row and column named, never stripped (stripping would merge it silently with "CPD-1" and make output keys
    differ from the input's). ``first_row`` is the data row of ``values``' first element."""
    text = values.astype("string")
    padded = (text != text.str.strip()).fillna(False).to_numpy(dtype=bool)
    if padded.any():
        rows = np.flatnonzero(padded) + first_row
        raise InputError(
            path,
            f"column {column} has values with leading or trailing whitespace at {rows_text(rows)} "
            f"(first: {text.iloc[int(np.argmax(padded))]!r})",
            "remove the spaces: identifiers are matched exactly, never trimmed",
        )


def require_columns(frame: pd.DataFrame, required: Sequence[str], path, what: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        shown = ", ".join(map(str, list(frame.columns)[:12]))
        raise InputError(
            path,
            f"missing required column(s) {', '.join(missing)} in the {what} table (it has: {shown})",
            "add or rename the column(s); names are exact (see docs/input-contract.md)",
        )


def rows_text(index: Iterable[int], limit: int = 5) -> str:
    """'rows 3, 7, 9 (and 12 more)' with 1-based data row numbers as a spreadsheet shows them (+header)."""
    rows = [int(i) for i in index]
    shown = ", ".join(str(r + 2) for r in rows[:limit])
    more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
    word = "row" if len(rows) == 1 else "rows"
    return f"{word} {shown}{more}"


def require_no_missing(frame: pd.DataFrame, columns: Sequence[str], path) -> None:
    for column in columns:
        values = frame[column]
        missing = values.isna()
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            missing |= values.astype("string").str.strip().fillna("") == ""
        if missing.any():
            raise InputError(
                path,
                f"column {column} is empty at {rows_text(np.flatnonzero(missing.to_numpy()))}",
                "every row needs a value there",
            )


def normalise_well(well: str) -> str | None:
    """'A1' -> 'A01', 'p24' -> 'P24', 'AF48' -> 'AF48'; None if it is not a well position."""
    match = _WELL_RE.match(str(well))
    if not match:
        return None
    row, column = match.groups()
    column_number = int(column)
    row = row.upper()
    row_number = ord(row[-1]) - ord("A") + (26 * (ord(row[0]) - ord("A") + 1) if len(row) == 2 else 0)
    if not 1 <= column_number <= MAX_COLUMNS or row_number >= MAX_ROWS:
        return None
    return f"{row}{column_number:02d}"


def normalise_wells(values: pd.Series, path, column: str = "Metadata_Well", first_row: int = 0) -> pd.Series:
    refuse_padded(values, path, column, first_row)
    uniques = pd.unique(values.astype("string"))
    mapping = {u: normalise_well(u) if u is not pd.NA else None for u in uniques}
    bad = [u for u, v in mapping.items() if v is None]
    if bad:
        mask = values.astype("string").isin([b for b in bad if b is not pd.NA]) | values.isna()
        raise InputError(
            path,
            f"column {column} has values that are not well positions ({', '.join(map(repr, bad[:5]))}) "
            f"at {rows_text(np.flatnonzero(mask.to_numpy()))}",
            "use a row letter and a column number such as A01 or A1 (rows A..AF, columns 1..48)",
        )
    return values.astype("string").map(mapping).astype("string")


def well_row_col(well: str) -> tuple[int, int]:
    """'B03' -> (1, 2): zero-based row and column."""
    match = _WELL_RE.match(well)
    if not match:
        raise ValueError(f"not a well position: {well!r}")
    letters, column = match.groups()
    letters = letters.upper()
    row = 0
    for ch in letters:
        row = row * 26 + (ord(ch) - ord("A") + 1)
    return row - 1, int(column) - 1


def write_table_atomic(frame: pd.DataFrame, path, metadata: dict | None = None) -> Path:
    """Write a Parquet table under a temporary name, then rename it into place."""
    from momil.io.atomic import atomic_path

    path = Path(path)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        import json

        merged = dict(table.schema.metadata or {})
        merged[b"momil"] = json.dumps(metadata, default=str).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_table_metadata(path) -> dict:
    import json

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"momil")
    return json.loads(raw) if raw else {}
