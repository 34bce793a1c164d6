"""Fields of view from a LoadData index: read, map channels, resize, clip, normalise; then tile into instances.

A field is one row of a CellProfiler LoadData table (input contract 2b): one TIFF per channel (8- or 16-bit, any
compression tifffile + imagecodecs read, any channel count). The user maps the model's input channels to LoadData
channel names (``--channels DNA=OrigDNA,ER=OrigER,...``); by default each of DNA, ER, RNA, AGP, Mito is matched to
the LoadData channel whose name ends with it (``OrigDNA`` -> DNA).

Preprocessing follows the paper: resize to ``size`` x ``size`` (970 -> 960 and 1938 -> 960 there; 0 keeps the
size), clip each channel at its ``clip_low`` and ``clip_high`` percentiles (0.01 and 99.9), min-max normalise to
[0, 1]. Tiles of ``tile`` x ``tile`` pixels at ``stride`` (480 and 240) are the instances; a tile whose nuclei
channel has less than ``min_foreground`` of its pixels above ``foreground_level`` is background and can be
dropped. Every tile keeps its plate, well, site and position.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from momil.config import Settings, setting
from momil.errors import InputError, MomilError
from momil.io.contract import image_path

DEFAULT_CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")


@dataclasses.dataclass
class FieldSettings(Settings):
    channels: str = setting(
        "", "model channel=LoadData channel, comma-separated; empty: DNA, ER, RNA, AGP, Mito by suffix"
    )
    size: int = setting(960, "fields are resized to size x size (0: keep their size)", low=0)
    clip_low: float = setting(0.01, "percentile clipped at the bottom of each channel", low=0, high=100)
    clip_high: float = setting(99.9, "percentile clipped at the top of each channel", low=0, high=100)
    tile: int = setting(480, "instance (tile) edge in pixels", low=1)
    stride: int = setting(240, "step between tiles", low=1)
    drop_background: bool = setting(True, "drop tiles whose nuclei channel is mostly empty")
    nuclei_channel: str = setting("DNA", "model channel the background rule reads")
    foreground_level: float = setting(0.2, "a pixel is foreground above this normalised intensity", low=0, high=1)
    min_foreground: float = setting(0.01, "a tile needs at least this fraction of foreground pixels", low=0, high=1)
    on_missing: str = setting(
        "stop", 'a missing or unreadable file: "stop", or "skip" the field and report it', choices=["stop", "skip"]
    )

    def check(self) -> None:
        if not self.clip_low < self.clip_high:
            raise MomilError(f"--clip-low must be below --clip-high, not {self.clip_low} and {self.clip_high}")


def channel_map(settings: FieldSettings, available: list[str]) -> list[tuple[str, str]]:
    """[(model channel, LoadData channel)] in the model's input order."""
    if settings.channels:
        pairs = []
        for part in settings.channels.split(","):
            if "=" not in part:
                raise MomilError(f"--channels takes model=LoadData pairs, e.g. DNA=OrigDNA, not {part!r}")
            model, source = (x.strip() for x in part.split("=", 1))
            if source not in available:
                raise MomilError(f"--channels: LoadData has no channel {source!r} (it has {', '.join(available)})")
            pairs.append((model, source))
        return pairs
    pairs = []
    for name in DEFAULT_CHANNELS:
        matches = [c for c in available if c.lower().endswith(name.lower())]
        if len(matches) != 1:
            raise MomilError(
                f"cannot match the {name} channel among LoadData channels {', '.join(available)} -- "
                "name the mapping with --channels DNA=...,ER=...,RNA=...,AGP=...,Mito=..."
            )
        pairs.append((name, matches[0]))
    return pairs


def _path(row: pd.Series, channel: str, root: Path | None) -> Path:
    return image_path(row, channel, root)


def read_field(
    row: pd.Series, channels: list[tuple[str, str]], settings: FieldSettings, root: Path | None = None
) -> np.ndarray:
    """One field as float32 (C, H, W) in [0, 1], channels in model order. Raises InputError naming the file
    and the field (plate, well, site) when a file is missing or unreadable."""
    import tifffile

    planes = []
    for model_channel, source in channels:
        path = _path(row, source, root)
        where = f"plate {row['Metadata_Plate']}, well {row['Metadata_Well']}, site {row['Metadata_Site']}"
        if not path.exists():
            raise InputError(
                path,
                f"missing image for channel {model_channel} ({where})",
                "fix the LoadData paths, or pass --on-missing skip to leave the field out",
            )
        try:
            image = tifffile.imread(path)
        except Exception as err:  # noqa: BLE001 - tifffile raises many kinds for a broken file
            raise InputError(
                path,
                f"unreadable image for channel {model_channel} ({where}): {err}",
                "re-export the file, or pass --on-missing skip to leave the field out",
            ) from err
        if image.ndim != 2:
            image = np.squeeze(image)
            if image.ndim != 2:
                raise InputError(
                    path,
                    f"expected one 2-D plane per channel file, got shape {image.shape} ({where})",
                    "give one file per channel (LoadData convention)",
                )
        planes.append(image.astype(np.float32))
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise InputError(
            _path(row, channels[0][1], root),
            f"channels differ in size {sorted(shapes)}",
            "all channel images of a field must have the same size",
        )
    return normalise(np.stack(planes), settings)


def normalise(field: np.ndarray, settings: FieldSettings) -> np.ndarray:
    """Resize (bilinear, antialiased), clip each channel at its percentiles, min-max to [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))
    if settings.size and tuple(tensor.shape[1:]) != (settings.size, settings.size):
        tensor = torch.nn.functional.interpolate(
            tensor.unsqueeze(0),
            size=(settings.size, settings.size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
    out = tensor.numpy()
    flat = out.reshape(out.shape[0], -1)
    low = np.percentile(flat, settings.clip_low, axis=1)[:, None, None]
    high = np.percentile(flat, settings.clip_high, axis=1)[:, None, None]
    span = np.where(high > low, high - low, 1.0)
    return np.clip((out - low) / span, 0.0, 1.0).astype(np.float32)


def tile_positions(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering the field at ``stride`` (a last row/column flush with the edge)."""
    if tile > height or tile > width:
        raise MomilError(f"tile {tile} is larger than the field ({height} x {width}) -- use a smaller --tile")

    def starts(length):
        values = list(range(0, length - tile + 1, stride))
        if values[-1] != length - tile:
            values.append(length - tile)
        return values

    return [(y, x) for y in starts(height) for x in starts(width)]


def tile_field(field: np.ndarray, settings: FieldSettings, nuclei_index: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """Tiles (n, C, tile, tile) and their positions (tile_y, tile_x, foreground), background dropped if asked."""
    _, height, width = field.shape
    tiles, rows = [], []
    for y, x in tile_positions(height, width, settings.tile, settings.stride):
        tile = field[:, y : y + settings.tile, x : x + settings.tile]
        foreground = float((tile[nuclei_index] > settings.foreground_level).mean())
        if settings.drop_background and foreground < settings.min_foreground:
            continue
        tiles.append(tile)
        rows.append({"Metadata_TileY": y, "Metadata_TileX": x, "foreground": foreground})
    positions = pd.DataFrame(rows, columns=["Metadata_TileY", "Metadata_TileX", "foreground"])
    array = np.stack(tiles) if tiles else np.zeros((0, field.shape[0], settings.tile, settings.tile), np.float32)
    return array, positions
