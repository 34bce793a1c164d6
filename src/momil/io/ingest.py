"""`momil ingest`: instance features (Parquet/CSV, contract 2a) + wells (contract 1) -> an instance store.

Two streaming passes with memory bounded by ``memory_mb``: the first reads only the plate and well columns and
counts each well's instances (so the file need not be grouped by well); the second reads feature row groups and
writes each row to its well's reserved place, keeping file order within a well.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.errors import InputError
from momil.io.contract import PLATE, WELL, InstanceSource, read_wells
from momil.io.paths import check_output
from momil.io.provenance import provenance
from momil.io.store import InstanceStore, StoreWriter
from momil.progress import progress


@dataclasses.dataclass
class IngestSettings(Settings):
    dtype: str = setting(
        "float32", "float16 halves the store; float32 keeps every digit", choices=["float16", "float32"]
    )
    memory_mb: int = setting(
        256, "bound on the feature rows held at once (plus one Parquet row group being decoded)", low=1
    )
    drop_empty_wells: bool = setting(False, "wells listed without instances: error (default) or drop with a warning")
    overwrite: bool = setting(False)


def _rows_per_chunk(dim: int, memory_mb: int) -> int:
    # a chunk exists ~4 times at once (arrow columns, float32 stack, sorted copy, cast)
    return int(max(1024, min(1_000_000, memory_mb * 1024 * 1024 // max(1, dim * 4 * 4))))


def _check_range(chunk, source: InstanceSource, dtype: str) -> None:
    """Refuse feature values the store's dtype cannot hold (float16: magnitudes above 65504 become infinite)."""
    if dtype == "float32":  # the chunk is float32 already: nothing can overflow the cast
        return
    limit = float(np.finfo(np.dtype(dtype)).max)
    too_big = np.abs(chunk.features) > limit
    if too_big.any():
        row, column = np.argwhere(too_big)[0]
        raise InputError(
            source.path,
            f"{int(too_big.sum())} feature value(s) exceed {dtype}'s range (+-{limit:g}); "
            f"the first is data row {chunk.first_row + int(row) + 1}, column "
            f"{source.feature_names[column]!r} = {chunk.features[row, column]:g}",
            "ingest with --dtype float32, or rescale the features",
        )


def _well_keys(well_table: pd.DataFrame) -> pd.Index:
    return pd.Index(well_table[PLATE].astype(str) + "\x1f" + well_table[WELL].astype(str))


def count_instances(
    source: InstanceSource,
    well_table: pd.DataFrame,
    wells_path,
    drop_empty_wells: bool = False,
    show_progress: bool = False,
) -> np.ndarray:
    """Instances per well of ``well_table`` (ingest's first pass, and what ``momil validate`` checks).

    Refuses instances of wells the table does not list, an instance table without rows, and wells without
    instances (empty bags) unless ``drop_empty_wells`` (then a warning)."""
    keys = _well_keys(well_table)
    counts = np.zeros(len(keys), dtype=np.int64)
    with progress(desc="ingest: counting", unit="rows", enabled=show_progress) as bar:
        for plates, well_names, first_row, file in source.iter_keys():
            index = keys.get_indexer(pd.Index(plates.astype(str)) + "\x1f" + pd.Index(well_names.astype(str)))
            unknown = index < 0
            if unknown.any():
                row = int(np.argmax(unknown))
                raise InputError(
                    file,
                    f"instance row {first_row + row + 1} belongs to well {plates[row]}/"
                    f"{well_names[row]}, which {Path(wells_path).name} does not list "
                    f"({int(unknown.sum())} such rows in this block)",
                    "add the well to the wells table or drop its instances",
                )
            counts += np.bincount(index, minlength=len(keys))
            bar.update(len(index))
    if counts.sum() == 0:
        raise InputError(source.path, "holds no instances", "the instance table is empty")
    empty = counts == 0
    if empty.any():
        names = ", ".join((well_table[PLATE] + "/" + well_table[WELL])[empty].head(5))
        message = f"{int(empty.sum())} well(s) listed in {Path(wells_path).name} have no instance (empty bags: {names})"
        if not drop_empty_wells:
            raise InputError(source.path, message, "remove them from the wells table or pass --drop-empty-wells")
        warnings.warn(f"{source.path}: {message}; they are dropped", stacklevel=2)
    return counts


def ingest(instances, wells, out, settings: IngestSettings | None = None, show_progress: bool = True) -> InstanceStore:
    settings = settings or IngestSettings()
    started = time.perf_counter()
    check_output(out, "dir", {"--instances": instances, "--wells": wells}, settings.overwrite)
    well_table = read_wells(wells)
    probe = InstanceSource(instances)
    source = InstanceSource(instances, chunk_rows=_rows_per_chunk(probe.dim, settings.memory_mb))
    keys = _well_keys(well_table)
    counts = count_instances(source, well_table, wells, settings.drop_empty_wells, show_progress)
    total_rows = int(counts.sum())
    empty = counts == 0
    keep = ~empty
    # plate-major order keeps each plate's rows together (plate-wise correction reads them in one sweep)
    table = well_table.assign(count=counts, _key=np.arange(len(keys)))[keep]
    table = table.sort_values([PLATE, WELL], kind="stable").reset_index(drop=True)

    record = provenance(
        "ingest",
        settings,
        inputs={"instances": instances, "wells": wells},
        rows=int(total_rows),
        dropped_empty_wells=int(empty.sum()),
    )
    writer = StoreWriter.create(
        out, dim=source.dim, dtype=settings.dtype, feature_names=source.feature_names, overwrite=settings.overwrite
    )
    with writer:
        offsets = writer.reserve(table.drop(columns="_key"), source=wells)
        offset_of_key = np.full(len(keys), -1, dtype=np.int64)
        offset_of_key[table["_key"].to_numpy()] = offsets
        cursor = np.zeros(len(keys), dtype=np.int64)
        with progress(total=total_rows, desc="ingest: writing", unit="rows", enabled=show_progress) as bar:
            for chunk in source.iter_chunks():
                _check_range(chunk, source, settings.dtype)
                index = keys.get_indexer(
                    pd.Index(chunk.plates.astype(str)) + "\x1f" + pd.Index(chunk.wells.astype(str))
                )
                within = pd.Series(index).groupby(index).cumcount().to_numpy()
                positions = offset_of_key[index] + cursor[index] + within
                cursor += np.bincount(index, minlength=len(keys))
                writer.write_rows(positions, chunk.features)
                writer.add_meta(chunk.meta, positions)
                bar.update(len(index))
        record["seconds"] = round(time.perf_counter() - started, 3)
        writer.set_provenance(record)
    return InstanceStore(out)
