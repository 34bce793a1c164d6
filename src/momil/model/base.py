"""The contract every network model of momil implements: MoMIL and the baselines of Table 2.

A model is evaluated on (well, assay) pairs, so the ~96 % unknown labels of the matrix add nothing to its loss:

* ``forward(bags, mask, pair_well, pair_assay)`` -> a dict with each pair's ``"logit"`` and ``"embedding"``
  (and ``"attention"`` where the model pools by attention); ``pair_loss`` / ``loss`` / ``probability`` read it;
* ``predict(bags, mask, assays)`` -> calibrated probabilities (B, len(assays)); ``embed(bags, mask, assay)`` ->
  the pooled well representation the assay's output reads; ``attention(bag, assay)`` -> (N,) weights;
* ``head_table()`` -> the stacked per-assay head parameters a lazy optimiser may step row by row
  (:class:`momil.training.optim.LazyHeadAdamW`), or None when the model has no per-assay heads;
* ``assays``, ``hparams`` (what :func:`momil.model.registry.model_from_hparams` rebuilds it from), ``floor``
  (:class:`momil.model.floor.LinearFloor` or None) and ``calibration`` (:class:`momil.model.calibration.
  OutputCalibration`).
"""

from __future__ import annotations

import torch
from torch import nn

from momil.errors import MomilError
from momil.model.calibration import OutputCalibration
from momil.model.floor import LinearFloor


class MILModel(nn.Module):
    """The shared part of every model: its assays, hyperparameters, linear floor and output calibration."""

    kind = "base"

    def __init__(self, in_dim: int, assays: list[str], hparams: dict, linear_floor: bool = False):
        super().__init__()
        if not assays:
            raise MomilError("a model needs at least one assay")
        self.assays = list(assays)
        self.hparams = {"model": self.kind, "in_dim": in_dim, "assays": self.assays, **hparams}
        if linear_floor:  # absent otherwise, so models without it keep their hyperparameters and state
            self.hparams["linear_floor"] = True
        self.floor = LinearFloor(len(self.assays), in_dim) if linear_floor else None
        self.calibration = OutputCalibration(len(self.assays))

    def forward(self, bags: torch.Tensor, mask: torch.Tensor, pair_well: torch.Tensor, pair_assay: torch.Tensor):
        raise NotImplementedError

    def pair_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        """BCE of each pair in ``out`` (P,)."""
        raise NotImplementedError

    def loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        """Summed BCE over the pairs in ``out`` (unknown labels are never pairs, so they add nothing)."""
        return self.pair_loss(out, target).sum()

    def probability(self, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, bags, mask, assays: list[int] | None = None, max_pairs: int = 4096) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, bags: torch.Tensor, mask: torch.Tensor, assay: int) -> torch.Tensor:
        raise NotImplementedError

    def attention(self, bag: torch.Tensor, assay: int) -> torch.Tensor:
        raise NotImplementedError

    def head_table(self) -> dict[str, nn.Parameter] | None:
        """The stacked per-assay head parameters (row t: assay t), or None: the model has no per-assay heads."""
        return None
