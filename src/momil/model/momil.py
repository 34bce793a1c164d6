"""MoMIL: a shared projector F_phi under one attention-MIL head per assay (paper section 2.1)."""

from __future__ import annotations

import torch
from torch import nn

from momil.errors import MomilError
from momil.model.base import MILModel
from momil.model.heads import HEADS
from momil.model.ops import PairPlan, attention_pool, gated, gather_rows, masked_softmax, mean_weights


class MoMIL(MILModel):
    """``F_phi`` (Linear D -> d, ReLU, dropout; identity when ``shared_projector`` is False, as in the
    single-assay models of assay selection) followed by stacked heads, one per assay in ``assays``.

    With ``mean_stream`` each head adds a linear readout of the well's mean instance to its logit (started at
    zero; see :meth:`momil.model.heads.StackedHeads.bag_logit`): the model then holds the linear model on well
    means, which a per-assay head otherwise rebuilds through its projector and attention. Off in the paper's
    form (``--preset paper``).

    With ``shared_attention`` one gated attention (Ilse et al.'s, as in the multi-label MIL baseline) scores each
    instance of ``F_phi``'s output for every assay, and each head adds its own scores to it before the softmax;
    ABMIL heads' own scoring layers start at zero, so training starts at one attention shared by all assays and
    each head moves away from it only as far as its labels (and weight decay) allow; DSMIL heads add their query
    similarities, and mean-pooling heads, having no scores, pool with the shared attention alone. It learns from every
    assay's labels where a per-assay attention learns from 20-500 (see the README's quality panel). Off in the
    paper's form (``--preset paper``).

    With ``shared_readout`` the model also holds the multi-label MIL baseline's form: one gated attention (the
    shared attention's, when both are on) pools ``F_phi``'s output into one vector per well, and each head adds a
    linear readout of that vector to its logit (started at zero, like the mean stream, whose part of the head's
    table it extends). A head then reads every assay's pooled representation through as many weights as
    multi-label MIL's output layer gives it, beside its own projection, attention and classifier.

    With ``linear_floor`` each assay's logit is blended with a logistic regression on the well mean
    (:mod:`momil.model.floor`; share 0 while training, set after it by :func:`momil.training.floor.blend_floor`)."""

    kind = "momil"

    def __init__(
        self,
        in_dim: int,
        assays: list[str],
        head: str = "dsmil",
        projector_dim: int = 128,
        head_dim: int = 64,
        dropout: float = 0.5,
        shared_projector: bool = True,
        mean_stream: bool = False,
        linear_floor: bool = False,
        shared_attention: bool = False,
        shared_readout: bool = False,
    ):
        if head not in HEADS:
            raise MomilError(f"head must be one of {sorted(HEADS)}, not {head!r}")
        if (shared_attention or shared_readout) and not shared_projector:
            raise MomilError(
                "a shared attention and a shared readout read the shared projector's output: they need shared_projector"
            )
        hparams = {
            "head": head,
            "projector_dim": projector_dim,
            "head_dim": head_dim,
            "dropout": dropout,
            "shared_projector": shared_projector,
            "mean_stream": mean_stream,
            "shared_attention": shared_attention,
        }
        if shared_readout:  # added later: models without it keep the hyperparameters they were saved with
            hparams["shared_readout"] = True
        super().__init__(in_dim, assays, hparams, linear_floor)
        if shared_projector:
            self.projector = nn.Sequential(nn.Linear(in_dim, projector_dim), nn.ReLU(), nn.Dropout(dropout))
            head_in = projector_dim
        else:
            self.projector = nn.Identity()
            head_in = in_dim
        stream_dim = (in_dim if mean_stream else 0) + (projector_dim if shared_readout else 0)
        self.heads = HEADS[head](len(self.assays), head_in, head_dim, dropout, stream_dim)
        self.mean_stream = mean_stream
        self.shared_attention, self.shared_readout = shared_attention, shared_readout
        self.shared = None
        if shared_attention or shared_readout:
            a = head_dim
            self.shared = nn.ModuleDict(
                {"v": nn.Linear(projector_dim, a), "u": nn.Linear(projector_dim, a), "w": nn.Linear(a, 1)}
            )
        if shared_attention:
            own = [name for name in ("w_w", "w_b") if name in self.heads._layout]
            with torch.no_grad():  # the heads' own scores start at zero: one attention for all assays at first
                for name in own:
                    start, stop, _ = self.heads._layout[name]
                    self.heads.flat[:, start:stop].zero_()

    def shared_scores(self, encoded: torch.Tensor) -> torch.Tensor | None:
        """The shared attention's score of every instance (B, N) from ``F_phi``'s output (B, N, d); None
        without a shared attention or readout."""
        if self.shared is None:
            return None
        return self.shared["w"](gated(self.shared["v"](encoded), self.shared["u"](encoded))).squeeze(-1)

    def streams(
        self, encoded: torch.Tensor, mask: torch.Tensor, means: torch.Tensor | None, scores: torch.Tensor | None
    ) -> torch.Tensor | None:
        """What the heads' linear streams read per well (B, stream_dim): the well mean (mean stream) and the
        shared attention's pooled ``F_phi`` output (shared readout), side by side; None without either."""
        parts = []
        if self.mean_stream:
            if means is None:
                raise ValueError("a model with a mean stream needs each well's mean feature vector (means)")
            parts.append(means.to(encoded.dtype))
        if self.shared_readout:
            parts.append(attention_pool(masked_softmax(scores, mask), encoded).to(encoded.dtype))
        return torch.cat(parts, dim=-1) if parts else None

    def encode(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """F_phi on the real instances only: bags (B, N, D), mask (B, N) -> (B, N, d), zeros at padding."""
        if bool(mask.all()):
            return self.projector(bags)
        real = self.projector(bags[mask])  # (instances, d)
        out = real.new_zeros(bags.shape[0], bags.shape[1], real.shape[-1])
        out[mask] = real
        return out

    def forward(
        self, bags: torch.Tensor, mask: torch.Tensor, pair_well: torch.Tensor, pair_assay: torch.Tensor
    ) -> dict:
        """Logits for (well, assay) pairs: ``pair_well`` indexes rows of ``bags``, ``pair_assay`` heads."""
        plan = PairPlan.build(pair_assay, bags.device)
        return plan.unpermute(self.forward_planned(bags, mask, plan.permute(pair_well), plan))

    def forward_planned(
        self,
        bags: torch.Tensor,
        mask: torch.Tensor,
        pair_well: torch.Tensor,
        plan: PairPlan,
        table: torch.Tensor | None = None,
    ) -> dict:
        """Outputs in ``plan``'s order; ``pair_well`` is given in that order (see ``StackedHeads.forward_planned``
        for ``table``)."""
        encoded = self.encode(bags, mask)
        pair_mask = mask.index_select(0, pair_well)
        means = self.well_means(bags, mask)
        scores = self.shared_scores(encoded)
        streams = self.streams(encoded, mask, means, scores)
        means = None if means is None else means.index_select(0, pair_well)
        bias = scores if self.shared_attention else None
        out = self.heads.forward_planned(
            gather_rows(encoded, pair_well),
            pair_mask,
            plan,
            table,
            None if streams is None else streams.index_select(0, pair_well),
            None if bias is None else bias.index_select(0, pair_well),
        )
        return self._add_floor(out, means, plan.assays.index_select(0, plan.pair_head))

    def well_means(self, bags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """Each well's mean instance (B, D), read by the mean stream and the linear floor; None without either."""
        if not self.mean_stream and self.floor is None:
            return None
        return attention_pool(mean_weights(mask, bags.dtype), bags)

    def _add_floor(self, out: dict, means: torch.Tensor | None, assay: torch.Tensor) -> dict:
        """``out`` with each pair's logits blended with its linear floor (``means`` (P, D), ``assay`` (P,))."""
        if self.floor is None:
            return out
        for key in ("logit", "max_logit"):  # DSMIL's instance stream is a second logit of the same pair
            if key in out:
                out[key] = self.floor.blend_pairs(out[key], means, assay)
        return out

    def pair_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        return self.heads.pair_loss(out, target)

    def probability(self, out: dict) -> torch.Tensor:
        return self.heads.probability(out)

    def head_table(self) -> dict[str, nn.Parameter]:
        return dict(self.heads.named_parameters())

    @torch.no_grad()
    def predict(
        self, bags: torch.Tensor, mask: torch.Tensor, assays: list[int] | None = None, max_pairs: int = 4096
    ) -> torch.Tensor:
        """Probabilities (B, len(assays)) for every well and the given assay indices (all by default)."""
        assays = list(range(len(self.assays))) if assays is None else list(assays)
        encoded = self.encode(bags, mask)
        means = self.well_means(bags, mask)
        scores = self.shared_scores(encoded)
        streams = self.streams(encoded, mask, means, scores)
        bias = scores if self.shared_attention else None
        b = bags.shape[0]
        wells = torch.arange(b, device=bags.device).repeat_interleave(len(assays))
        heads = torch.tensor(assays, device=bags.device).repeat(b)
        probs = []
        for start in range(0, len(wells), max_pairs):
            w, t = wells[start : start + max_pairs], heads[start : start + max_pairs]
            pair_means = None if means is None else means[w]
            out = self.heads(
                encoded[w], mask[w], t, None if streams is None else streams[w], None if bias is None else bias[w]
            )
            out = self._add_floor(out, pair_means, t)
            probs.append(self.heads.probability(out))
        return self.calibration(torch.cat(probs).reshape(b, len(assays)), assays)

    @torch.no_grad()
    def attention(self, bag: torch.Tensor, assay: int) -> torch.Tensor:
        """Attention weights of one well (N, D) for one assay index: (N,), summing to 1."""
        mask = torch.ones(1, bag.shape[0], dtype=torch.bool, device=bag.device)
        out = self.forward(
            bag.unsqueeze(0),
            mask,
            torch.zeros(1, dtype=torch.long, device=bag.device),
            torch.tensor([assay], device=bag.device),
        )
        return out["attention"][0]

    @torch.no_grad()
    def embed(self, bags: torch.Tensor, mask: torch.Tensor, assay: int) -> torch.Tensor:
        """Attention-pooled well representations from one assay's head: (B, head_dim)."""
        b = bags.shape[0]
        out = self.forward(
            bags,
            mask,
            torch.arange(b, device=bags.device),
            torch.full((b,), assay, dtype=torch.long, device=bags.device),
        )
        return out["embedding"]
