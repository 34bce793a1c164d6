"""Padded bags: the instances of a batch of wells, read from the store, with their mask.

Every stage that reads bags (training, validation, prediction, calibration, the linear floor, selection,
imputation, few-shot probes, profiles) reads them through :func:`bag_batches`: a :class:`torch.utils.data.
DataLoader` over :class:`WellBags` with :meth:`WellBags.collate`, so padding, the finiteness check and the move to
the device are written once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from momil.io.store import InstanceStore


class BagBatch(NamedTuple):
    """``wells`` (B,) store rows; ``bags`` (B, N_max, D) float32, zero-padded; ``mask`` (B, N_max) bool."""

    wells: np.ndarray
    bags: torch.Tensor
    mask: torch.Tensor


class WellBags(Dataset):
    """The bags of some store wells, one item per well in the given order: (store row, instances (n, D))."""

    def __init__(self, store: InstanceStore, wells: np.ndarray):
        self.store = store
        self.wells = np.asarray(wells, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.wells)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray]:
        well = int(self.wells[index])
        return well, self.store.bag(well)

    def collate(self, items: list[tuple[int, np.ndarray]]) -> BagBatch:
        """Pad a list of items into one batch (on the CPU); refuses non-finite features (the store names them)."""
        wells = np.array([well for well, _ in items], dtype=np.int64)
        n_max = max((len(bag) for _, bag in items), default=0)
        bags = np.zeros((len(items), n_max, self.store.dim), dtype=np.float32)
        mask = np.zeros((len(items), n_max), dtype=bool)
        for row, (_, bag) in enumerate(items):
            bags[row, : len(bag)] = bag
            mask[row, : len(bag)] = True
        self.store.require_finite(wells, bags)
        return BagBatch(wells, torch.from_numpy(bags), torch.from_numpy(mask))


def bag_batches(
    store: InstanceStore,
    wells: np.ndarray,
    batch_wells: int = 64,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] | None = None,
) -> Iterator[BagBatch]:
    """The bags of ``wells`` in order, ``batch_wells`` wells at a time, on ``device``.

    With ``shard=(rank, world)`` (training under torchrun) batch k holds the wells ``rank, rank + world, ...`` of
    the k-th ``batch_wells`` wells: the ranks' batches together are the one-process batch (a rank's batch may be
    empty at the end)."""
    dataset = WellBags(store, wells)
    size = max(1, int(batch_wells))
    # a generator of its own: a DataLoader's iterator draws a base seed, which must not move the global torch
    # RNG that dropout and initialisation draw from (training stays the same with or without this loader)
    if shard is None:
        loader = DataLoader(
            dataset, batch_size=size, shuffle=False, collate_fn=dataset.collate, generator=torch.Generator()
        )
    else:
        rank, world = shard
        steps = [
            list(range(start, min(start + size, len(dataset))))[rank::world] for start in range(0, len(dataset), size)
        ]
        loader = DataLoader(dataset, batch_sampler=steps, collate_fn=dataset.collate, generator=torch.Generator())
    for batch in loader:
        yield BagBatch(batch.wells, batch.bags.to(device), batch.mask.to(device))


def load_bags(
    store: InstanceStore, wells: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded float32 bags (B, N_max, D) and mask (B, N_max) for store wells, all in one batch."""
    dataset = WellBags(store, wells)
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    return batch.bags.to(device), batch.mask.to(device)
