"""Deprecated alias of `momil.evaluate`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.protocol.cv`
- `momil.protocol.scoring`
"""

from momil.protocol.cv import (  # noqa: F401
    CONFIGURATIONS,
    CVResult,
    CVSettings,
    _model_assay_sets,
    _parse_grid,
    cross_validate,
    grid,
    instance_count_predictions,
    single_task_potentials,
)
from momil.protocol.scoring import (  # noqa: F401
    assay_metrics,
    attach_labels,
    compound_predictions,
    metrics_table,
    paired_bootstrap,
    predict_wells,
    summarise,
)
