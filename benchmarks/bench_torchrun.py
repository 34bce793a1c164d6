"""torchrun on this machine: `momil extract` and `momil train` as one process and on 2 ranks (gloo), at several
torch threads per rank, side by side in one run.

    python benchmarks/bench_torchrun.py [--fields-compounds 24] [--train-compounds 300] [--epochs 4]

Prints one table: stage, ranks, threads per rank, seconds (wall, including process start and the process group),
and the ratio to the one-process run. On 2 cores one process already uses both for its matrix products, so expect
little from 2 ranks here; on a node with more cores or GPUs, ranks are how a stage uses them. The commands are
the README's (``python -m torch.distributed.run --nproc-per-node N -m momil <stage> ...``).
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

from _util import print_table, run_measured


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(args: list, ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "momil", *map(str, args), "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks)]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_port())]
    return [*launcher, "-m", "momil", *map(str, args), "--quiet"]


def prepare(root: Path, fields_compounds: int, train_compounds: int) -> tuple[list, list]:
    from momil.cli import main

    steps = [
        ["simulate", "--out", root / "fields", "--n-compounds", fields_compounds, "--replicates", 2, "--sites", 2,
         "--render-images", "--image-size", 256, "--instances", 8],
        ["simulate", "--out", root / "screen", "--n-compounds", train_compounds, "--replicates", 3, "--dim", 64,
         "--instances", 24, "--n-assays", 24, "--n-primary", 6],
        ["ingest", "--instances", root / "screen" / "instances.parquet", "--wells", root / "screen" / "wells.parquet",
         "--out", root / "raw"],
        ["correct", "--store", root / "raw", "--out", root / "store"],
        ["split", "--wells", root / "screen" / "wells.parquet", "--labels", root / "screen" / "labels.parquet",
         "--compounds", root / "screen" / "compounds.parquet", "--out", root / "folds.parquet"],
    ]  # fmt: skip
    for argv in steps:
        assert main([str(a) for a in argv] + ["--quiet"]) == 0, argv
    extract = ["extract", "--load-data", root / "fields" / "load_data.parquet"]
    extract += ["--wells", root / "fields" / "wells.parquet", "--backbone", "vit-s16", "--tile", 128]
    extract += ["--dtype", "float32", "--device", "cpu", "--overwrite"]
    train = ["train", "--store", root / "store", "--labels", root / "screen" / "labels.parquet"]
    train += ["--folds", root / "folds.parquet", "--assays", root / "screen" / "assays.parquet", "--device", "cpu"]
    return extract, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields-compounds", type=int, default=24)
    parser.add_argument("--train-compounds", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        extract, train = prepare(root, args.fields_compounds, args.train_compounds)
        train += ["--epochs", args.epochs, "--warmup-epochs", 1]
        rows = []
        for stage, argv in (("extract", extract), ("train", train)):
            base = None
            for ranks, threads in ((1, 2), (2, 1), (2, 2)):
                out = root / f"{stage}-{ranks}-{threads}"
                env = {"MOMIL_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MOMIL_NO_PROGRESS": "1"}
                seconds, peak, code = run_measured(command([*argv, "--out", out], ranks), env)
                if code != 0:
                    raise SystemExit(f"{stage} on {ranks} rank(s) failed with exit code {code}")
                base = base or seconds
                rows.append(
                    {"stage": stage, "ranks": ranks, "threads per rank": threads, "seconds": f"{seconds:.1f}",
                     "ratio to 1 process": f"{base / seconds:.2f}x"}
                )  # fmt: skip
        print_table(rows)


if __name__ == "__main__":
    main()
