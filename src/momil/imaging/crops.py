"""Crops for self-supervised pretraining: centres drawn around bright nuclei areas, and augmentations that work
for any channel count (flips, 90-degree rotations, Gaussian blur, per-channel intensity jitter)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from momil.imaging.pretrain import PretrainSettings


def nuclei_centres(nuclei: np.ndarray, rng: np.random.Generator, count: int, half: int) -> list[tuple[int, int]]:
    """Crop centres drawn in proportion to the nuclei channel's brightness above its 90th percentile (uniform
    where a field has no bright area), kept so that the crop fits."""
    h, w = nuclei.shape
    inner = nuclei[half : h - half or None, half : w - half or None] if h > 2 * half and w > 2 * half else None
    if inner is None or inner.size == 0:
        return [(h // 2, w // 2)] * count
    weights = np.clip(inner - np.percentile(inner, 90), 0, None).ravel()
    if weights.sum() <= 0:
        flat = rng.integers(0, inner.size, count)
    else:
        flat = rng.choice(inner.size, size=count, p=weights / weights.sum())
    ys, xs = np.unravel_index(flat, inner.shape)
    return [(int(y) + half, int(x) + half) for y, x in zip(ys, xs)]


def augment(crop: torch.Tensor, rng: np.random.Generator, blur: bool) -> torch.Tensor:
    """Flips, 90-degree rotations, Gaussian blur and per-channel intensity jitter, for any channel count."""
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    if rng.random() < 0.5:
        crop = crop.flip(-2)
    crop = torch.rot90(crop, int(rng.integers(0, 4)), dims=(-2, -1))
    if blur and rng.random() < 0.5:
        from torchvision.transforms.v2 import functional as F

        sigma = float(rng.uniform(0.1, 2.0))
        kernel = max(3, int(2 * math.ceil(2 * sigma) + 1))
        crop = F.gaussian_blur(crop, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (crop.shape[0], 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (crop.shape[0], 1, 1)).astype(np.float32))
    return (crop * gain + shift).clamp(0.0, 1.0)


def crop_views(
    field: np.ndarray, settings: PretrainSettings, rng: np.random.Generator, nuclei: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two global and ``local_crops`` local crops of one field (C, H, W)."""
    tensor = torch.from_numpy(field)
    views = []
    for size, count in ((settings.global_size, 2), (settings.local_size, settings.local_crops)):
        size = min(size, field.shape[1], field.shape[2])
        half = size // 2
        for cy, cx in nuclei_centres(field[nuclei], rng, count, half):
            y0 = min(max(cy - half, 0), field.shape[1] - size)
            x0 = min(max(cx - half, 0), field.shape[2] - size)
            views.append(augment(tensor[:, y0 : y0 + size, x0 : x0 + size], rng, blur=size == settings.global_size))
    return views[:2], views[2:]
