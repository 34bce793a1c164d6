"""The simulated screen's wells: the plate layout (treatments and DMSO controls by the real plate map), plate and
batch effects, instance counts and the instances of each well."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from momil.io.contract import BATCH, COMPOUND, CONTROL, PLATE, WELL
from momil.simulate.sources import real_platemap

DMSO = "DMSO"  # the compound identifier of the simulated negative-control wells

if TYPE_CHECKING:  # the simulator's settings and world; the simulator imports this module
    from momil.simulate.screen import SimulateSettings, World


# ----------------------------------------------------------------------------------------------------- layout
def plate_layout(world: World, settings: SimulateSettings, rng: np.random.Generator) -> pd.DataFrame:
    """One row per well: replicate r of a compound on the r-th plate set, so replicates are on other plates."""
    platemap = real_platemap()
    negcon_positions = platemap.loc[platemap["negcon"], "well_position"].tolist()
    trt_positions = platemap.loc[~platemap["negcon"], "well_position"].tolist()
    if settings.negcon_per_plate:
        negcon_positions = negcon_positions[: settings.negcon_per_plate]
    n = len(world.compounds)
    per_plate = len(trt_positions)
    chunks = int(np.ceil(n / per_plate))
    order = rng.permutation(n)
    rows = []
    n_plates = chunks * settings.replicates
    for r in range(settings.replicates):
        for j in range(chunks):
            plate_number = r * chunks + j
            plate = f"SIM{plate_number + 1:04d}"
            batch = f"B{(plate_number * settings.n_batches) // max(1, n_plates) + 1:02d}"
            members = order[j * per_plate : (j + 1) * per_plate]
            positions = rng.permutation(trt_positions)[: len(members)]
            for c, well in zip(members, positions):
                rows.append((plate, well, batch, world.compounds[c], "trt", int(c)))
            for well in negcon_positions:
                rows.append((plate, well, batch, DMSO, "negcon", -1))
        order = np.roll(order, max(1, per_plate // 3))  # replicate sets mix compounds across plates
    frame = pd.DataFrame(rows, columns=[PLATE, WELL, BATCH, COMPOUND, CONTROL, "_compound"])
    return frame.sort_values([PLATE, WELL]).reset_index(drop=True)


# -------------------------------------------------------------------------------------------------- instances
def _plate_effects(plates: list[str], batches: dict[str, str], settings: SimulateSettings, rng) -> dict:
    d = settings.dim
    batch_names = sorted(set(batches.values()))
    batch_offset = {b: rng.standard_normal(d) * settings.batch_effect for b in batch_names}
    effects = {}
    for plate in plates:
        offset = rng.standard_normal(d) * settings.plate_effect + batch_offset[batches[plate]]
        gain = np.clip(1.0 + rng.standard_normal(d) * settings.gain_effect, 0.3, None)
        effects[plate] = (offset, gain)
    return effects


def well_instances(
    world: World, compound_index: int, count: int, settings: SimulateSettings, rng
) -> tuple[np.ndarray, np.ndarray]:
    """(count, D) clean instances (before plate effects) and the responder mask."""
    d = settings.dim
    mixture = rng.dirichlet(np.ones(settings.n_states))
    state = rng.choice(settings.n_states, size=count, p=mixture)
    x = world.states[state] + rng.standard_normal((count, d))
    responders = np.zeros(count, dtype=bool)
    if compound_index >= 0:
        potency = world.potency[compound_index]
        if potency.any() and settings.subpopulations == "shared":
            responders = rng.random(count) < settings.responder_fraction
            shift = settings.effect_size * (potency @ world.signatures)  # (D,)
            x[responders] += _signs(int(responders.sum()), settings, rng)[:, None] * shift
        elif potency.any():
            for target in np.flatnonzero(potency):
                mine = (state == target % settings.n_states) & (rng.random(count) < settings.responder_fraction)
                shift = settings.effect_size * potency[target] * world.signatures[target]
                x[mine] += _signs(int(mine.sum()), settings, rng)[:, None] * shift
                responders |= mine
    return x, responders


def _signs(n: int, settings: SimulateSettings, rng) -> np.ndarray:
    """+1 for every responding cell ("shift"), or a random sign per cell ("hidden"; draws only then)."""
    if settings.signal == "shift":
        return np.ones(n)
    return rng.choice(np.array([-1.0, 1.0]), size=n)


def _instance_counts(n_wells: int, settings: SimulateSettings, rng) -> np.ndarray:
    lo = max(1, settings.instances - settings.instances_jitter)
    hi = settings.instances + settings.instances_jitter
    return rng.integers(lo, hi + 1, size=n_wells)
