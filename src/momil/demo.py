"""`momil demo`: a simulated screen laid over the real hti-cnn label matrix, run through the pipeline.

simulate (hti-cnn overlay) -> ingest -> correct -> split -> cv (MoMIL, small grid) -> per-assay table, printing
what each stage made. Needs nothing from the network: the label matrix, SMILES, plate map and protein network ship
with the package. About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd

from momil.errors import MomilError
from momil.presets import preset_values

DEMO_TRAIN = preset_values("quick", "train")  # the 2-core settings: `momil cv --preset quick`
DEMO_GRID = preset_values("quick", "cv")


def _simulate_step(out: Path, n_compounds: int, show_progress: bool) -> dict:
    from momil.simulate.screen import SimulateSettings, simulate

    settings = SimulateSettings(
        mode="hti-cnn",
        n_compounds=n_compounds,
        replicates=3,
        dim=64,
        instances=36,
        n_targets=10,
        hit_rate=0.5,
        effect_size=4.0,
        seed=0,
    )
    summary = simulate(out / "screen", settings, show_progress=show_progress)
    print(f"1. simulate -> {out / 'screen'}")
    print(
        f"   {summary['compounds']} real hti-cnn compounds, {summary['assays']} real assays "
        f"({summary['primary_assays']} primary), {summary['labels']} labels at the real known positions "
        f"({100 * summary['label_density']:.1f} % filled, {100 * summary['active_fraction']:.0f} % active)"
    )
    print(
        f"   {summary['wells']} wells on {summary['plates']} plates in {summary['batches']} batches "
        f"({summary['negcon_wells']} DMSO wells at the JUMP-Target-1 positions), "
        f"{summary['instances']} instances x {summary['dim']} features"
    )
    return summary


def _split_step(out: Path, show_progress: bool):
    """Read the simulated screen's labels and make the chemical folds; (labels, folds, fold table)."""
    import warnings

    from momil.io.contract import COMPOUND, CONTROL, align_labels, read_compounds, read_labels, read_wells
    from momil.io.provenance import provenance
    from momil.io.tables import write_table_atomic
    from momil.prep.splits import SplitSettings, split

    wells = read_wells(out / "screen" / "wells.parquet")
    labels = read_labels(out / "screen" / "labels.parquet")
    labels, _ = align_labels(labels, wells)
    structures = read_compounds(out / "screen" / "compounds.parquet")
    compounds = pd.unique(wells.loc[wells[CONTROL] == "trt", COMPOUND])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folds, fold_table, seconds = split(compounds, structures, labels, SplitSettings(), show_progress=show_progress)
    write_table_atomic(
        folds,
        out / "folds.parquet",
        metadata=provenance("split", SplitSettings(), inputs={"labels": out / "screen" / "labels.parquet"}),
    )
    print(
        f"\n4. split -> {out / 'folds.parquet'}: Butina clusters of Morgan fingerprints packed into 5 folds "
        f"({seconds:.1f} s)"
    )
    for warning in caught:
        print(f"   note: {warning.message}")
    print("   " + fold_table.to_string(index=False).replace("\n", "\n   "))
    return labels, folds, fold_table


def run_demo(
    out: Path, n_compounds: int = 600, show_progress: bool = True, rotations: str = "all", epochs: int | None = None
) -> dict:
    from momil.io.ingest import IngestSettings, ingest
    from momil.prep.correct import CorrectSettings, correct, plate_variance_fraction

    out = Path(out)
    if out.exists():
        if not (out / "screen" / "simulation.json").exists() and any(out.iterdir()):
            raise MomilError(f"{out}: exists and does not hold an earlier demo -- choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    print(f"momil demo: a screen simulated over the real hti-cnn label matrix, in {out}/\n")

    summary = _simulate_step(out, n_compounds, show_progress)

    raw = ingest(
        out / "screen" / "instances.parquet",
        out / "screen" / "wells.parquet",
        out / "store",
        IngestSettings(dtype="float32"),
        show_progress=show_progress,
    )
    print(
        f"\n2. ingest -> {out / 'store'}: {raw.n_wells} wells, {raw.n_instances} instances, one memory-mapped "
        f"ragged array ({raw.summary()['bytes'] / 1e6:.1f} MB)"
    )

    corrected = correct(out / "store", out / "store-corrected", CorrectSettings(), show_progress=show_progress)
    before, after = plate_variance_fraction(raw), plate_variance_fraction(corrected)
    print(f"\n3. correct -> {out / 'store-corrected'}: plate-wise robust z-score against DMSO wells")
    print(f"   share of DMSO-well variance explained by plate: {before:.2f} before, {after:.2f} after")

    labels, folds, fold_table = _split_step(out, show_progress)
    from momil.io.contract import read_assays
    from momil.protocol.cv import CVSettings, cross_validate
    from momil.protocol.scoring import metrics_table
    from momil.training.settings import TrainSettings

    assays = read_assays(out / "screen" / "assays.parquet")
    primary = list(assays.loc[assays["role"] == "primary", "assay"])
    cv_settings = CVSettings(configuration="mtl-all", rotations=rotations, **DEMO_GRID)
    train_settings = TrainSettings(**{**DEMO_TRAIN, **({"epochs": epochs} if epochs else {})})
    print(
        f"\n5. cv -> {out / 'cv'}: MoMIL (shared projector + one gated-attention head per assay, {len(labels.assays)} "
        f"assays), 3-1-1 rotation over the folds, learning rate chosen on validation from {DEMO_GRID['lrs']}"
    )
    result = cross_validate(
        corrected, labels, folds, primary, out / "cv", cv_settings, train_settings, show_progress=show_progress
    )
    print("   compound-level test ROC-AUC and PR-AUC of the primary assays, predictions pooled over rotations:")
    print("   " + metrics_table(result.metrics).replace("\n", "\n   "))
    total = time.perf_counter() - started
    print(f"\ndone in {total:.0f} s. Outputs: {out}/ (screen, stores, folds, cv with models and predictions).")
    return {
        "simulate": summary,
        "plate_variance_before": before,
        "plate_variance_after": after,
        "folds": fold_table,
        "cv": result.summary,
    }
