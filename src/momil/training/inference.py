"""Inference over store wells: the model's probabilities and embeddings, batch by batch through
:func:`momil.data.bags.bag_batches` (one loop for validation, calibration, imputation, probes and selection)."""

from __future__ import annotations

import numpy as np
import torch

from momil.data.bags import bag_batches
from momil.data.pairs import WellPairs
from momil.device import autocast_for
from momil.io.store import InstanceStore


@torch.no_grad()
def predict_pairs(
    model, store: InstanceStore, wells: np.ndarray, pairs: WellPairs, device, batch_wells: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities for the labelled pairs of ``wells``: (well, assay, label, probability) arrays."""
    model.eval()
    out_w, out_a, out_y, out_p = [], [], [], []
    for batch, bags, mask in bag_batches(store, wells, batch_wells, device):
        rows, assay, label = pairs.pairs(batch)
        if len(rows) == 0:
            continue
        with autocast_for(device):
            out = model(bags, mask, torch.from_numpy(rows).to(device), torch.from_numpy(assay).to(device))
        out_w.append(batch[rows])
        out_a.append(assay)
        out_y.append(label)
        probability = model.calibration.pairs(model.probability(out).float(), torch.from_numpy(assay))
        out_p.append(probability.cpu().numpy())
    if not out_w:
        empty = np.zeros(0)
        return empty.astype(np.int64), empty.astype(np.int64), empty, empty
    return np.concatenate(out_w), np.concatenate(out_a), np.concatenate(out_y), np.concatenate(out_p)


@torch.no_grad()
def predict_all(
    model, store: InstanceStore, wells: np.ndarray, device, batch_wells: int = 64, assays: list[int] | None = None
) -> np.ndarray:
    """Probabilities (wells, assays) for the given assay indices of the model (all by default), float32."""
    model.eval()
    out = [
        model.predict(bags, mask, assays).float().cpu().numpy()
        for _, bags, mask in bag_batches(store, wells, batch_wells, device)
    ]
    width = len(model.assays) if assays is None else len(assays)
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


@torch.no_grad()
def embed_all(
    models: dict, store: InstanceStore, wells: np.ndarray, device, batch_wells: int = 64, head: int = 0
) -> dict[str, np.ndarray]:
    """Each model's pooled representation of ``wells`` from head ``head`` (``model.embed``): (wells, dim), float32.
    Several models share each batch read."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
    for _, bags, mask in bag_batches(store, wells, batch_wells, device):
        for name, model in models.items():
            out[name].append(model.embed(bags, mask, head).float().cpu().numpy())
    return {name: (np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)) for name, parts in out.items()}
