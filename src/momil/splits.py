"""Deprecated alias of `momil.splits`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.prep.splits`
"""

from momil.prep.splits import (  # noqa: F401
    FOLD_COLUMNS,
    Rotation,
    SplitSettings,
    _quiet_rdkit,
    butina_clusters,
    fold_summary,
    make_folds,
    morgan_bits,
    pack_clusters,
    parse_smiles,
    read_folds,
    rotation,
    rotation_compounds,
    rotations,
    scaffold_clusters,
    scaffold_key,
    split,
    stable_fold,
    structure_features,
    tanimoto_neighbours,
    test_folds,
)
