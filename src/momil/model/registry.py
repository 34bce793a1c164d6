"""The model registry: a model of any kind from its name and hyperparameters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from momil.errors import MomilError
from momil.model.momil import MoMIL

if TYPE_CHECKING:  # settings belong to training, which imports this module
    from momil.training.settings import TrainSettings

LINEAR_MODELS = ("mean-lr", "instance-count")  # scikit-learn baselines: fitted by the protocol, no checkpoint
MODELS = (
    "momil",
    "mean-mlp",
    "multilabel-mil",
    "mean-lr",
    "instance-count",
)  # every model name TrainSettings.model takes


def model_from_hparams(hp: dict) -> torch.nn.Module:
    """MoMIL or a baseline of the same interface from its hyperparameters (``model.hparams``)."""
    from momil.model.baselines import BASELINES

    kind = hp.get("model", "momil")
    if kind == "momil":
        return MoMIL(
            hp["in_dim"],
            hp["assays"],
            hp["head"],
            hp["projector_dim"],
            hp["head_dim"],
            hp["dropout"],
            hp["shared_projector"],
            hp.get("mean_stream", False),  # models saved before the mean stream have none
            hp.get("linear_floor", False),  # nor before the linear floor
            hp.get("shared_attention", False),  # nor before the shared attention
            hp.get("shared_readout", False),  # nor before the shared readout
        )
    if kind in BASELINES:
        extra = {}
        if kind == "mean-mlp":  # models saved before the mean stream have none
            extra = {"mlp_dropout": hp.get("mlp_dropout", 0.0), "mean_stream": hp.get("mean_stream", False)}
        return BASELINES[kind](
            hp["in_dim"],
            hp["assays"],
            hp["projector_dim"],
            hp["head_dim"],
            hp["dropout"],
            hp.get("linear_floor", False),
            **extra,
        )
    if kind in LINEAR_MODELS:
        raise MomilError(f"the {kind} baseline is a logistic regression, not a network: run it with `momil cv`")
    raise MomilError(f"model must be one of {MODELS}, not {kind!r}")


def build_model(in_dim: int, assays: list[str], settings: TrainSettings) -> torch.nn.Module:
    """MoMIL or a baseline of the same interface, by ``settings.model``."""
    return model_from_hparams(
        {
            "model": settings.model,
            "in_dim": in_dim,
            "assays": list(assays),
            "head": settings.head,
            "projector_dim": settings.projector_dim,
            "head_dim": settings.head_dim,
            "dropout": settings.dropout,
            "mlp_dropout": settings.mlp_dropout,
            "shared_projector": settings.shared_projector,
            "mean_stream": settings.mean_stream,
            "linear_floor": settings.linear_floor,
            "shared_attention": settings.shared_attention,
            "shared_readout": settings.shared_readout,
        }
    )
