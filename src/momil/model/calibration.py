"""Output calibration: per-assay standardisation of a model's logits on validation wells, then one shared
logistic slope to probabilities around each assay's base rate.

Why: a compound-level AUC pooled over fold rotations ranks the predictions of five models, one per rotation, on
one scale. Networks trained to the end of their schedule differ from rotation to rotation in the scale and
location of each head's logits, and that mixes the pooled ranking even when each model ranks its own test
compounds well (on the quality panel's mean-strong regime: pooled 0.712, per rotation 0.747). Calibrating each
model on its own validation fold puts them on one scale without touching a model's ranking within an assay:

    z_t = (logit_t - shift_t) / scale_t      shift_t, scale_t: mean and sd of assay t's logits over the
                                             validation wells (every well with a label in any of the model's
                                             assays counts for every assay: its own labels are not needed)
    p_t = sigmoid(slope * z_t + level_t)     level_t: the log-odds of assay t's active rate over the whole label
                                             matrix, one constant in every rotation; slope (> 0): the most likely
                                             one for the labelled validation pairs, with the training and
                                             validation labels' rates as each assay's offset (the test fold's
                                             labels have no say)

(``momil train`` / ``cv`` fold level_t into the shift and keep ``bias`` 0; an explicit shared bias fitted on the
validation pairs is what :func:`momil.training.calibration.calibrate` does without levels.) Why a constant level:
any level estimated without the test fold (its training rate, the validation fold's rate) differs between rotations
by more than a weak model's spread, and the training rate runs against the test fold's own rate, so the pooled
ranking follows the fold a compound sits in (quality panel, all 5 rotations, MoMIL pooled AUC with the validation
fold's shared bias / the training rate / the constant level: mean-weak 0.507 / 0.454 / 0.548, few-cells 0.587 /
0.491 / 0.608). A per-assay constant does not change a per-assay AUC, pooled or not.

Both maps are increasing, so per-rotation AUCs are unchanged. Written here because no library calibrates many
heads from their unlabelled validation outputs; scikit-learn fits the shared logistic map. Identity until
:func:`momil.training.calibration.calibrate` sets it; models saved without it load with the identity.
"""

from __future__ import annotations

import torch
from torch import nn


class OutputCalibration(nn.Module):
    def __init__(self, n_assays: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(n_assays))
        self.register_buffer("scale", torch.ones(n_assays))
        self.register_buffer("slope_bias", torch.tensor([1.0, 0.0]))

    @property
    def identity(self) -> bool:
        return bool((self.shift == 0).all() and (self.scale == 1).all() and self.slope_bias.tolist() == [1.0, 0.0])

    def forward(self, probability: torch.Tensor, assays=None) -> torch.Tensor:
        """Calibrated ``probability`` (B, len(assays)) of the assay indices ``assays`` (all by default)."""
        if self.identity:
            return probability
        index = slice(None) if assays is None else torch.as_tensor(list(assays), device=probability.device)
        return self._map(probability, self.shift[index], self.scale[index])

    def pairs(self, probability: torch.Tensor, assay: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of (well, assay) pairs: ``probability`` and ``assay`` (P,)."""
        if self.identity:
            return probability
        assay = assay.to(self.shift.device)
        return self._map(probability, self.shift[assay], self.scale[assay])

    def _map(self, probability: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        p = probability.double().clamp(1e-12, 1 - 1e-12)
        z = (torch.log(p) - torch.log1p(-p) - shift.double().to(p.device)) / scale.double().to(p.device)
        slope, bias = self.slope_bias.double().tolist()
        return torch.sigmoid(slope * z + bias).to(probability.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Models saved before calibration existed have none of its buffers: they load with the identity."""
        for name, value in (("shift", self.shift), ("scale", self.scale), ("slope_bias", self.slope_bias)):
            state_dict.setdefault(prefix + name, value.clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
