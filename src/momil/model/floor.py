"""The linear floor inside a network: each assay's logistic regression on the well mean, blended with the network
by a share chosen on the validation wells.

A network trained by SGD from 20-500 labels per assay does not reliably find the strongly regularised linear model
on well means that a convex fit with an inner cross-validation of its L2 strength finds: on the quality panel
MoMIL fell below ``mean-lr`` where the labels are few, the signal weak or the panel sparse, and rose well above it
where only a few cells respond. With ``linear_floor`` a model holds that linear fit as buffers and its logit is

    logit_t(well) = (1 - share) * network_t(well) / s_t  +  share * (w_t . mean(well) + b_t) / f_t

``s_t`` and ``f_t``: the standard deviations of the two logits over the validation wells, so that ``share``
weighs two rankings on one scale. While the network trains ``share`` is 0 and the scales 1 (the network alone,
exactly as without a floor); afterwards :func:`momil.training.floor.blend_floor` fits ``w_t``, ``b_t`` on the
training compounds (the ``mean-lr`` baseline's pipeline) and picks ``share`` from 0, 1/4, ..., 1 by the
validation score that ranks grid points: 1 is the linear floor alone, 0 the network alone. Written here because
the blend is part of the model: it is saved with it and applies wherever the model predicts. Models saved without
it load with share 0.
"""

from __future__ import annotations

import torch
from torch import nn


class LinearFloor(nn.Module):
    def __init__(self, n_assays: int, in_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(n_assays, in_dim))
        self.register_buffer("bias", torch.zeros(n_assays))
        self.register_buffer("share", torch.zeros(()))
        self.register_buffer("network_sd", torch.ones(n_assays))
        self.register_buffer("floor_sd", torch.ones(n_assays))

    def logits(self, means: torch.Tensor) -> torch.Tensor:
        """The linear floor alone: (B, D) well means -> (B, T) logits, in float32."""
        return torch.addmm(self.bias, means.float(), self.weight.t())

    def blend_wells(self, network: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """The model's logits (B, T) from the network's (B, T) and the wells' means (B, D)."""
        if float(self.share) == 0.0:
            return network.float() / self.network_sd
        return (1 - self.share) * network.float() / self.network_sd + self.share * self.logits(means) / self.floor_sd

    def blend_pairs(self, network: torch.Tensor, means: torch.Tensor, assay: torch.Tensor) -> torch.Tensor:
        """The model's logits of (well, assay) pairs: ``network`` (P,), ``means`` (P, D), ``assay`` (P,)."""
        assay = assay.to(self.weight.device)
        network = network.float() / self.network_sd.index_select(0, assay)
        if float(self.share) == 0.0:
            return network
        floor = (means.float() * self.weight.index_select(0, assay)).sum(-1) + self.bias.index_select(0, assay)
        return (1 - self.share) * network + self.share * floor / self.floor_sd.index_select(0, assay)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("weight", "bias", "share", "network_sd", "floor_sd"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
