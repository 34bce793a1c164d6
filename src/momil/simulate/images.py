"""Rendered fields for a simulated screen: cells drawn per channel (responders changed), written as uint16 TIFFs
with a LoadData index."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from momil.io.contract import PLATE, SITE, WELL
from momil.progress import progress

if TYPE_CHECKING:  # the simulator's settings and world; the simulator imports this module
    from momil.simulate.screen import SimulateSettings, World

# ------------------------------------------------------------------------------------------------------- images
CHANNELS = ("OrigDNA", "OrigER", "OrigRNA", "OrigAGP", "OrigMito")


def render_field(
    rng, size: int, n_cells: int, channel_gain: np.ndarray, responder_change: np.ndarray | None, responders: int
) -> np.ndarray:
    """(5, size, size) uint16 field: Gaussian nuclei (DNA) and cytoplasm (other channels)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((5, size, size), dtype=np.float32)
    for cell in range(n_cells):
        cy, cx = rng.uniform(8, size - 8, size=2)
        nucleus = rng.uniform(2.5, 4.0)
        cytoplasm = nucleus * rng.uniform(2.0, 2.8)
        level = np.array([1.0, 0.6, 0.5, 0.4, 0.5]) * rng.uniform(0.8, 1.2, size=5)
        if cell < responders and responder_change is not None:
            level = level * responder_change[:5]
            nucleus *= responder_change[5]
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        image[0] += level[0] * np.exp(-r2 / (2 * nucleus**2))
        body = np.exp(-r2 / (2 * cytoplasm**2))
        image[1:] += level[1:, None, None] * body[None]
    image *= channel_gain[:, None, None]
    image += rng.normal(0.02, 0.01, size=image.shape)
    return np.clip(image * 20000, 0, 65535).astype(np.uint16)


def _write_images(
    tmp: Path,
    world: World,
    wells: pd.DataFrame,
    counts,
    effects,
    settings: SimulateSettings,
    rng,
    show_progress: bool,
    responder_rows: list,
) -> None:
    """Rendered fields: one uint16 TIFF per channel and site, and a LoadData index."""
    import tifffile

    image_dir = tmp / "images"
    image_dir.mkdir()
    # per target: channel intensity and nucleus size changes of responding cells
    changes = 1.0 + 0.8 * np.tanh(rng.standard_normal((settings.n_targets, 6)))
    rows = []
    with progress(
        total=len(wells) * settings.sites, desc="simulate: render", unit="field", enabled=show_progress
    ) as bar:
        for i in range(len(wells)):
            plate, well = wells[PLATE].iat[i], wells[WELL].iat[i]
            offset, gain = effects[plate]
            channel_gain = np.clip(1.0 + 0.1 * offset[:5] / max(settings.plate_effect, 1e-6), 0.5, 1.5)
            c = int(wells["_compound"].iat[i])
            change = None
            if c >= 0 and world.potency[c].any():
                weights = world.potency[c] / world.potency[c].sum()
                change = weights @ changes
            cells_per_site = max(1, int(counts[i]) // settings.sites)
            for site in range(1, settings.sites + 1):
                n_resp = int(rng.binomial(cells_per_site, settings.responder_fraction)) if change is not None else 0
                field = render_field(rng, settings.image_size, cells_per_site, channel_gain, change, n_resp)
                row = {PLATE: plate, WELL: well, SITE: site}
                for ch, name in enumerate(CHANNELS):
                    file_name = f"{plate}_{well}_s{site}_{name}.tiff"
                    tifffile.imwrite(image_dir / file_name, field[ch])
                    row[f"FileName_{name}"] = file_name
                    row[f"PathName_{name}"] = "images"
                rows.append(row)
                for r in range(n_resp):
                    responder_rows.append((plate, well, (site - 1) * cells_per_site + r))
                bar.update(1)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), tmp / "load_data.parquet")
