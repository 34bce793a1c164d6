"""What a short CPU pretraining run achieves: DINOv2 on rendered fields against random weights.

    python benchmarks/bench_pretrain.py [--minutes 5] [--method dinov2] [--centering sinkhorn] [--out DIR]

Simulates a screen of 240 compounds with rendered 5-channel 128 x 128 fields (2 sites, about 32 cells each;
compounds act on one of 3 latent targets or none), pretrains a ViT-tiny on its fields for the given wall time
(global crops 64, local crops 32, 8 fields per step), extracts 64 x 64 tiles with the pretrained teacher and with
random weights, and probes both with a cross-validated logistic regression on well means
(:func:`momil.imaging.probe.compare_backbones`): accuracy over the 4 compound classes and ROC-AUC for active vs
inactive, at three regularisation strengths.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from momil.imaging.extract import ExtractSettings  # noqa: E402
from momil.imaging.fields import FieldSettings  # noqa: E402
from momil.imaging.pretrain import PretrainSettings, pretrain  # noqa: E402
from momil.imaging.probe import compare_backbones  # noqa: E402
from momil.simulate.screen import SimulateSettings, compound_classes, simulate

from _util import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--method", default="dinov2")
    parser.add_argument("--centering", default="sinkhorn")
    parser.add_argument("--lr", type=float, default=0.016, help="per 256 fields (8 per step: 5e-4)")
    parser.add_argument("--out", help="working folder (default: a temporary one)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    work = Path(args.out or tempfile.mkdtemp(prefix="momil-bench-pretrain-"))
    screen = work / "screen"
    if not (screen / "load_data.parquet").exists():
        simulate(
            screen,
            SimulateSettings(
                n_compounds=240,
                replicates=1,
                negcon_per_plate=4,
                render_images=True,
                image_size=128,
                sites=2,
                instances=64,
                n_assays=4,
                n_primary=2,
                n_targets=3,
                hit_rate=0.3,
                responder_fraction=0.6,
            ),
            show_progress=False,
        )
    load_data = screen / "load_data.parquet"
    settings = PretrainSettings(
        method=args.method,
        centering=args.centering,
        backbone="vit-tiny",
        global_size=64,
        local_size=32,
        local_crops=2,
        out_dim=256,
        epochs=100_000,
        batch_fields=8,
        lr=args.lr,
        warmup_epochs=2,
        teacher_temp_epochs=0,
        device="cpu",
    )
    started = time.perf_counter()
    summary = pretrain(
        load_data, work / "fm", FieldSettings(size=128), settings, show_progress=True, max_seconds=args.minutes * 60
    )
    seconds = time.perf_counter() - started
    history = pd.read_csv(work / "fm" / "history.csv")
    print(
        f"\npretraining: {summary['epochs_done']} epochs of {summary['fields']} fields in {seconds:.0f} s, "
        f"loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}"
    )
    print(history.iloc[:: max(1, len(history) // 8)].round(3).to_string(index=False), "\n")

    field = FieldSettings(size=128, tile=64, stride=64, drop_background=False)
    classes = compound_classes(screen)
    table = compare_backbones(
        load_data,
        screen / "wells.parquet",
        {"random weights": "", "pretrained": str(work / "fm" / "backbone.pt")},
        {"class": classes, "active": (classes != "inactive").astype(int)},
        work,
        field,
        ExtractSettings(backbone="vit-tiny", device="cpu", dtype="float32"),
    )
    four, two = table[table["target"] == "class"], table[table["target"] == "active"]
    rows = [
        {
            "features": a["features"],
            "C": a["C"],
            "wells": a["wells"],
            "class accuracy": f"{a['accuracy']:.3f}",
            "majority class": f"{a['majority']:.3f}",
            "active ROC-AUC": f"{b['roc_auc']:.3f}",
        }
        for (_, a), (_, b) in zip(four.iterrows(), two.iterrows())
    ]
    print("linear probe on well means (5-fold, stratified)")
    print_table(rows)


if __name__ == "__main__":
    main()
