"""Ingest speed and peak memory on a 1 GB instance file (768 float32 features, 36 instances per well).

    python benchmarks/bench_ingest.py [--gb 1.0] [--workdir /tmp/momil-bench-ingest]

Prints one row per setting: rows/s, MB/s of feature data, and the child process's peak resident memory. The
first row reads the file with pyarrow alone (the floor for any ingest).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from _util import print_table, python_code, run_measured  # noqa: E402

DIM, PER_WELL, WELLS_PER_PLATE = 768, 36, 384


def make_instance_file(folder: Path, gigabytes: float) -> tuple[Path, Path, int]:
    rows = int(gigabytes * 1e9 / (DIM * 4))
    n_wells = rows // PER_WELL
    rows = n_wells * PER_WELL
    rng = np.random.default_rng(0)
    names = [f"f{i:03d}" for i in range(DIM)]
    schema = pa.schema(
        [("Metadata_Plate", pa.string()), ("Metadata_Well", pa.string()), ("Metadata_Site", pa.int32())]
        + [(n, pa.float32()) for n in names]
    )
    plates, wells = [], []
    path = folder / "instances.parquet"
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n_wells, WELLS_PER_PLATE):
            stop = min(n_wells, start + WELLS_PER_PLATE)
            plate = f"P{start // WELLS_PER_PLATE:04d}"
            well_names = [f"{chr(65 + (w % 384) // 24)}{(w % 24) + 1:02d}" for w in range(stop - start)]
            plates += [plate] * len(well_names)
            wells += well_names
            n = (stop - start) * PER_WELL
            block = rng.standard_normal((n, DIM), dtype=np.float32)
            columns = [
                pa.array(np.repeat([plate], n)),
                pa.array(np.repeat(well_names, PER_WELL)),
                pa.array(np.tile(np.arange(PER_WELL, dtype=np.int32) // 9 + 1, stop - start)),
            ]
            columns += [pa.array(block[:, j]) for j in range(DIM)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    import pandas as pd

    control = ["negcon" if w.endswith(("01", "02")) else "trt" for w in wells]
    pd.DataFrame(
        {"Metadata_Plate": plates, "Metadata_Well": wells, "Metadata_Compound": "c", "Metadata_ControlType": control}
    ).to_parquet(folder / "wells.parquet")
    return path, folder / "wells.parquet", rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--workdir", default="/tmp/momil-bench-ingest")
    args = parser.parse_args()
    folder = Path(args.workdir)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    instances, wells, rows = make_instance_file(folder, args.gb)
    size_mb = instances.stat().st_size / 1e6
    print(f"instance file: {instances} ({size_mb:.0f} MB, {rows} rows x {DIM} features)\n")
    results = []
    read_only = (
        "import pyarrow.parquet as pq\n"
        f"f = pq.ParquetFile({str(instances)!r})\n"
        "for b in f.iter_batches(batch_size=40000): b.column(5).to_numpy()\n"
    )
    read_lean = (
        "import pyarrow.parquet as pq\n"
        f"f = pq.ParquetFile({str(instances)!r}, pre_buffer=False)\n"
        "for b in f.iter_batches(batch_size=16384, use_threads=False): b.column(5).to_numpy()\n"
    )
    seconds, peak, code = run_measured(python_code(read_only))
    results.append(
        {
            "what": "pyarrow read only (defaults)",
            "seconds": f"{seconds:.1f}",
            "rows/s": f"{rows / seconds:,.0f}",
            "MB/s": f"{size_mb / seconds:.0f}",
            "peak RSS MB": f"{peak:.0f}",
            "ok": code == 0,
        }
    )
    seconds, peak, code = run_measured(python_code(read_lean))
    results.append(
        {
            "what": "pyarrow read only (pre_buffer off)",
            "seconds": f"{seconds:.1f}",
            "rows/s": f"{rows / seconds:,.0f}",
            "MB/s": f"{size_mb / seconds:.0f}",
            "peak RSS MB": f"{peak:.0f}",
            "ok": code == 0,
        }
    )
    for dtype, memory in (("float32", 256), ("float16", 256), ("float32", 64), ("float32", 1024)):
        out = folder / f"store-{dtype}-{memory}"
        code_text = (
            "from momil.io.ingest import ingest, IngestSettings\n"
            f"ingest({str(instances)!r}, {str(wells)!r}, {str(out)!r}, "
            f"IngestSettings(dtype={dtype!r}, memory_mb={memory}), show_progress=False)\n"
        )
        seconds, peak, code = run_measured(python_code(code_text))
        results.append(
            {
                "what": f"momil ingest {dtype}, --memory-mb {memory}",
                "seconds": f"{seconds:.1f}",
                "rows/s": f"{rows / seconds:,.0f}",
                "MB/s": f"{size_mb / seconds:.0f}",
                "peak RSS MB": f"{peak:.0f}",
                "ok": code == 0,
            }
        )
        shutil.rmtree(out, ignore_errors=True)
    print_table(results)
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
