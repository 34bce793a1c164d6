"""Single-assay (STL) models: assay selection's performance and influence stages read them, and AMTL takes their
validation AUCs as each task's potential. Each is trained once per rotation and reused from its folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from momil.data.pairs import WellPairs
from momil.device import resolve_device
from momil.io.atomic import safe_name
from momil.io.contract import LabelMatrix
from momil.io.store import InstanceStore
from momil.training.checkpoints import load_model, save_model
from momil.training.fit import FitResult, fit, fit_signature
from momil.training.settings import TrainSettings

if TYPE_CHECKING:  # assay selection's settings; selection imports this module
    from momil.protocol.selection import SelectSettings


# ------------------------------------------------------------------------------------ single-assay models
def stl_settings(train: TrainSettings, settings: SelectSettings) -> TrainSettings:
    """The single-assay models of selection: no shared projector (so no shared attention or readout either), the
    selection's head size and rate."""
    return dataclasses.replace(
        train,
        shared_projector=False,
        shared_attention=False,
        shared_readout=False,
        head_dim=settings.stl_head_dim,
        lr=settings.stl_lr,
    )


def train_single_assay(
    store: InstanceStore,
    labels: LabelMatrix,
    assay: str,
    train_wells: np.ndarray,
    val_wells: np.ndarray,
    settings: TrainSettings,
    root: Path,
) -> tuple[object, float, int]:
    """Fit (or reuse) one single-assay model; returns (model or None, validation AUC or NaN, training wells)."""
    folder = root / safe_name(assay)
    pairs = WellPairs.build(store.wells, labels, [assay])
    n_train = len(pairs.labelled_wells(train_wells))
    if n_train == 0:
        return None, float("nan"), 0
    done = folder / "model.pt"
    if done.exists():
        model, extra = load_model(done, resolve_device(settings.device))
        if extra.get("signature") == fit_signature(settings, pairs, train_wells, val_wells, with_assays=False):
            return model, float(extra["val_auc"]), n_train
    result: FitResult = fit(
        store, pairs, train_wells, val_wells, np.ones(1, bool), settings, folder / "checkpoint", show_progress=False
    )
    aucs = [h["val_auc"] for h in result.history]
    auc = float(aucs[result.best_epoch]) if 0 <= result.best_epoch < len(aucs) else float("nan")
    save_model(
        done,
        result.model,
        {
            "assay": assay,
            "val_auc": auc,
            "best_epoch": result.best_epoch,
            "signature": fit_signature(settings, pairs, train_wells, val_wells, with_assays=False),
        },
    )
    return result.model, auc, n_train


def single_task_potentials(
    store: InstanceStore,
    labels: LabelMatrix,
    assays: list[str],
    train_wells,
    val_wells,
    train: TrainSettings,
    select,
    folder,
) -> np.ndarray:
    """Each assay's single-task validation AUC (the selection's single-assay models, reused from ``folder``)."""
    settings = stl_settings(dataclasses.replace(train, balancing="none"), select)
    return np.array(
        [train_single_assay(store, labels, a, train_wells, val_wells, settings, Path(folder))[1] for a in assays],
        dtype=np.float64,
    )
