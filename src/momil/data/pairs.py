"""Training bags: wells of the store with their labelled (assay, label) pairs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from momil.io.contract import COMPOUND, LabelMatrix


@dataclasses.dataclass
class WellPairs:
    """Labelled pairs per store well in CSR form: pairs of well ``w`` are ``ptr[w]:ptr[w+1]``."""

    ptr: np.ndarray  # (n_store_wells + 1,) int64
    assay: np.ndarray  # (pairs,) int64, index into ``assays``
    label: np.ndarray  # (pairs,) float32 0/1
    assays: list[str]

    @classmethod
    def build(
        cls,
        store_wells: pd.DataFrame,
        labels: LabelMatrix,
        assays: list[str],
        extra: pd.DataFrame | None = None,
        extra_wells: pd.DataFrame | None = None,
    ) -> WellPairs:
        """Pairs for every store well whose compound has labels in ``assays``.

        ``extra`` (Metadata_Compound, assay, label) adds compound-level labels, copied to the compound's wells;
        ``extra_wells`` (well = store row, assay, label) adds labels of single wells, e.g. imputed ones. A pair
        that is already labelled is never labelled twice (the measured label wins)."""
        long = labels.to_long()
        if extra is not None and len(extra):
            long = pd.concat([long, extra[[COMPOUND, "assay", "label"]]], ignore_index=True)
            long = long.drop_duplicates([COMPOUND, "assay"], keep="first")
        assay_index = {a: i for i, a in enumerate(assays)}
        long = long[long["assay"].isin(assay_index)]
        long = long.assign(assay_index=long["assay"].map(assay_index).astype(np.int64))
        by_compound = {
            c: (g["assay_index"].to_numpy(np.int64), g["label"].to_numpy(np.float32))
            for c, g in long.groupby(COMPOUND, sort=False)
        }
        by_well: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if extra_wells is not None and len(extra_wells):
            mine = extra_wells[extra_wells["assay"].isin(assay_index)]
            mine = mine.assign(assay_index=mine["assay"].map(assay_index).astype(np.int64))
            by_well = {
                int(w): (g["assay_index"].to_numpy(np.int64), g["label"].to_numpy(np.float32))
                for w, g in mine.groupby("well", sort=False)
            }
        counts = np.zeros(len(store_wells), dtype=np.int64)
        pieces_a, pieces_l = [], []
        for w, compound in enumerate(store_wells[COMPOUND].astype(str)):
            found = by_compound.get(compound)
            added = by_well.get(w)
            if found is not None and added is not None:
                fresh = ~np.isin(added[0], found[0])
                found = (np.concatenate([found[0], added[0][fresh]]), np.concatenate([found[1], added[1][fresh]]))
            elif found is None:
                found = added
            if found is not None:
                counts[w] = len(found[0])
                pieces_a.append(found[0])
                pieces_l.append(found[1])
        ptr = np.concatenate([[0], np.cumsum(counts)])
        assay = np.concatenate(pieces_a) if pieces_a else np.zeros(0, np.int64)
        label = np.concatenate(pieces_l) if pieces_l else np.zeros(0, np.float32)
        return cls(ptr, assay, label, list(assays))

    def digest(self) -> str:
        """A short hash of every pair (part of a training checkpoint's signature)."""
        import hashlib

        h = hashlib.sha1()
        for array in (self.ptr, self.assay, self.label):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]

    def count(self, wells: np.ndarray) -> np.ndarray:
        return self.ptr[wells + 1] - self.ptr[wells]

    def labelled_wells(self, wells: np.ndarray, assay_mask: np.ndarray | None = None) -> np.ndarray:
        """Wells (of ``wells``) with at least one pair, or one pair in an assay where ``assay_mask``."""
        wells = np.asarray(wells, dtype=np.int64)
        if assay_mask is None:
            return wells[self.count(wells) > 0]
        keep = [w for w in wells if assay_mask[self.assay[self.ptr[w] : self.ptr[w + 1]]].any()]
        return np.asarray(keep, dtype=np.int64)

    def pairs(self, wells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row in ``wells``, assay, label) of every pair of ``wells``."""
        starts, stops = self.ptr[wells], self.ptr[wells + 1]
        lengths = stops - starts
        rows = np.repeat(np.arange(len(wells)), lengths)
        index = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)]) if len(wells) else np.zeros(0, int)
        index = index.astype(np.int64)
        return rows, self.assay[index], self.label[index]


def labelled_wells_of(
    store_wells: pd.DataFrame, labels: LabelMatrix, assay: str, wells: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Wells (store rows, of ``wells``) with a measured label in ``assay``, and those labels (int64)."""
    pairs = WellPairs.build(store_wells, labels, [assay])
    mine = pairs.labelled_wells(np.asarray(wells, np.int64))
    _, _, y = pairs.pairs(mine)
    return mine, y.astype(np.int64)


def rotation_wells(store_wells: pd.DataFrame, folds: pd.DataFrame, test_fold: int):
    """The 3-1-1 rotation of ``test_fold`` and its treatment wells: (Rotation, {"train", "val", "test"} -> rows)."""
    from momil.prep.splits import n_folds, rotation, rotation_compounds

    rot = rotation(test_fold, n_folds(folds))
    parts = rotation_compounds(folds, rot)
    return rot, {name: wells_of(store_wells, compounds) for name, compounds in parts.items()}


def wells_of(store_wells: pd.DataFrame, compounds) -> np.ndarray:
    """Store rows of the wells of ``compounds`` (treatment wells only)."""
    chosen = set(map(str, compounds))
    mask = (
        store_wells[COMPOUND].astype(str).isin(chosen).to_numpy()
        & (store_wells["Metadata_ControlType"] == "trt").to_numpy()
    )
    return np.flatnonzero(mask).astype(np.int64)
