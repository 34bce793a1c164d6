"""`momil correct`: plate-wise robust z-score against each plate's negative-control (DMSO) wells.

For every plate and feature: ``z = (x - median) / (1.4826 * MAD + eps)``, with median and MAD (median absolute
deviation) taken over all instances of the plate's ``negcon`` wells (``stats="instance"``, the paper's
setting) or over those wells' mean vectors (``stats="well"``). This is pycytominer's ``RobustMAD`` /
``normalize(method="mad_robustize")`` applied per plate; ``tests/prep/test_correct.py`` checks the numbers against
pycytominer on a real LINCS plate.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.errors import MomilError
from momil.io.contract import CONTROL, PLATE
from momil.io.paths import check_output
from momil.io.provenance import provenance
from momil.io.store import InstanceStore, StoreWriter
from momil.progress import progress

MAD_SCALE = 1.4826


@dataclasses.dataclass
class CorrectSettings(Settings):
    stats: str = setting(
        "instance",
        '"instance": statistics over every negcon instance; "well": over negcon well means',
        choices=["instance", "well"],
    )
    control: str = setting("negcon", "the Metadata_ControlType whose wells give the statistics")
    fallback: str = setting(
        "error", 'plate without control wells: "error" or "all" (use all wells of that plate)', choices=["error", "all"]
    )
    eps: float = setting(1e-6, "added to the scaled MAD (pycytominer's default is 1e-18)", low=0, low_open=True)
    dtype: str | None = setting(None, "output dtype; None keeps the input store's", choices=["float16", "float32"])
    overwrite: bool = setting(False)


def robust_center_scale(controls: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Median and ``1.4826 * MAD + eps`` per column of ``controls`` (n, D), computed in float64."""
    controls = np.asarray(controls, dtype=np.float64)
    if controls.shape[0] == 0:
        raise ValueError("no control rows")
    median = np.median(controls, axis=0)
    mad = np.median(np.abs(controls - median), axis=0)
    return median, MAD_SCALE * mad + eps


def mad_robustize(features: np.ndarray, controls: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Robust z-score of ``features`` (n, D) against ``controls`` (m, D); float64 result."""
    median, scale = robust_center_scale(controls, eps)
    return (np.asarray(features, dtype=np.float64) - median) / scale


def plate_statistics(
    store: InstanceStore, wells: pd.DataFrame, settings: CorrectSettings
) -> tuple[np.ndarray, np.ndarray, str, int]:
    """(median, scale, source, n_rows) for one plate's wells (rows of ``store.wells``)."""
    control = wells[wells[CONTROL] == settings.control]
    source = settings.control
    if control.empty:
        plate = wells[PLATE].iloc[0]
        if settings.fallback != "all":
            raise MomilError(
                f"{store.path}: plate {plate} has no {settings.control} wells to correct against -- add its "
                f"control wells (Metadata_ControlType = {settings.control}) or pass --fallback all to use all "
                "wells of such plates"
            )
        warnings.warn(f"plate {plate} has no {settings.control} wells: statistics from all its wells", stacklevel=2)
        control, source = wells, "all"

    def bag(i):  # plain reads: no mapped pages left resident after a sweep over a large store
        return store.read_rows(int(store.offsets[i]), int(store.offsets[i] + store.counts[i]))

    if settings.stats == "well":
        rows = np.stack([bag(i).astype(np.float64).mean(axis=0) for i in control.index])
    elif settings.stats == "instance":
        rows = np.concatenate([bag(i) for i in control.index]).astype(np.float64)
    else:
        raise MomilError(f"stats must be 'instance' or 'well', not {settings.stats!r}")
    median, scale = robust_center_scale(rows, settings.eps)
    return median, scale, source, len(rows)


def correct(store_path, out, settings: CorrectSettings | None = None, show_progress: bool = True) -> InstanceStore:
    """Write a corrected copy of the store at ``out`` (same wells, same order, corrected features)."""
    settings = settings or CorrectSettings()
    started = time.perf_counter()
    check_output(out, "dir", {"--store": store_path}, settings.overwrite)
    store = InstanceStore(store_path)
    if settings.fallback not in ("error", "all"):
        raise MomilError(f"fallback must be 'error' or 'all', not {settings.fallback!r}")
    dtype = settings.dtype or store.manifest["dtype"]
    # check every plate before writing anything
    plates = list(store.iter_plates())
    if settings.fallback == "error":
        missing = [p for p, w in plates if not (w[CONTROL] == settings.control).any()]
        if missing:
            raise MomilError(
                f"{store.path}: {len(missing)} plate(s) have no {settings.control} wells ({', '.join(missing[:5])}) "
                f"-- add their control wells or pass --fallback all to use all wells of such plates"
            )
    stats_rows = []
    medians, scales = [], []
    zero_mad_features = 0
    writer = StoreWriter.create(
        out, dim=store.dim, dtype=dtype, feature_names=store.feature_names, overwrite=settings.overwrite
    )
    with writer, progress(total=store.n_instances, desc="correct", unit="rows", enabled=show_progress) as bar:
        for plate, wells in plates:
            median, scale, source, n_rows = plate_statistics(store, wells, settings)
            zero = int(np.sum(scale <= settings.eps * (1 + 1e-9)))
            zero_mad_features += zero
            stats_rows.append({PLATE: plate, "source": source, "control_rows": n_rows, "zero_mad_features": zero})
            medians.append(median)
            scales.append(scale)
            offsets = writer.reserve(store.wells.loc[wells.index].drop(columns="offset"), source=store.path)
            start = int(store.offsets[wells.index[0]])
            stop = int(store.offsets[wells.index[-1]] + store.counts[wells.index[-1]])
            contiguous = np.all(np.diff(store.offsets[wells.index]) == store.counts[wells.index][:-1])
            if contiguous:
                block_rows = max(1, (64 << 20) // (8 * store.dim))
                for lo in range(start, stop, block_rows):
                    hi = min(stop, lo + block_rows)
                    z = (store.read_rows(lo, hi).astype(np.float64) - median) / scale
                    writer.write_rows(np.arange(offsets[0] + lo - start, offsets[0] + hi - start), z)
                    bar.update(hi - lo)
            else:  # pragma: no cover - stores written by ingest are plate-contiguous
                for i, offset in zip(wells.index, offsets):
                    z = (store.bag(i).astype(np.float64) - median) / scale
                    writer.write_rows(np.arange(offset, offset + len(z)), z)
                    bar.update(len(z))
        for part in store.manifest.get("meta_files", []):
            meta = pd.read_parquet(store.path / part)
            writer.add_meta(meta.drop(columns="_row"), meta["_row"].to_numpy())
        if zero_mad_features:
            warnings.warn(
                f"{zero_mad_features} plate-feature pairs have zero MAD among controls; they are "
                f"divided by eps={settings.eps}",
                stacklevel=2,
            )
        stats = pd.DataFrame(stats_rows)
        np.savez(
            writer.work_path / "correction_stats.npz",
            plates=np.array(stats[PLATE], dtype=str),
            median=np.stack(medians),
            scale=np.stack(scales),
        )
        stats.to_csv(writer.work_path / "correction_plates.csv", index=False)
        record = provenance(
            "correct",
            settings,
            inputs={"store": store.path},
            source_history=store.manifest.get("history", []),
            plates=len(plates),
            zero_mad_features=zero_mad_features,
            seconds=round(time.perf_counter() - started, 3),
        )
        writer.set_provenance(record)
    return InstanceStore(out)


def load_correction_stats(store_path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-plate (median, scale) saved by :func:`correct`, to apply the same correction elsewhere."""
    data = np.load(f"{store_path}/correction_stats.npz")
    return {p: (m, s) for p, m, s in zip(data["plates"], data["median"], data["scale"])}


def plate_variance_fraction(store: InstanceStore, control: str = "negcon") -> float:
    """Share of the variance of control-well mean vectors explained by their plate (0 = no plate effect).

    Averaged over features; a diagnostic of how much plate effect remains (used by the demo and tests).
    """
    wells = store.wells[store.wells[CONTROL] == control]
    if wells[PLATE].nunique() < 2:
        return 0.0
    means = np.stack([store.bag(i).astype(np.float64).mean(axis=0) for i in wells.index])  # (wells, D)
    plate_codes = pd.factorize(wells[PLATE])[0]
    plate_means = np.stack([means[plate_codes == p].mean(axis=0) for p in range(plate_codes.max() + 1)])
    between = ((plate_means[plate_codes] - means.mean(axis=0)) ** 2).sum(axis=0)
    total = ((means - means.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(between / np.maximum(total, 1e-12)))
