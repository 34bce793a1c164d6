"""Engineered per-cell features from images: segment nuclei and cells, measure them with scikit-image.

The paper's "Acapella -> MLP" baseline reads vendor software's per-cell measurements. Here: nuclei are found on
the nuclei channel (Gaussian smoothing, Otsu threshold, small objects removed, touching nuclei split by a watershed
on the distance transform); cells grow from their nucleus by a watershed on the cell channel (AGP by default)
inside its Otsu foreground. Each cell is measured with ``skimage.measure.regionprops_table``: shape of the nucleus
and the cell (area, perimeter, eccentricity, solidity, extent, axis lengths) and, per channel, the mean, standard
deviation and maximum intensity in the nucleus and the cell. The result is a per-cell instance table
(``Nuclei_AreaShape_Area``, ``Cells_Intensity_MeanIntensity_AGP``, ...) that `momil ingest` turns into a store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.errors import InputError, MomilError
from momil.imaging.fields import FieldSettings, channel_map, read_field
from momil.io.contract import PLATE, SITE, WELL, read_load_data
from momil.progress import progress

SHAPE = ("area", "perimeter", "eccentricity", "solidity", "extent", "major_axis_length", "minor_axis_length")
SHAPE_NAMES = ("Area", "Perimeter", "Eccentricity", "Solidity", "Extent", "MajorAxisLength", "MinorAxisLength")


@dataclasses.dataclass
class SegmentSettings(Settings):
    cell_channel: str = setting("AGP", "model channel whose signal outlines the cells")
    smoothing: float = setting(2.0, "Gaussian sigma (pixels) before thresholding", low=0)
    min_nucleus_area: int = setting(30, "smaller nuclei are noise (pixels, after resizing)", low=0)
    split_distance: int = setting(7, "minimum distance between the centres of touching nuclei (pixels)", low=1)
    max_cell_radius: int = setting(60, "a cell reaches at most this far from its nucleus (pixels)", low=1)


def segment_field(
    field: np.ndarray, nuclei_index: int, cell_index: int, settings: SegmentSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Label images (H, W) of nuclei and cells with matching numbers (cell k grew from nucleus k)."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    dna = gaussian(field[nuclei_index], sigma=settings.smoothing)
    if dna.max() <= dna.min():
        empty = np.zeros(dna.shape, np.int32)
        return empty, empty
    mask = _drop_small(ndimage.label(dna > threshold_otsu(dna))[0], settings.min_nucleus_area) > 0
    distance = ndimage.distance_transform_edt(mask)
    peaks = peak_local_max(
        distance, min_distance=settings.split_distance, labels=ndimage.label(mask)[0], exclude_border=False
    )
    markers = np.zeros(dna.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = watershed(-distance, markers, mask=mask).astype(np.int32)
    nuclei = _relabel(_drop_small(nuclei, settings.min_nucleus_area))
    cell_signal = gaussian(field[cell_index], sigma=settings.smoothing)
    foreground = (
        cell_signal > threshold_otsu(cell_signal)
        if cell_signal.max() > cell_signal.min()
        else np.zeros(cell_signal.shape, bool)
    )
    reach = ndimage.distance_transform_edt(nuclei == 0) <= settings.max_cell_radius
    cells = watershed(-cell_signal, nuclei, mask=(foreground | (nuclei > 0)) & reach).astype(np.int32)
    return nuclei, cells


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Labels with objects of fewer than ``min_area`` pixels set to background."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_area
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _relabel(labels: np.ndarray) -> np.ndarray:
    values = np.unique(labels)
    values = values[values > 0]
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.int32)
    lookup[values] = np.arange(1, len(values) + 1)
    return lookup[labels]


def measure_cells(field: np.ndarray, nuclei: np.ndarray, cells: np.ndarray, channel_names: list[str]) -> pd.DataFrame:
    """One row per cell (ObjectNumber = its label): shape and per-channel intensity of nucleus and cell."""
    from skimage.measure import regionprops_table

    image = np.moveaxis(field, 0, -1)  # (H, W, C) for multichannel intensity properties
    parts = []
    for compartment, labels in (("Nuclei", nuclei), ("Cells", cells)):
        props = regionprops_table(
            labels,
            intensity_image=image,
            properties=("label",) + SHAPE + ("intensity_mean", "intensity_max"),
            extra_properties=(_intensity_std,),
        )
        frame = pd.DataFrame({"ObjectNumber": props["label"]})
        for prop, name in zip(SHAPE, SHAPE_NAMES):
            frame[f"{compartment}_AreaShape_{name}"] = props[prop]
        for c, channel in enumerate(channel_names):
            frame[f"{compartment}_Intensity_MeanIntensity_{channel}"] = props[f"intensity_mean-{c}"]
            frame[f"{compartment}_Intensity_MaxIntensity_{channel}"] = props[f"intensity_max-{c}"]
            frame[f"{compartment}_Intensity_StdIntensity_{channel}"] = props[f"_intensity_std-{c}"]
        parts.append(frame.set_index("ObjectNumber"))
    table = parts[0].join(parts[1], how="inner").reset_index()
    return table


def _intensity_std(region, intensity):
    return np.std(intensity[region], axis=0)


def cells_from_images(
    load_data,
    out,
    field: FieldSettings | None = None,
    settings: SegmentSettings | None = None,
    root=None,
    show_progress: bool = True,
) -> dict:
    """Segment and measure every field of a LoadData index; writes one per-cell instance table ``out``."""
    from momil.io.atomic import atomic_path

    field = field or FieldSettings()
    settings = settings or SegmentSettings()
    table, available = read_load_data(load_data)
    channels = channel_map(field, available)
    names = [m for m, _ in channels]
    for wanted in (field.nuclei_channel, settings.cell_channel):
        if wanted not in names:
            raise MomilError(f"channel {wanted!r} is not among the model channels {', '.join(names)}")
    root = Path(root) if root else Path(load_data).parent
    rows, skipped = [], []
    with progress(total=len(table), desc="segment", unit="field", enabled=show_progress) as bar:
        for _, row in table.iterrows():
            try:
                image = read_field(row, channels, field, root)
            except InputError as err:
                if field.on_missing == "stop":
                    raise
                skipped.append(str(err))
                bar.update(1)
                continue
            nuclei, cells = segment_field(
                image, names.index(field.nuclei_channel), names.index(settings.cell_channel), settings
            )
            measured = measure_cells(image, nuclei, cells, names)
            measured.insert(0, SITE, row[SITE])
            measured.insert(0, WELL, row[WELL])
            measured.insert(0, PLATE, row[PLATE])
            rows.append(measured.rename(columns={"ObjectNumber": "Metadata_ObjectNumber"}))
            bar.update(1)
    result = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if result.empty:
        raise MomilError(f"{load_data}: no cell was found in any field -- check --nuclei-channel and the images")
    with atomic_path(Path(out)) as tmp:
        result.to_parquet(tmp, index=False)
    features = [c for c in result.columns if not c.startswith("Metadata_")]
    return {"cells": int(len(result)), "features": len(features), "fields": int(len(table)), "skipped": skipped}
