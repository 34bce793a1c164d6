"""Deprecated alias of `momil.imputation`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.protocol.imputation`
"""

from momil.protocol.imputation import (  # noqa: F401
    ImputationResult,
    ImputeSettings,
    _jsonable,
    conformal_thresholds,
    impute_round,
    imputed_counts,
    predict_all,
    save_imputed_model,
    self_train,
)
