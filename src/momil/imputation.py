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
    save_imputed_model,
    self_train,
)
from momil.training.inference import predict_all  # noqa: F401
