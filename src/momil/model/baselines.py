"""Baselines of the paper's Table 2 that share MoMIL's interface, training loop and evaluation.

* :class:`MeanMLP` ("FM -> Mean -> MLP", and "Acapella -> MLP" when the store holds per-cell features): the
  well's instances are averaged, then an MLP (D -> d -> h, ReLU, dropout) with one output per assay.
* :class:`MultiLabelMIL` ("FM -> Multi-label-MIL", Fredin Haslum et al.): a shared instance projector
  (D -> d), one gated-attention pooling shared by every assay, and a multi-label linear output.

Like :class:`momil.model.momil.MoMIL` they are evaluated on (well, assay) pairs, so unknown labels add nothing,
and give ``predict``, ``embed`` and ``attention``. The sanity baseline that reads only the number of instances per
well is :func:`momil.model.linear.instance_count_predictions` and the linear floor on well means is
:mod:`momil.model.linear` (logistic regressions, no network).
"""

from __future__ import annotations

import torch
from torch import nn

from momil.model.base import MILModel
from momil.model.ops import attention_pool, full, gated, masked_softmax, mean_weights


class PairModel(MILModel):
    """Shared plumbing: per-well logits (B, T) -> the asked pairs; BCE summed over pairs. With ``linear_floor``
    each assay's logit is blended with a logistic regression on the well mean (:mod:`momil.model.floor`)."""

    kind = "base"

    def __init__(
        self,
        in_dim: int,
        assays: list[str],
        projector_dim: int = 128,
        head_dim: int = 64,
        dropout: float = 0.5,
        linear_floor: bool = False,
        **_,
    ):
        hparams = {"projector_dim": projector_dim, "head_dim": head_dim, "dropout": dropout}
        super().__init__(in_dim, assays, hparams, linear_floor)

    def _sizes(self) -> tuple[int, int, int, float]:
        """(in_dim, projector_dim, head_dim, dropout): what a subclass builds its layers from."""
        hp = self.hparams
        return hp["in_dim"], hp["projector_dim"], hp["head_dim"], hp["dropout"]

    def well_outputs(self, bags: torch.Tensor, mask: torch.Tensor) -> dict:
        raise NotImplementedError

    def outputs(self, bags: torch.Tensor, mask: torch.Tensor) -> dict:
        """:meth:`well_outputs` with the logits blended with the linear floor."""
        out = self.well_outputs(bags, mask)
        if self.floor is not None:
            mean = attention_pool(mean_weights(mask, bags.dtype), bags)
            out["logits"] = self.floor.blend_wells(out["logits"], mean)
        return out

    def forward(self, bags, mask, pair_well, pair_assay) -> dict:
        out = self.outputs(bags, mask)
        logits = out["logits"]
        result = {"logit": logits[pair_well, pair_assay], "embedding": out["embedding"][pair_well]}
        if "attention" in out:
            result["attention"] = out["attention"][pair_well]
        return result

    def pair_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        logit = full(out["logit"])
        return nn.functional.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), reduction="none")

    def probability(self, out: dict) -> torch.Tensor:
        return torch.sigmoid(full(out["logit"]))

    @torch.no_grad()
    def predict(self, bags, mask, assays: list[int] | None = None, max_pairs: int = 4096) -> torch.Tensor:
        logits = full(self.outputs(bags, mask)["logits"])
        if assays is not None:
            logits = logits[:, list(assays)]
        return self.calibration(torch.sigmoid(logits), assays)

    @torch.no_grad()
    def embed(self, bags, mask, assay: int) -> torch.Tensor:
        """The well representation the output layer reads (shared by every assay in these baselines)."""
        return self.well_outputs(bags, mask)["embedding"]

    @torch.no_grad()
    def attention(self, bag: torch.Tensor, assay: int) -> torch.Tensor:
        mask = torch.ones(1, bag.shape[0], dtype=torch.bool, device=bag.device)
        out = self.well_outputs(bag.unsqueeze(0), mask)
        if "attention" in out:
            return out["attention"][0]
        return mask[0].float() / bag.shape[0]


class MeanMLP(PairModel):
    """The well mean, standardised with the training wells' feature means and standard deviations (set by
    :meth:`standardise_inputs` before training, as the ``mean-lr`` floor standardises its profiles), then the MLP.

    Its dropout is ``mlp_dropout`` (0 by default), not the MIL models' ``dropout``: there a mask falls on each of a
    well's instances and the pooled vector averages it out, here it falls on the one vector the well has. On the
    quality panel the MIL models' 0.5 put the MLP 0.04-0.05 below ``mean-lr`` in three regimes.

    With ``mean_stream`` (the default through ``TrainSettings.mean_stream``, as for MoMIL) a linear readout of the
    standardised mean, started at zero, is added to the MLP's logits, so the model starts as the MLP and can fall
    back to the linear floor's form. On the quality panel (16 regime x seed screens, ``momil cv --model mean-mlp
    --preset quick``) it moved the MLP from +0.015 to +0.023 over ``mean-lr`` on average and its lowest screen
    from -0.054 to -0.031 (mean-weak, seed 1)."""

    kind = "mean-mlp"

    def __init__(self, *args, mlp_dropout: float = 0.0, mean_stream: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        in_dim, projector_dim, head_dim, _ = self._sizes()
        dropout = self.hparams["mlp_dropout"] = mlp_dropout
        if mean_stream:  # absent otherwise, so models without it keep their hyperparameters and state
            self.hparams["mean_stream"] = True
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_scale", torch.ones(in_dim))
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, projector_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(projector_dim, head_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.out = nn.Linear(head_dim, len(self.assays))
        self.skip = None
        if mean_stream:  # MoMIL's mean stream: a linear readout of the standardised mean, started at zero
            self.skip = nn.Linear(in_dim, len(self.assays))
            nn.init.zeros_(self.skip.weight)
            nn.init.zeros_(self.skip.bias)

    @torch.no_grad()
    def standardise_inputs(self, means) -> None:
        """Set the input standardisation from the training wells' means (wells, D)."""
        means = torch.as_tensor(means, dtype=torch.float64)
        scale = means.std(dim=0, unbiased=False) if len(means) > 1 else torch.ones(means.shape[1])
        self.input_mean.copy_(means.mean(dim=0).float())
        self.input_scale.copy_(torch.where(scale > 1e-6, scale, torch.ones_like(scale)).float())

    def well_outputs(self, bags, mask) -> dict:
        mean = attention_pool(mean_weights(mask, bags.dtype), bags)  # (B, D)
        z = (mean - self.input_mean.to(mean.dtype)) / self.input_scale.to(mean.dtype)
        hidden = self.mlp(z)
        logits = self.out(hidden) if self.skip is None else self.out(hidden) + self.skip(z)
        return {"logits": logits, "embedding": hidden}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("input_mean", "input_scale"):  # models saved before the standardisation: none
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MultiLabelMIL(PairModel):
    kind = "multilabel-mil"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        in_dim, projector_dim, head_dim, dropout = self._sizes()
        self.projector = nn.Sequential(nn.Linear(in_dim, projector_dim), nn.ReLU(), nn.Dropout(dropout))
        self.v = nn.Linear(projector_dim, head_dim)
        self.u = nn.Linear(projector_dim, head_dim)
        self.w = nn.Linear(head_dim, 1)
        self.out = nn.Linear(projector_dim, len(self.assays))

    def well_outputs(self, bags, mask) -> dict:
        h = self.projector(bags)  # (B, N, d)
        scores = self.w(gated(self.v(h), self.u(h))).squeeze(-1)  # (B, N)
        attention = masked_softmax(scores, mask)
        pooled = attention_pool(attention, h)  # (B, d)
        return {"logits": self.out(pooled), "embedding": pooled, "attention": attention}


BASELINES = {"mean-mlp": MeanMLP, "multilabel-mil": MultiLabelMIL}
