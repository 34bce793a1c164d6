"""Deprecated alias of `momil.train`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.model.registry`
- `momil.training.checkpoints`
- `momil.device`
- `momil.training.fit`
- `momil.training.losses`
- `momil.training.metrics`
- `momil.training.optim`
- `momil.training.settings`
"""

from momil.device import (  # noqa: F401
    autocast_for,
    keep_freed_memory,
    resolve_device,
)
from momil.model.registry import (  # noqa: F401
    build_model,
    model_from_hparams,
)
from momil.training.checkpoints import (  # noqa: F401
    _ARRAY_KEYS,
    load_model,
    save_model,
    save_training_checkpoint,
    state_for_checkpoint,
    state_from_checkpoint,
)
from momil.training.fit import (  # noqa: F401
    FitResult,
    fit,
    training_step,
)
from momil.training.inference import predict_pairs  # noqa: F401
from momil.training.losses import (  # noqa: F401
    amtl_weights,
    balanced_loss,
    mean_bce,
    smoothed_balanced_loss,
)
from momil.training.metrics import (  # noqa: F401
    roc_auc,
    validation_score,
)
from momil.training.optim import (  # noqa: F401
    LazyHeadAdamW,
    _has_fused_adamw,
    make_optimizers,
    warmup_cosine,
)
from momil.training.settings import (  # noqa: F401
    MODELS,
    TrainSettings,
)
