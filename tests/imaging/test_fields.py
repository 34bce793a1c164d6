"""Fields of view: both real layouts, channel mapping, normalisation ranges, tiling geometry and counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from momil.errors import InputError, MomilError
from momil.imaging.fields import FieldSettings, channel_map, normalise, read_field, tile_field, tile_positions

from conftest import real_data

PHENIX = {
    "OrigDNA": "ch5",
    "OrigER": "ch2",
    "OrigRNA": "ch6",
    "OrigAGP": "ch3",
    "OrigMito": "ch4",
    "OrigBrightfield": "ch1",
}
BRAY = {"DNA": "Hoechst", "ER": "ERSyto", "RNA": "ERSytoBleed", "AGP": "Ph_golgi", "Mito": "Mito"}


def load_data(folder, plate: str, well: str, site: str, files: dict[str, str]) -> pd.DataFrame:
    """A one-field LoadData table: channel -> file name, all in ``folder``."""
    row = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
    for channel, name in files.items():
        row[f"FileName_{channel}"] = name
        row[f"PathName_{channel}"] = str(folder)
    return pd.DataFrame([row])


def phenix_load_data() -> pd.DataFrame:
    return load_data(
        real_data("images", "BR00143976-C03-f03"),
        "BR00143976",
        "C03",
        "3",
        {channel: f"r03c03f03p01-{ch}sk1fk1fl1.tiff" for channel, ch in PHENIX.items()},
    )


def bray_load_data() -> pd.DataFrame:
    return load_data(
        real_data("images", "bray-24279-A01-s1"),
        "24279",
        "A01",
        "1",
        {channel: f"{name}.tif" for channel, name in BRAY.items()},
    )


def test_channel_mapping_by_suffix_and_by_name():
    available = list(PHENIX)
    assert [m for m, _ in channel_map(FieldSettings(), available)] == ["DNA", "ER", "RNA", "AGP", "Mito"]
    assert channel_map(FieldSettings(), available)[0] == ("DNA", "OrigDNA")
    chosen = channel_map(FieldSettings(channels="DNA=OrigDNA,BF=OrigBrightfield"), available)
    assert chosen == [("DNA", "OrigDNA"), ("BF", "OrigBrightfield")]
    with pytest.raises(MomilError, match="no channel 'Nope'"):
        channel_map(FieldSettings(channels="DNA=Nope"), available)
    with pytest.raises(MomilError, match="--channels"):
        channel_map(FieldSettings(), ["A", "B"])


def test_real_phenix_field_resized_clipped_normalised():
    row = phenix_load_data().iloc[0]
    settings = FieldSettings(size=480)
    field = read_field(row, channel_map(settings, list(PHENIX)), settings)
    assert field.shape == (5, 480, 480) and field.dtype == np.float32  # 540 -> 480, brightfield left out
    assert field.min() == 0.0 and field.max() == 1.0
    # clipping at the 99.9th percentile saturates about 0.1 % of each channel's pixels
    for plane in field:
        assert 0.0005 < (plane >= 1.0).mean() < 0.005


def test_real_bray_field_keeps_its_size_when_asked():
    row = bray_load_data().iloc[0]
    settings = FieldSettings(size=0, channels=",".join(f"{k}={k}" for k in BRAY))
    field = read_field(row, channel_map(settings, list(BRAY)), settings)
    assert field.shape == (5, 260, 348) and 0.0 <= field.min() and field.max() <= 1.0


def test_percentile_clip_and_min_max_by_hand():
    plane = np.arange(10001, dtype=np.float32).reshape(1, 1, -1)  # 0..10000
    out = normalise(plane, FieldSettings(size=0, clip_low=1, clip_high=99))
    # the 1st and 99th percentiles are 100 and 9900: those map to 0 and 1, the middle to 0.5
    assert out[0, 0, 100] == 0.0 and out[0, 0, 9900] == 1.0 and out[0, 0, 0] == 0.0
    assert out[0, 0, 5000] == pytest.approx(0.5)


def test_tiling_geometry_and_counts():
    # the paper's geometry: 960 fields, 480 tiles at stride 240 -> 3 x 3 tiles
    assert tile_positions(960, 960, 480, 240) == [(y, x) for y in (0, 240, 480) for x in (0, 240, 480)]
    # a size that stride does not divide gets a last tile flush with the edge
    assert tile_positions(520, 696, 256, 200) == [(y, x) for y in (0, 200, 264) for x in (0, 200, 400, 440)]
    with pytest.raises(MomilError, match="larger than the field"):
        tile_positions(100, 100, 128, 64)
    field = np.zeros((2, 64, 64), np.float32)
    field[0, 40:60, 40:60] = 1.0  # nuclei only in the bottom-right corner
    tiles, where = tile_field(field, FieldSettings(tile=32, stride=32, min_foreground=0.05))
    assert tiles.shape == (1, 2, 32, 32) and list(zip(where["Metadata_TileY"], where["Metadata_TileX"])) == [(32, 32)]
    kept, _ = tile_field(field, FieldSettings(tile=32, stride=32, drop_background=False))
    assert kept.shape[0] == 4


def test_missing_file_names_path_and_field(tmp_path):
    row = bray_load_data().iloc[0].copy()
    row["FileName_Mito"] = "gone.tif"
    settings = FieldSettings(size=0, channels=",".join(f"{k}={k}" for k in BRAY))
    with pytest.raises(InputError, match=r"gone.tif.*channel Mito \(plate 24279, well A01, site 1\)"):
        read_field(row, channel_map(settings, list(BRAY)), settings)
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    row["FileName_Mito"] = "broken.tif"
    row["PathName_Mito"] = str(tmp_path)
    with pytest.raises(InputError, match="unreadable image"):
        read_field(row, channel_map(settings, list(BRAY)), settings)
