"""The instance store: every instance of a screen in one memory-mapped ragged array plus a well index.

A store is a folder::

    manifest.json           what the store holds; written last, it is the commit record
    features.bin            (n_instances, dim) float16 or float32, C order, raw (np.memmap)
    wells-<gen>.parquet     one row per well: Metadata_Plate, Metadata_Well, Metadata_Batch,
                            Metadata_Compound, Metadata_ControlType, offset, count (+ extra well columns)
    meta-<n>.parquet        optional per-instance metadata parts (Metadata_Site, tile position, ...) with the
                            instance's row number in ``_row``

A well's bag is ``features[offset:offset + count]``: reading it touches only that well's rows.

Crash safety: a new store is built in a hidden temporary folder and renamed into place on commit. An append
writes rows past the committed end of ``features.bin``, then a new well index under a new generation name, then
swaps ``manifest.json`` (atomic rename). Until that swap the store opens as it was; rows past the committed
end are ignored and overwritten by the next append.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from momil.errors import InputError, MomilError
from momil.faults import fault_point
from momil.io.atomic import remove_stale_temporaries, write_json_atomic
from momil.io.contract import BATCH, COMPOUND, CONTROL, PLATE, WELL
from momil.io.readers import read_json, read_parquet_frame

FORMAT = "momil-instance-store"
FORMAT_VERSION = 1
DTYPES = {"float16": np.float16, "float32": np.float32}
WELL_COLUMNS = [PLATE, WELL, BATCH, COMPOUND, CONTROL]


class InstanceStore:
    """Read access to a committed store. ``features`` is a read-only memmap of shape (n_instances, dim)."""

    def __init__(self, path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            hint = (
                "it was never completed (interrupted write?) or is not a store"
                if self.path.exists()
                else "the folder does not exist"
            )
            raise MomilError(f"{self.path}: not an instance store ({hint}) -- run `momil ingest` to make one")
        self.manifest = read_json(manifest_path, "store manifest")
        if (
            not isinstance(self.manifest, dict)
            or self.manifest.get("format") != FORMAT
            or not self.manifest.get("complete")
        ):
            raise MomilError(
                f"{self.path}: manifest.json does not describe a complete instance store -- "
                "write the store again (momil ingest, correct or extract)"
            )
        try:
            self.dim = int(self.manifest["dim"])
            self.n_instances = int(self.manifest["n_instances"])
            self.dtype = np.dtype(DTYPES[self.manifest["dtype"]])
            self.feature_names: list[str] = list(self.manifest["feature_names"])
            wells_file = str(self.manifest["wells_file"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                manifest_path,
                f"the store manifest lacks or garbles the entry {err}",
                "the store is damaged; write it again",
            ) from err
        need = self.n_instances * self.dim * self.dtype.itemsize
        have = (self.path / "features.bin").stat().st_size if (self.path / "features.bin").exists() else -1
        if have < need:
            raise MomilError(
                f"{self.path}: features.bin holds {have} bytes, the manifest needs {need} -- "
                "the store is damaged; ingest again"
            )
        self.wells = read_parquet_frame(self.path / wells_file, "store's well index")
        missing = [c for c in WELL_COLUMNS + ["offset", "count"] if c not in self.wells.columns]
        if missing:
            raise InputError(
                self.path / wells_file,
                f"the store's well index lacks column(s) {missing}",
                "the store is damaged; write it again",
            )
        self._features: np.memmap | None = None
        self._meta: pd.DataFrame | None = None
        self._finite_checked = np.zeros(len(self.wells), dtype=bool)  # wells whose bags were seen to be finite

    # -- arrays
    @property
    def features(self) -> np.ndarray:
        if self._features is None:
            if self.n_instances == 0:
                self._features = np.zeros((0, self.dim), dtype=self.dtype)
            else:
                self._features = np.memmap(
                    self.path / "features.bin", dtype=self.dtype, mode="r", shape=(self.n_instances, self.dim)
                )
        return self._features

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh array read with plain file I/O (no mapping): sequential sweeps over
        a large store then keep only the block in memory, where touched memmap pages would stay resident."""
        count = max(0, stop - start)
        with open(self.path / "features.bin", "rb") as handle:
            handle.seek(start * self.dim * self.dtype.itemsize)
            data = np.fromfile(handle, dtype=self.dtype, count=count * self.dim)
        return data.reshape(count, self.dim)

    @property
    def offsets(self) -> np.ndarray:
        return self.wells["offset"].to_numpy(np.int64)

    @property
    def counts(self) -> np.ndarray:
        return self.wells["count"].to_numpy(np.int64)

    @property
    def n_wells(self) -> int:
        return len(self.wells)

    def bag(self, well: int) -> np.ndarray:
        """Instances of the well at row ``well`` of :attr:`wells`: (count, dim), a view into the memmap."""
        offset, count = int(self.offsets[well]), int(self.counts[well])
        return self.features[offset : offset + count]

    def require_finite(self, wells: np.ndarray, bags: np.ndarray) -> None:
        """Refuse NaN or infinite features in the bags of ``wells`` (``bags``: (B, N, D), padded with zeros).

        Model inputs pass here: each well is checked the first time it is read in this process, so the cost is
        one pass over the store, not one per epoch. Stores momil writes are finite; this catches a store made
        by an older version or changed by hand."""
        wells = np.asarray(wells, dtype=np.int64)
        new = ~self._finite_checked[wells]
        if not new.any():
            return
        finite = np.isfinite(bags[new].reshape(int(new.sum()), -1)).all(axis=1)
        if not finite.all():
            first = int(wells[new][np.argmin(finite)])
            row = self.wells.iloc[first]
            raise InputError(
                self.path,
                f"well {row[PLATE]}/{row[WELL]} (compound {row[COMPOUND]}) holds NaN or infinite features",
                "write the store again with momil ingest / correct, which refuse such values",
            )
        self._finite_checked[wells[new]] = True

    def well_index(self, plate: str, well: str) -> int:
        hits = np.flatnonzero((self.wells[PLATE] == plate).to_numpy() & (self.wells[WELL] == well).to_numpy())
        if len(hits) == 0:
            raise KeyError(f"{plate}/{well}")
        return int(hits[0])

    def instance_meta(self, well: int | None = None) -> pd.DataFrame:
        """Per-instance metadata (e.g. Metadata_Site, tile position), all or one well's, in bag order."""
        if self._meta is None:
            parts = [
                read_parquet_frame(self.path / name, "store's instance metadata")
                for name in self.manifest.get("meta_files", [])
            ]
            self._meta = (
                pd.concat(parts, ignore_index=True).sort_values("_row").reset_index(drop=True)
                if parts
                else pd.DataFrame({"_row": np.zeros(0, np.int64)})
            )
            self._meta = self._meta[self._meta["_row"] < self.n_instances]
        if well is None:
            return self._meta
        start, stop = int(self.offsets[well]), int(self.offsets[well] + self.counts[well])
        rows = self._meta["_row"].to_numpy()
        lo, hi = np.searchsorted(rows, start), np.searchsorted(rows, stop)
        return self._meta.iloc[lo:hi].reset_index(drop=True)

    def plates(self) -> list[str]:
        return list(pd.unique(self.wells[PLATE]))

    def iter_plates(self) -> Iterator[tuple[str, pd.DataFrame]]:
        yield from self.wells.groupby(PLATE, sort=False)

    def summary(self) -> dict:
        wells = self.wells
        return {
            "path": str(self.path),
            "wells": int(len(wells)),
            "instances": self.n_instances,
            "dim": self.dim,
            "dtype": self.manifest["dtype"],
            "plates": int(wells[PLATE].nunique()),
            "batches": int(wells[BATCH].nunique()),
            "compounds": int(wells[COMPOUND].nunique()),
            "negcon_wells": int((wells[CONTROL] == "negcon").sum()),
            "instances_per_well": {
                "min": int(wells["count"].min()) if len(wells) else 0,
                "median": float(wells["count"].median()) if len(wells) else 0.0,
                "max": int(wells["count"].max()) if len(wells) else 0,
            },
            "bytes": self.n_instances * self.dim * self.dtype.itemsize,
        }

    def __repr__(self) -> str:
        return (
            f"InstanceStore({str(self.path)!r}: {self.n_wells} wells, {self.n_instances} instances x "
            f"{self.dim} {self.manifest['dtype']})"
        )


class StoreWriter:
    """Writes a new store (in a temporary folder, renamed on commit) or appends to an existing one.

    Use as a context manager: it commits when the block ends without error and leaves nothing otherwise::

        with StoreWriter.create(path, dim=768, dtype="float16", feature_names=names) as writer:
            writer.add_bag(well_record, features)          # streaming, one well at a time
        # or: offsets = writer.reserve(wells_with_counts); writer.write_rows(positions, rows)
    """

    def __init__(
        self, final_path: Path, work_path: Path, manifest: dict, wells: pd.DataFrame, new: bool, overwrite: bool = False
    ):
        self.final_path = final_path
        self.work_path = work_path
        self.manifest = manifest
        self.dim = int(manifest["dim"])
        self.dtype = np.dtype(DTYPES[manifest["dtype"]])
        self.new = new
        self.overwrite = overwrite
        self._wells_committed = wells
        self._new_wells: list[pd.DataFrame] = []
        self._new_meta: list[pd.DataFrame] = []
        self._keys: set[str] | None = None
        self._bag_records: list[dict] = []  # wells added one at a time by add_bag
        self.n_rows = int(manifest["n_instances"])  # rows in use, committed + pending
        self._meta_counter = len(manifest.get("meta_files", []))
        self._file = open(work_path / "features.bin", "r+b" if (work_path / "features.bin").exists() else "w+b")
        # drop an uncommitted tail left by an interrupted append
        self._file.truncate(self.n_rows * self.dim * self.dtype.itemsize)
        self._closed = False

    # -- construction
    @classmethod
    def create(
        cls, path, dim: int, dtype: str = "float32", feature_names: Sequence[str] | None = None, overwrite: bool = False
    ) -> StoreWriter:
        path = Path(path)
        if dtype not in DTYPES:
            raise MomilError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        if path.exists() and not overwrite:
            raise MomilError(f"{path}: already exists -- choose another output folder or pass --overwrite")
        if path.exists() and not path.is_dir():
            raise MomilError(f"{path}: exists and is not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        work = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        work.mkdir()
        names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(dim)]
        if len(names) != dim:
            raise MomilError(f"{len(names)} feature names for dim {dim}")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": False,
            "dtype": dtype,
            "dim": int(dim),
            "n_instances": 0,
            "n_wells": 0,
            "feature_names": names,
            "wells_file": None,
            "meta_files": [],
            "generation": 0,
            "history": [],
        }
        empty = pd.DataFrame({c: pd.array([], dtype="string") for c in WELL_COLUMNS})
        empty["offset"] = np.zeros(0, np.int64)
        empty["count"] = np.zeros(0, np.int64)
        return cls(path, work, manifest, empty, new=True, overwrite=overwrite)

    @classmethod
    def append_to(cls, path) -> StoreWriter:
        store = InstanceStore(path)
        manifest = dict(store.manifest)
        return cls(Path(path), Path(path), manifest, store.wells, new=False)

    # -- writing
    def _check_open(self):
        if self._closed:
            raise MomilError("store writer is closed")

    def _check_new_wells(self, wells: pd.DataFrame, source) -> None:
        keys = (wells[PLATE].astype(str) + "/" + wells[WELL].astype(str)).tolist()
        if len(set(keys)) != len(keys):
            dup = pd.Series(keys)[pd.Series(keys).duplicated()].iloc[0]
            raise InputError(source, f"well {dup} is given twice", "each well is one bag")
        if self._keys is None:
            committed = self._wells_committed
            self._keys = set(committed[PLATE].astype(str) + "/" + committed[WELL].astype(str))
        clash = [k for k in keys if k in self._keys]
        if clash:
            raise InputError(
                source,
                f"well {clash[0]} is already in the store {self.final_path}",
                "a store holds each well once; write the new wells to a new store",
            )
        self._keys.update(keys)

    def reserve(self, wells: pd.DataFrame, source="wells") -> np.ndarray:
        """Reserve rows for wells with a known ``count`` column; returns their offsets (int64)."""
        self._check_open()
        wells = wells.reset_index(drop=True).copy()
        self._check_new_wells(wells, source)
        counts = wells["count"].to_numpy(np.int64)
        offsets = self.n_rows + np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
        wells["offset"] = offsets
        self._new_wells.append(wells)
        self.n_rows += int(counts.sum())
        self._file.truncate(self.n_rows * self.dim * self.dtype.itemsize)
        return offsets

    def _check_finite(self, positions: np.ndarray, data: np.ndarray) -> None:
        """A store never holds NaN or infinity: refuse rows that are not finite once cast to the store's dtype."""
        finite = np.isfinite(data)
        if finite.all():
            return
        row, column = np.argwhere(~finite)[0]
        name = self.manifest["feature_names"][column]
        limit = float(np.finfo(self.dtype).max)
        raise MomilError(
            f"{self.final_path}: {int((~finite).sum())} value(s) would be NaN or infinite in the "
            f"{self.dtype.name} store (first: instance row {int(positions[row])}, feature {name!r}) -- "
            f"{self.dtype.name} holds magnitudes up to {limit:g}: write float32 (--dtype float32) or "
            "rescale the features, and remove NaN or infinite inputs"
        )

    def write_rows(self, positions: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows`` (n, dim) at instance row ``positions`` (n,) inside reserved space."""
        self._check_open()
        if rows.shape[1] != self.dim:
            raise MomilError(f"rows have {rows.shape[1]} features, the store has {self.dim}")
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return
        if positions.min() < 0 or positions.max() >= self.n_rows:
            raise MomilError("write outside the reserved rows")
        order = np.argsort(positions, kind="stable")
        with np.errstate(over="ignore", invalid="ignore"):
            positions, data = positions[order], np.ascontiguousarray(rows[order], dtype=self.dtype)
        self._check_finite(positions, data)
        # runs of consecutive positions -> one pwrite each (one run when the input is grouped by well)
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(positions)]])
        row_bytes = self.dim * self.dtype.itemsize
        fd = self._file.fileno()
        for start, stop in zip(starts, stops):
            view = memoryview(data[start:stop]).cast("B")
            written = 0
            base = int(positions[start]) * row_bytes
            while written < len(view):
                written += os.pwrite(fd, view[written:], base + written)
        fault_point("store.write_rows")

    def add_meta(self, meta: pd.DataFrame, positions: np.ndarray) -> None:
        """Per-instance metadata for rows at ``positions``."""
        if meta is None or meta.shape[1] == 0:
            return
        part = meta.reset_index(drop=True).copy()
        part["_row"] = np.asarray(positions, dtype=np.int64)
        self._new_meta.append(part)
        if sum(len(p) for p in self._new_meta) >= 1_000_000:
            self._flush_meta()

    def _flush_meta(self) -> None:
        if not self._new_meta:
            return
        frame = pd.concat(self._new_meta, ignore_index=True)
        self._new_meta = []
        self._meta_counter += 1
        name = f"meta-{self._meta_counter:06d}-{uuid.uuid4().hex[:6]}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), self.work_path / name)
        self.manifest.setdefault("pending_meta", []).append(name)

    def add_bag(self, well: dict, features: np.ndarray, meta: pd.DataFrame | None = None) -> int:
        """Append one well's bag (streaming). ``well`` holds the well columns; returns the well's offset."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise MomilError(
                f"well {well.get(PLATE)}/{well.get(WELL)}: bag of shape {features.shape}, expected (n, {self.dim})"
            )
        if not np.isfinite(features).all():
            raise MomilError(f"well {well.get(PLATE)}/{well.get(WELL)}: NaN or infinite features")
        record = {c: well.get(c) for c in WELL_COLUMNS}
        record.update({k: v for k, v in well.items() if k not in record})
        record["count"] = len(features)
        self._check_new_wells(pd.DataFrame({PLATE: [record[PLATE]], WELL: [record[WELL]]}), self.final_path)
        offset = self.n_rows
        record["offset"] = offset
        self._bag_records.append(record)
        self.n_rows += len(features)
        self._file.truncate(self.n_rows * self.dim * self.dtype.itemsize)
        self.write_rows(np.arange(offset, offset + len(features)), features)
        if meta is not None:
            self.add_meta(meta, np.arange(offset, offset + len(features)))
        return offset

    # -- finishing
    def commit(self, provenance: dict | None = None) -> InstanceStore:
        self._check_open()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._flush_meta()
        if self._bag_records:
            self._new_wells.append(pd.DataFrame(self._bag_records))
            self._bag_records = []
        if self._new_wells:
            new = pd.concat(self._new_wells, ignore_index=True).sort_values("offset", kind="stable")
            wells = pd.concat([self._wells_committed, new], ignore_index=True)
        else:
            wells = self._wells_committed.copy()
        for column in WELL_COLUMNS:
            wells[column] = wells[column].astype("string")
        wells["offset"] = wells["offset"].astype(np.int64)
        wells["count"] = wells["count"].astype(np.int64)
        generation = int(self.manifest.get("generation", 0)) + 1
        wells_file = f"wells-{generation:06d}.parquet"
        pq.write_table(pa.Table.from_pandas(wells, preserve_index=False), self.work_path / wells_file)
        manifest = dict(self.manifest)
        old_wells_file = manifest.get("wells_file")
        manifest["meta_files"] = list(manifest.get("meta_files", [])) + list(manifest.pop("pending_meta", []))
        manifest.update(
            {
                "complete": True,
                "n_instances": int(self.n_rows),
                "n_wells": int(len(wells)),
                "wells_file": wells_file,
                "generation": generation,
            }
        )
        if provenance is not None:
            manifest["history"] = list(manifest.get("history", [])) + [provenance]
        write_json_atomic(manifest, self.work_path / "manifest.json")
        self._closed = True
        if self.new:
            if self.final_path.exists():
                shutil.rmtree(self.final_path)
            os.replace(self.work_path, self.final_path)
        elif old_wells_file and old_wells_file != wells_file:
            (self.work_path / old_wells_file).unlink(missing_ok=True)
        return InstanceStore(self.final_path)

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._file.close()
        if self.new:
            shutil.rmtree(self.work_path, ignore_errors=True)
        else:
            # leave the committed store as it was: drop uncommitted rows and parts
            committed = int(self.manifest["n_instances"]) * self.dim * self.dtype.itemsize
            with open(self.work_path / "features.bin", "r+b") as handle:
                handle.truncate(committed)
            for name in self.manifest.pop("pending_meta", []):
                (self.work_path / name).unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._closed:
                self.commit(self.manifest.pop("_provenance", None))
        else:
            self.abort()

    def set_provenance(self, record: dict) -> None:
        self.manifest["_provenance"] = record
