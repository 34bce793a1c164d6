"""Profiles out: well- and compound-level tables in pycytominer's shape, for pycytominer, copairs and the rest of
the Cell Painting ecosystem.

A profile table holds the ``Metadata_*`` columns first, in a stable order (:data:`METADATA_ORDER`, then the
store's other ``Metadata_*`` columns sorted by name), then one column per feature, every feature name starting
with the feature prefix (``Momil_`` by default), so ``[c for c in table if c.startswith("Momil_")]`` is the
feature list to hand to ``pycytominer.feature_select`` / ``aggregate`` (which infer only CellProfiler's
compartment prefixes) and to copairs. The features are

* ``--level well`` without a model: each well's mean instance (the well mean the linear floor reads), named
  ``<prefix><store feature name>``;
* with ``--model M --assay A``: the attention-pooled embedding of the well from assay A's head (MoMIL) or the
  shared pooled representation (the baselines), named ``<prefix>emb_0000``, ...;
* ``--level compound``: the consensus of a compound's replicate wells (the median by default, as
  ``pycytominer.consensus``), with the number of wells in ``Metadata_Wells``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from momil.data.bags import bag_batches
from momil.errors import MomilError
from momil.io.contract import BATCH, COMPOUND, CONTROL, PLATE, WELL
from momil.io.store import InstanceStore
from momil.progress import progress

METADATA_ORDER = [PLATE, WELL, BATCH, COMPOUND, CONTROL]
DEFAULT_PREFIX = "Momil_"
WELLS_COLUMN = "Metadata_Wells"


def metadata_columns(frame: pd.DataFrame) -> list[str]:
    """The ``Metadata_*`` columns of ``frame`` in the stable order profile tables use."""
    present = [c for c in METADATA_ORDER if c in frame.columns]
    return present + sorted(c for c in frame.columns if str(c).startswith("Metadata_") and c not in present)


def feature_columns(frame: pd.DataFrame, prefix: str = DEFAULT_PREFIX) -> list[str]:
    return [c for c in frame.columns if str(c).startswith(prefix)]


@torch.no_grad()
def well_profiles(
    store: InstanceStore,
    model=None,
    assay: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    device="cpu",
    batch_wells: int = 64,
    show_progress: bool = False,
) -> pd.DataFrame:
    """One row per well of ``store``: its metadata, then its well mean (no model) or the model's pooled embedding
    for ``assay``."""
    if not prefix or prefix.startswith("Metadata_"):
        raise MomilError(f"--feature-prefix must be non-empty and not start with Metadata_, not {prefix!r}")
    if model is not None:
        if assay is None or assay not in model.assays:
            known = ", ".join(model.assays[:5])
            raise MomilError(f"--assay {assay}: the model has no such assay -- give one of its assays, e.g. {known}")
        index = model.assays.index(assay)
        model.eval()
    wells = np.arange(store.n_wells)
    chunks = []
    with progress(total=len(wells), desc="profiles", unit="well", enabled=show_progress) as bar:
        for batch, bags, mask in bag_batches(store, wells, batch_wells, device):
            if model is None:  # the well mean in float64 (io stays above model/, whose mean pooling is float32)
                weights = mask.to(bags.dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(bags.dtype)
                features = torch.einsum("bn,bnd->bd", weights.double(), bags.double())
            else:
                features = model.embed(bags, mask, index).double()
            chunks.append(features.cpu().numpy())
            bar.update(len(batch))
    values = np.concatenate(chunks) if chunks else np.zeros((0, 0))
    names = (
        [f"{prefix}{name}" for name in store.feature_names]
        if model is None
        else [f"{prefix}emb_{i:04d}" for i in range(values.shape[1])]
    )
    meta = store.wells[metadata_columns(store.wells)].reset_index(drop=True)
    return pd.concat([meta, pd.DataFrame(values, columns=names)], axis=1)


def compound_profiles(wells: pd.DataFrame, prefix: str = DEFAULT_PREFIX, operation: str = "median") -> pd.DataFrame:
    """The consensus of each compound's wells: ``operation`` ("median" or "mean") of every feature, the number
    of wells in ``Metadata_Wells``, and the metadata that is constant over the compound's wells."""
    if operation not in ("median", "mean"):
        raise MomilError(f"--operation must be 'median' or 'mean', not {operation!r}")
    features = feature_columns(wells, prefix)
    grouped = wells.groupby(COMPOUND, sort=True)
    consensus = getattr(grouped[features], operation)()
    constant = [c for c in metadata_columns(wells) if c != COMPOUND and (grouped[c].nunique(dropna=False) <= 1).all()]
    meta = grouped[constant].first() if constant else pd.DataFrame(index=consensus.index)
    meta[WELLS_COLUMN] = grouped.size()
    out = pd.concat([meta, consensus], axis=1).reset_index()
    return out[metadata_columns(out) + features]
