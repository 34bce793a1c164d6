"""`momil split`: compound folds by chemical similarity, and the paper's 3-1-1 rotation.

1. Compounds with a structure (SMILES) are clustered:
   * ``butina`` (default): Taylor-Butina clustering of Morgan fingerprints at a Tanimoto *distance* cutoff. It
     gives the same clusters as RDKit's ``rdkit.ML.Cluster.Butina.ClusterData`` but never builds the full
     distance matrix: similarities are computed block by block (a matrix product of bit vectors) and only
     neighbour lists within the cutoff are kept, so 50,000 compounds take well under a minute.
   * ``scaffold``: Bemis-Murcko scaffold groups (acyclic compounds each form their own group).
2. Clusters are packed into K folds, largest first, each into the fold where it least unbalances the per-assay
   counts of active and inactive labels (and the number of compounds).
3. Compounds without a usable structure go to folds by a stable hash of their InChIKey skeleton (first block)
   or, without one, of their identifier; a warning says how many.

The folds file (``folds.parquet``) is reused by every later stage. For test fold k the validation fold is
k+1 (mod K) and the rest train (:func:`rotation`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from momil.config import Settings, setting
from momil.errors import InputError, MomilError
from momil.io.contract import COMPOUND, INCHIKEY, SMILES, LabelMatrix
from momil.progress import progress

FOLD_COLUMNS = [COMPOUND, "fold", "cluster", "has_structure"]


@dataclasses.dataclass
class SplitSettings(Settings):
    method: str = setting("butina", '"butina" or "scaffold"', choices=["butina", "scaffold"])
    cutoff: float = setting(
        0.6,
        "Butina: Tanimoto distance (1 - similarity) within which compounds are neighbours",
        low=0,
        high=1,
        low_open=True,
    )
    radius: int = setting(2, "Morgan radius", low=1)
    n_bits: int = setting(2048, "Morgan fingerprint length", low=64)
    n_folds: int = setting(5, low=3)
    seed: int = setting(0, "breaks ties between equally good folds")
    block_rows: int = setting(
        512, "Butina: rows of the similarity matrix computed at once (memory ~ block x n x 9 B)", low=1
    )


# ------------------------------------------------------------------------------------------------ chemistry
def _quiet_rdkit():
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")


def parse_smiles(smiles: Sequence) -> list:
    """RDKit molecules (None where missing or unparsable)."""
    from rdkit import Chem

    _quiet_rdkit()
    mols = []
    for s in smiles:
        if s is None or (isinstance(s, float) and np.isnan(s)) or s is pd.NA or str(s).strip() == "":
            mols.append(None)
        else:
            mols.append(Chem.MolFromSmiles(str(s)))
    return mols


def morgan_bits(mols: Sequence, radius: int = 2, n_bits: int = 2048) -> np.ndarray:
    """(n, n_bits) uint8 Morgan fingerprint bits of RDKit molecules (none may be None)."""
    from rdkit import DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    bits = np.zeros((len(mols), n_bits), dtype=np.uint8)
    for i, mol in enumerate(mols):
        DataStructs.ConvertToNumpyArray(generator.GetFingerprint(mol), bits[i])
    return bits


def tanimoto_neighbours(
    bits: np.ndarray, cutoff: float, block_rows: int = 1024, show_progress: bool = False
) -> list[np.ndarray]:
    """For each row, the indices of rows within Tanimoto distance ``cutoff`` (itself excluded).

    Intersections come from a float32 matrix product (exact for bit counts below 2^24); candidate pairs are
    confirmed with RDKit's arithmetic (``1 - c / (a + b - c) <= cutoff`` in float64). Memory: the neighbour
    pairs plus one (block_rows, n) block at ~9 bytes per entry; time: n^2/2 similarity evaluations.
    """
    n = len(bits)
    ones = bits.sum(axis=1).astype(np.float32)
    dense = bits.astype(np.float32)
    min_similarity = np.float32(max(0.0, 1.0 - cutoff - 1e-6))
    pair_i, pair_j = [], []
    with progress(total=n, desc="split: similarities", unit="cpd", enabled=show_progress) as bar:
        for start in range(0, n, block_rows):
            stop = min(n, start + block_rows)
            inter = dense[start:stop] @ dense[:stop].T  # (block, stop) exact integer counts
            union = ones[start:stop, None] + ones[None, :stop]
            union -= inter
            candidate = inter >= min_similarity * union
            del union
            # lower triangle only (j < i); the pair is mirrored below
            candidate &= np.arange(stop)[None, :] < np.arange(start, stop)[:, None]
            rows, cols = np.nonzero(candidate)
            del candidate
            c = inter[rows, cols].astype(np.float64)
            u = ones[rows + start].astype(np.float64) + ones[cols].astype(np.float64) - c
            similarity = np.divide(c, u, out=np.ones_like(c), where=u > 0)  # two empty fingerprints: identical
            keep = (1.0 - similarity) <= cutoff
            pair_i.append((rows[keep] + start).astype(np.int32))
            pair_j.append(cols[keep].astype(np.int32))
            bar.update(stop - start)
    i = np.concatenate(pair_i) if pair_i else np.zeros(0, np.int32)
    j = np.concatenate(pair_j) if pair_j else np.zeros(0, np.int32)
    src = np.concatenate([i, j])
    dst = np.concatenate([j, i])
    del i, j, pair_i, pair_j
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    bounds = np.searchsorted(src, np.arange(n + 1))
    return [dst[bounds[k] : bounds[k + 1]] for k in range(n)]


def butina_clusters(neighbours: list[np.ndarray]) -> np.ndarray:
    """Taylor-Butina on neighbour lists, as RDKit's Butina.ClusterData (reordering=False): returns a cluster
    id per point; cluster 0 is the first centroid picked (most neighbours; ties: the higher index)."""
    n = len(neighbours)
    sizes = np.array([len(nb) for nb in neighbours], dtype=np.int64)
    # RDKit sorts (count, index) tuples in reverse: most neighbours first, ties by higher index first
    order = np.lexsort((-np.arange(n), -sizes))
    cluster = -np.ones(n, dtype=np.int64)
    next_id = 0
    for idx in order:
        if cluster[idx] >= 0:
            continue
        members = neighbours[idx]
        members = members[cluster[members] < 0]
        cluster[idx] = next_id
        cluster[members] = next_id
        next_id += 1
    return cluster


def scaffold_key(mol, index: int) -> str:
    """Bemis-Murcko scaffold SMILES; an acyclic molecule is its own group."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    key = Chem.MolToSmiles(scaffold) if scaffold is not None and scaffold.GetNumAtoms() else ""
    return key if key else f"__acyclic_{index}"


def scaffold_clusters(mols: Sequence) -> np.ndarray:
    keys = [scaffold_key(mol, i) for i, mol in enumerate(mols)]
    _, cluster = np.unique(np.array(keys, dtype=object), return_inverse=True)
    return cluster.astype(np.int64)


def stable_fold(key: str, n_folds: int) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % n_folds


# ------------------------------------------------------------------------------------------------ packing
def pack_clusters(cluster_vectors: np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Assign clusters (rows of (n_clusters, dims) counts) to folds, largest first, minimising the squared
    relative load per dimension. Returns the fold per cluster."""
    n_clusters, dims = cluster_vectors.shape
    vectors = cluster_vectors.astype(np.float64)
    totals = vectors.sum(axis=0)
    targets = np.maximum(totals / n_folds, 1.0)
    weight = 1.0 / targets**2
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(n_clusters)
    size = vectors.sum(axis=1)
    order = np.lexsort((tiebreak, -size))
    loads = np.zeros((n_folds, dims))
    fold_of = np.zeros(n_clusters, dtype=np.int64)
    for c in order:
        v = vectors[c]
        nz = np.flatnonzero(v)
        cost = ((2.0 * loads[:, nz] * v[nz] + v[nz] ** 2) * weight[nz]).sum(axis=1)
        best = np.flatnonzero(cost <= cost.min() + 1e-12)
        if len(best) > 1:  # equal cost: the fold with the fewest items so far, then by a seeded order
            fill = loads[best].sum(axis=1)
            best = best[fill <= fill.min() + 1e-12]
        k = int(best[0]) if len(best) == 1 else int(best[(c + seed) % len(best)])
        loads[k] += v
        fold_of[c] = k
    return fold_of


# ---------------------------------------------------------------------------------------------------- split
def structure_features(smiles: Sequence, settings: SplitSettings) -> tuple[np.ndarray, object]:
    """Parse SMILES one at a time (molecules are not kept: 50,000 of them take ~2 GB) into Morgan bits
    (``butina``: (n_valid, n_bits) uint8) or scaffold keys (``scaffold``: list of str)."""
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    _quiet_rdkit()
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=settings.radius, fpSize=settings.n_bits)
    valid = np.zeros(len(smiles), dtype=bool)
    rows: list[np.ndarray] = []
    keys: list[str] = []
    for i, text in enumerate(smiles):
        if text is None or text is pd.NA or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
            continue
        mol = Chem.MolFromSmiles(str(text))
        if mol is None or mol.GetNumAtoms() == 0:
            continue
        valid[i] = True
        if settings.method == "butina":
            row = np.zeros(settings.n_bits, dtype=np.uint8)
            DataStructs.ConvertToNumpyArray(generator.GetFingerprint(mol), row)
            rows.append(row)
        else:
            keys.append(scaffold_key(mol, i))
    if settings.method == "butina":
        return valid, (np.stack(rows) if rows else np.zeros((0, settings.n_bits), np.uint8))
    return valid, keys


def _check_split(settings: SplitSettings) -> None:
    if settings.n_folds < 3:
        raise MomilError(f"n_folds must be at least 3 for the train/validation/test rotation, not {settings.n_folds}")
    if settings.method not in ("butina", "scaffold"):
        raise MomilError(f"split method must be 'butina' or 'scaffold', not {settings.method!r}")
    if not 0.0 < settings.cutoff < 1.0:
        raise MomilError(f"cutoff is a Tanimoto distance in (0, 1), not {settings.cutoff}")


def _label_dims(compounds: np.ndarray, labels: LabelMatrix | None) -> tuple[int, np.ndarray, np.ndarray]:
    """The dimensions fold packing balances: a compound count plus one per (assay, class); (dims, the row of
    each known label's compound, its dimension)."""
    if labels is not None and labels.n_labels:
        position = pd.Index(compounds).get_indexer(labels.compounds)
        row = position[labels.rows]
        known = row >= 0
        dims = 1 + 2 * len(labels.assays)
        label_dim = 1 + 2 * labels.cols[known] + labels.values[known].astype(np.int64)
        row = row[known]
    else:
        dims, row, label_dim = 1, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return dims, row, label_dim


def _hash_unstructured(table, compounds, has_structure, cluster_key, folds, n_folds: int, unparsable: int) -> None:
    """Compounds without a usable structure go to folds by a stable hash of their InChIKey skeleton or identifier
    (``cluster_key`` and ``folds`` are filled in place), with a warning that says how many."""
    n = len(compounds)
    unstructured = np.flatnonzero(~has_structure)
    if len(unstructured):
        inchikeys = table[INCHIKEY].to_numpy(dtype=object)
        for i in unstructured:
            key = inchikeys[i]
            if isinstance(key, str) and key.strip():
                key = "inchikey:" + key.strip().split("-")[0]
            else:
                key = "id:" + str(compounds[i])
            cluster_key[i] = key
            folds[i] = stable_fold(key, n_folds)
        warnings.warn(
            f"{len(unstructured)} of {n} compounds have no usable structure"
            + (f" ({unparsable} SMILES could not be parsed)" if unparsable else "")
            + "; they are put in folds by a stable hash of their InChIKey skeleton or identifier",
            stacklevel=3,
        )


def make_folds(
    compounds: Sequence[str],
    structures: pd.DataFrame | None = None,
    labels: LabelMatrix | None = None,
    settings: SplitSettings | None = None,
    show_progress: bool = True,
) -> pd.DataFrame:
    """Folds for ``compounds``. ``structures`` holds Metadata_Compound with Metadata_SMILES and/or
    Metadata_InChIKey (contract part 3); ``labels`` balances per-assay label counts across folds."""
    settings = settings or SplitSettings()
    _check_split(settings)
    compounds = pd.unique(pd.Series(list(compounds), dtype="string").dropna()).astype(object)
    n = len(compounds)
    if n == 0:
        raise MomilError("no compounds to split")
    table = pd.DataFrame({COMPOUND: compounds})
    if structures is not None:
        structures = structures.copy()
        for column in (SMILES, INCHIKEY):
            if column not in structures.columns:
                structures[column] = pd.NA
        table = table.merge(structures[[COMPOUND, SMILES, INCHIKEY]].drop_duplicates(COMPOUND), on=COMPOUND, how="left")
    else:
        table[SMILES] = pd.NA
        table[INCHIKEY] = pd.NA
    has_structure, features = structure_features(table[SMILES].tolist(), settings)
    unparsable = int(np.sum(table[SMILES].notna().to_numpy() & ~has_structure))

    cluster_key = np.empty(n, dtype=object)
    structured = np.flatnonzero(has_structure)
    if len(structured):
        if settings.method == "butina":
            neighbours = tanimoto_neighbours(features, settings.cutoff, settings.block_rows, show_progress)
            del features
            cluster = butina_clusters(neighbours)
        else:
            _, cluster = np.unique(np.array(features, dtype=object), return_inverse=True)
        cluster_key[structured] = [f"{settings.method}:{c}" for c in cluster]

    dims, row, label_dim = _label_dims(compounds, labels)

    folds = np.full(n, -1, dtype=np.int64)
    if len(structured):
        keys, cluster_index = np.unique(cluster_key[structured].astype(str), return_inverse=True)
        of_compound = -np.ones(n, dtype=np.int64)
        of_compound[structured] = cluster_index
        vectors = np.zeros((len(keys), dims))
        np.add.at(vectors[:, 0], cluster_index, 1.0)
        in_cluster = of_compound[row] >= 0
        np.add.at(vectors, (of_compound[row][in_cluster], label_dim[in_cluster]), 1.0)
        folds[structured] = pack_clusters(vectors, settings.n_folds, settings.seed)[cluster_index]

    _hash_unstructured(table, compounds, has_structure, cluster_key, folds, settings.n_folds, unparsable)
    return pd.DataFrame(
        {
            COMPOUND: pd.array(compounds, dtype="string"),
            "fold": folds.astype(np.int16),
            "cluster": pd.array(cluster_key.astype(str), dtype="string"),
            "has_structure": has_structure,
        }
    )


def fold_summary(folds: pd.DataFrame, labels: LabelMatrix | None = None) -> pd.DataFrame:
    """Per fold: compounds, clusters, and labelled / active / inactive counts."""
    rows = []
    fold_of = dict(zip(folds[COMPOUND], folds["fold"]))
    if labels is not None:
        label_fold = np.array([fold_of.get(c, -1) for c in labels.compounds])[labels.rows]
    for k in sorted(folds["fold"].unique()):
        part = folds[folds["fold"] == k]
        row = {
            "fold": int(k),
            "compounds": len(part),
            "clusters": part["cluster"].nunique(),
            "with_structure": int(part["has_structure"].sum()),
        }
        if labels is not None:
            mine = label_fold == k
            row.update(
                {
                    "labels": int(mine.sum()),
                    "active": int(labels.values[mine].sum()),
                    "inactive": int(mine.sum() - labels.values[mine].sum()),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------- rotation
@dataclasses.dataclass(frozen=True)
class Rotation:
    test_fold: int
    val_fold: int
    train_folds: tuple[int, ...]


def rotation(test_fold: int, n_folds: int) -> Rotation:
    """The paper's 3-1-1 scheme generalised to K folds: test k, validation k+1 (mod K), train the rest."""
    if not 0 <= test_fold < n_folds:
        raise MomilError(f"test fold {test_fold} is not in 0..{n_folds - 1}")
    val = (test_fold + 1) % n_folds
    return Rotation(test_fold, val, tuple(k for k in range(n_folds) if k not in (test_fold, val)))


def rotations(n_folds: int) -> Iterator[Rotation]:
    for k in range(n_folds):
        yield rotation(k, n_folds)


def test_folds(text: str, n_folds: int) -> list[int]:
    """The test folds a ``--rotations`` value names: "all" or comma-separated fold numbers, each checked."""
    if str(text) == "all":
        return list(range(n_folds))
    try:
        chosen = [int(k) for k in str(text).split(",") if k.strip()]
    except ValueError as err:
        raise MomilError(f"--rotations must be 'all' or comma-separated fold numbers, not {text!r}") from err
    bad = [k for k in chosen if not 0 <= k < n_folds]
    if bad or not chosen:
        raise MomilError(f"--rotations: fold {bad[0] if bad else text!r} does not exist (folds 0..{n_folds - 1})")
    return chosen


def rotation_compounds(folds: pd.DataFrame, rot: Rotation) -> dict[str, np.ndarray]:
    fold = folds["fold"].to_numpy()
    names = folds[COMPOUND].to_numpy(dtype=object)
    return {
        "train": names[np.isin(fold, rot.train_folds)],
        "val": names[fold == rot.val_fold],
        "test": names[fold == rot.test_fold],
    }


def n_folds(folds: pd.DataFrame) -> int:
    """K of a folds table (folds are numbered 0..K-1; :func:`read_folds` checks that none is empty)."""
    return int(folds["fold"].max()) + 1


def compounds_to_split(
    wells: pd.DataFrame | None = None, labels: LabelMatrix | None = None, structures: pd.DataFrame | None = None
) -> np.ndarray:
    """The compounds a split covers: the treatment compounds of ``wells`` when given, else every compound that
    has labels or a structure (in order of first appearance)."""
    if wells is not None:
        return pd.unique(wells.loc[wells["Metadata_ControlType"] == "trt", COMPOUND])
    parts = []
    if labels is not None:
        parts.append(pd.Series(labels.compounds))
    if structures is not None:
        parts.append(structures[COMPOUND])
    if not parts:
        raise MomilError("momil split needs --wells, --labels or --compounds to know which compounds to split")
    return pd.unique(pd.concat(parts))


def read_folds(path) -> pd.DataFrame:
    from momil.io.tables import read_table, require_columns

    frame = read_table(path, dtype_str=(COMPOUND, "cluster"))
    require_columns(frame, (COMPOUND, "fold"), path, "folds")
    if frame[COMPOUND].duplicated().any():
        raise InputError(path, "a compound appears in more than one row", "one fold per compound")
    fold = pd.to_numeric(frame["fold"], errors="coerce")
    bad = fold.isna() | (fold < 0) | (fold % 1 != 0)
    if bad.any():
        row = int(np.argmax(bad.to_numpy()))
        raise InputError(
            path,
            f"column fold must hold whole numbers 0, 1, ..., K-1; data row {row + 1} has {frame['fold'].iat[row]!r}",
            "make the folds with `momil split`",
        )
    frame["fold"] = fold.astype(np.int64)
    n_folds = int(frame["fold"].max()) + 1 if len(frame) else 0
    empty = sorted(set(range(n_folds)) - set(frame["fold"]))
    if n_folds < 3 or empty:
        problem = f"fold {empty[0]} holds no compound" if empty else f"only {n_folds} fold(s)"
        raise InputError(
            path,
            f"{problem}; the 3-1-1 rotation needs folds 0..K-1 (K >= 3), each with compounds",
            "make the folds with `momil split` (fewer --n-folds if it left a fold empty)",
        )
    return frame


def split(
    compounds: Sequence[str],
    structures=None,
    labels=None,
    settings: SplitSettings | None = None,
    show_progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """make_folds + summary + seconds; refuses a split that leaves a fold empty (the rotation needs every fold)."""
    settings = settings or SplitSettings()
    started = time.perf_counter()
    folds = make_folds(compounds, structures, labels, settings, show_progress)
    empty = sorted(set(range(settings.n_folds)) - set(folds["fold"].tolist()))
    if empty:
        clusters = folds["cluster"].nunique()
        raise MomilError(
            f"--n-folds {settings.n_folds}: fold {empty[0]} would hold no compound ({len(folds)} "
            f"compounds in {clusters} clusters) -- choose at most {min(len(folds), clusters)} folds"
        )
    return folds, fold_summary(folds, labels), time.perf_counter() - started
