"""Extraction throughput: the whole `momil extract` pipeline against the bare backbone forward, same batches.

    python benchmarks/bench_extract.py [--fields 48] [--backbone vit-tiny] [--size 256] [--tile 128]

Renders fields with the simulator (5-channel uint16 TIFFs and a LoadData index), then in one run: (1) the bare
backbone forward over the very tiles the pipeline will embed, pre-read and pre-tiled in memory, batch by batch;
(2) `momil extract` from the TIFF files to a finished store (threaded reading, normalisation, tiling, forward,
per-field cache, store assembly). Prints tiles/s of both and their ratio (target: the pipeline >= 90 % of the bare
forward). The defaults suit a CPU; on a GPU try --backbone vit-b16 --size 960 --tile 480 --stride 240.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from momil.device import resolve_device
from momil.imaging.backbone import make_backbone  # noqa: E402
from momil.imaging.extract import ExtractSettings, extract  # noqa: E402
from momil.imaging.fields import FieldSettings, channel_map, read_field, tile_field  # noqa: E402
from momil.io.contract import read_load_data  # noqa: E402
from momil.simulate.screen import SimulateSettings, simulate

from _util import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", type=int, default=48)
    parser.add_argument("--backbone", default="vit-tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--batch-tiles", type=int, default=32)
    parser.add_argument("--readers", type=int, default=0, help="0: momil's automatic choice")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="momil-bench-extract-"))
    sites = 4
    wells_needed = int(np.ceil(args.fields / sites))
    simulate(
        work / "screen",
        SimulateSettings(
            n_compounds=max(1, wells_needed - 2),
            replicates=1,
            negcon_per_plate=2,
            render_images=True,
            image_size=args.size,
            sites=sites,
            instances=16,
            n_assays=4,
            n_primary=2,
            n_targets=3,
        ),
        show_progress=False,
    )
    load = work / "screen" / "load_data.parquet"
    field = FieldSettings(size=args.size, tile=args.tile, stride=args.stride, drop_background=False)
    settings = ExtractSettings(
        backbone=args.backbone, batch_tiles=args.batch_tiles, dtype="float16", device=str(device), readers=args.readers
    )

    # 1. the bare forward over the same tiles, in the same batches
    table, available = read_load_data(load)
    channels = channel_map(field, available)
    tiles = np.concatenate(
        [tile_field(read_field(row, channels, field, load.parent), field)[0] for _, row in table.iterrows()]
    )
    torch.manual_seed(0)
    model = make_backbone(args.backbone, len(channels), args.tile).to(device).eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    batches = [torch.from_numpy(tiles[i : i + args.batch_tiles]) for i in range(0, len(tiles), args.batch_tiles)]

    def bare_forward() -> float:
        with torch.inference_mode(), autocast:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for batch in batches:
                model(batch.to(device)).float().cpu()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started

    # 2. the pipeline, files to store; the two alternate --repeats times (the machine's speed drifts between
    # runs) and the medians are compared
    import warnings

    with torch.inference_mode(), autocast:
        model(batches[0].to(device))  # warm-up
    bares, inners, wholes = [], [], []
    for repeat in range(args.repeats):
        bares.append(bare_forward())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            result = extract(
                load, work / "screen" / "wells.parquet", work / f"store{repeat}", field, settings, show_progress=False
            )
            wholes.append(time.perf_counter() - started)
        store = result.store
        inners.append(result.seconds)  # reading, tiling, forward, field cache, store assembly
    bare, inner, pipeline = (float(np.median(v)) for v in (bares, inners, wholes))
    n = len(tiles)
    assert store.n_instances == n
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; {len(table)} fields of "
        f"{args.size} px, {args.tile} px tiles, {n} tiles, backbone {args.backbone}\n"
    )
    print_table(
        [
            {"what": "bare backbone forward (tiles in memory)", "seconds": f"{bare:.2f}", "tiles/s": f"{n / bare:.1f}"},
            {
                "what": "momil extract: fields -> store (after the model is built)",
                "seconds": f"{inner:.2f}",
                "tiles/s": f"{n / inner:.1f}",
            },
            {
                "what": "momil extract: whole call (incl. building the model)",
                "seconds": f"{pipeline:.2f}",
                "tiles/s": f"{n / pipeline:.1f}",
            },
        ]
    )
    print(
        f"\n   pipeline at {100 * bare / inner:.0f} % of the bare forward (target >= 90 %); "
        f"{100 * bare / pipeline:.0f} % counting the model build (medians of {args.repeats} alternating runs; "
        f"per run: {', '.join(f'{100 * b / i:.0f} %' for b, i in zip(bares, inners))})"
    )


if __name__ == "__main__":
    main()
