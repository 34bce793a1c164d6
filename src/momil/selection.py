"""Deprecated alias of `momil.selection`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.protocol.selection`
"""

from momil.protocol.selection import (  # noqa: F401
    STAGES,
    SelectionResult,
    SelectSettings,
    _write,
    biological_similarity,
    influence_score,
    load_selection,
    select_assays,
    selection_table_text,
    stl_settings,
    train_single_assay,
    wells_digest,
)
from momil.training.inference import embed_all as embed_wells  # noqa: F401
