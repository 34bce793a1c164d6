"""Padded bags: the instances of a batch of wells, read from the store, with their mask."""

from __future__ import annotations

import numpy as np
import torch

from momil.io.store import InstanceStore


def load_bags(
    store: InstanceStore, wells: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded float32 bags (B, N_max, D) and mask (B, N_max) for store wells; reads only their rows."""
    counts = store.counts[wells]
    n_max = int(counts.max()) if len(wells) else 0
    bags = np.zeros((len(wells), n_max, store.dim), dtype=np.float32)
    mask = np.zeros((len(wells), n_max), dtype=bool)
    for row, well in enumerate(wells):
        bag = store.bag(int(well))
        bags[row, : len(bag)] = bag
        mask[row, : len(bag)] = True
    store.require_finite(wells, bags)
    return torch.from_numpy(bags).to(device), torch.from_numpy(mask).to(device)
