"""The protocol's fan-out on this machine: one cross-validation (2 rotations x 2 learning rates = 4 fits) run by
the local executor and by process pools of 1 and 2 workers at several torch threads per worker, side by side.

    python benchmarks/bench_executor.py [--compounds 200] [--epochs 8] [--ray]

Prints one table: executor, workers, threads per worker, seconds, and the ratio to the local run. On 2 cores torch
already uses both in one process, so expect little from 2 workers; the table says what it is here.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd

from momil.protocol.cv import CVSettings, cross_validate
from momil.simulate.screen import SimulateSettings
from momil.training.settings import TrainSettings


def screen(root: Path, compounds: int):
    from momil.io.contract import read_labels
    from momil.io.ingest import ingest
    from momil.prep.correct import correct
    from momil.prep.splits import SplitSettings, make_folds
    from momil.simulate.screen import simulate

    settings = SimulateSettings(n_compounds=compounds, replicates=3, dim=64, instances=24, n_assays=12, n_primary=4)
    simulate(root / "screen", settings, show_progress=False)
    ingest(root / "screen" / "instances.parquet", root / "screen" / "wells.parquet", root / "raw", show_progress=False)
    store = correct(root / "raw", root / "store", show_progress=False)
    labels = read_labels(root / "screen" / "labels.parquet")
    folds = make_folds(labels.compounds, labels=labels, settings=SplitSettings(n_folds=5), show_progress=False)
    return store, labels, folds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compounds", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ray", action="store_true", help="also Ray on a local cluster")
    args = parser.parse_args()
    train = TrainSettings(epochs=args.epochs, warmup_epochs=1)
    base = CVSettings(rotations="0,1")
    runs = [("local", 1, 0), ("processes", 1, 2), ("processes", 2, 1), ("processes", 2, 2)]
    if args.ray:
        runs.append(("ray", 2, 1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store, labels, folds = screen(root, args.compounds)
        primary = list(labels.assays[:4])
        for n, (executor, workers, threads) in enumerate(runs):
            cv = dataclasses.replace(base, executor=executor, workers=workers, threads=threads)
            started = time.perf_counter()
            cross_validate(store, labels, folds, primary, root / f"cv{n}", cv, train, show_progress=False)
            rows.append(
                {
                    "executor": executor,
                    "workers": workers,
                    "threads per worker": threads or "torch default",
                    "seconds": time.perf_counter() - started,
                }
            )
    table = pd.DataFrame(rows)
    table["local / this"] = table["seconds"].iloc[0] / table["seconds"]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
