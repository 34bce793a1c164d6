"""Attention-MIL heads for many assays at once, with stacked weights.

One head per assay t: F_gamma_t (projector, Linear + ReLU + dropout), F_beta_t (attention with a softmax over
the well's instances) and F_alpha_t (classifier). A call evaluates a list of (well, assay) *pairs*: the rows of
the instance tensor and the assay index of each pair, so the cost grows with the number of pairs asked for (the
labelled ones in training), not with wells x assays.

Storage: all weights of head t are one row of a single ``flat`` parameter of shape (T, K). The named weights
(``gamma_w``, ``q_w``, ...; shape (T, fan_in, fan_out) or (T, fan_out)) are views of ``flat``. Layers that read
the same input are stored side by side and applied as one matrix product: DSMIL's query and instance-classifier
weights (``qi_w`` = [q_w | inst_w]), ABMIL's tanh and sigmoid branches (``vu_w`` = [v_w | u_w]).

Evaluation is planned (:class:`PairPlan`): the pairs of one assay are put side by side and the assays with the
same number of pairs form a group, so each per-assay layer is one batched matrix product per group over the
rows of the heads in use, (heads, pairs x instances, in) @ (heads, in, out), and no weight is copied per pair.
The rest of a head (attention, pooling) runs on all pairs at once. An optimizer can update just the rows used
in a step (see ``momil.train.LazyHeadAdamW`` and :meth:`StackedHeads.forward_planned`'s ``table``).

Shapes: ``x`` (P, N, d) instances of each pair's well (padded), ``mask`` (P, N) True for real instances,
``assay`` (P,) long. Outputs hold per pair a logit (P,), attention (P, N) and extra logits where the head has
them (DSMIL's max-instance stream).

* :class:`GatedAttentionHeads` (ABMIL, Ilse et al. 2018): a = softmax(w^T (tanh(V h) * sigmoid(U h))),
  z = sum a h, logit = c^T z.
* :class:`DSMILHeads` (Li et al. 2021): instance classifier scores every instance; the critical instance is the
  top-scoring one; attention is the softmax of query similarity to the critical instance; the bag classifier
  reads the attention-pooled representation. Probability = mean of the two streams' sigmoids; loss = mean of
  the two streams' BCE (as in DSMIL).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from momil.model.ops import (  # noqa: F401 (moved there; re-exported)
    PairPlan,
    attention_pool,
    full,
    gated,
    gather_rows,
    masked_softmax,
    mean_weights,
)


class StackedHeads(nn.Module):
    """T heads whose weights are the rows of ``flat`` (T, K); see the module's docstring."""

    kind = "base"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5, mean_dim: int = 0):
        super().__init__()
        self.n_assays, self.in_dim, self.hidden = n_assays, in_dim, hidden
        self.mean_dim = mean_dim
        self.dropout = nn.Dropout(dropout)

    def _build(self, parts: list[tuple[str, tuple[int, ...], int]], aliases: dict[str, tuple[str, int, int]]) -> None:
        """``parts``: (name, per-head shape, fan_in) stored in this order in a row of ``flat``, each initialised
        as nn.Linear initialises a layer with that fan_in; ``aliases``: name -> (part, start, stop) along the
        part's last axis (the separate layers a merged part holds, and the names earlier versions saved)."""
        if self.mean_dim:  # the mean stream: a linear readout of the well's mean feature vector, started at zero
            parts = parts + [("m_w", (self.mean_dim, 1), self.mean_dim), ("m_b", (1,), self.mean_dim)]
        layout, offset = {}, 0
        for name, shape, _fan_in in parts:
            size = math.prod(shape)
            layout[name] = (offset, offset + size, shape)
            offset += size
        self._layout, self._aliases, self._parts = layout, aliases, parts
        self.flat = nn.Parameter(torch.empty(self.n_assays, offset))
        with torch.no_grad():
            for name, _shape, fan_in in parts:
                bound = 1.0 / math.sqrt(fan_in)
                start, stop, _ = layout[name]
                self.flat[:, start:stop].uniform_(-bound, bound)
                if name in ("m_w", "m_b"):
                    self.flat[:, start:stop].zero_()

    def weights(self, table: torch.Tensor, name: str) -> torch.Tensor:
        """The view of one named weight in ``table`` (rows of ``flat``-shaped data): (rows, *shape)."""

        def part(stored: str) -> torch.Tensor:
            start, stop, shape = self._layout[stored]
            return table[:, start:stop].view((table.shape[0],) + tuple(shape))

        return self._named(name, part)

    def _named(self, name: str, part) -> torch.Tensor:
        """A stored part (``part(name)``) or an alias's slice of one along the last axis."""
        if name in self._layout:
            return part(name)
        stored, start, stop = self._aliases[name]
        return part(stored)[..., start:stop]

    def __getattr__(self, name: str):
        if name in self.__dict__.get("_layout", ()) or name in self.__dict__.get("_aliases", ()):
            return self.weights(self.flat, name)
        return super().__getattr__(name)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        assay: torch.Tensor,
        means: torch.Tensor | None = None,
        score_bias: torch.Tensor | None = None,
    ) -> dict:
        """Outputs for pairs in the caller's order: ``x`` (P, N, d), ``mask`` (P, N), ``assay`` (P,); ``means``
        (P, mean_dim): each pair's well mean, read by the mean stream (heads built with ``mean_dim``);
        ``score_bias`` (P, N): attention scores added to each head's own before the softmax (a shared attention)."""
        plan = PairPlan.build(assay, x.device)
        means = None if means is None else plan.permute(means)
        bias = None if score_bias is None else plan.permute(score_bias)
        return plan.unpermute(self.forward_planned(plan.permute(x), plan.permute(mask), plan, None, means, bias))

    def forward_planned(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        plan: PairPlan,
        table: torch.Tensor | None = None,
        means: torch.Tensor | None = None,
        score_bias: torch.Tensor | None = None,
    ) -> dict:
        """Outputs in ``plan``'s order for ``x``, ``mask``, ``means`` and ``score_bias`` given in that order.
        ``table``: the rows of ``flat`` for ``plan.assays``, in that order (a training step's copy of the rows it
        updates); by default they are gathered from ``flat``. ``score_bias`` (P, N): added to the head's attention
        scores before the softmax (heads with attention scores only)."""
        raise NotImplementedError

    def planned_weights(self, plan: PairPlan, table: torch.Tensor | None = None) -> list:
        """Per group of ``plan``, a function name -> (heads of the group, *shape) view of their weights: the
        rows of the heads in use split by group, then by part (``torch.split``: its backward writes the parts'
        gradients into one buffer, where slicing would add a zero-filled table-sized gradient per part)."""
        rows = gather_rows(self.flat, plan.assays) if table is None else table
        widths = [stop - start for start, stop, _shape in self._layout.values()]
        out = []
        for block, (heads, _pairs) in zip(rows.split([h for h, _ in plan.groups]), plan.groups):
            parts = {
                name: part.view((heads,) + tuple(shape))
                for (name, (_s, _e, shape)), part in zip(self._layout.items(), block.split(widths, dim=1))
            }
            out.append(lambda name, parts=parts: self._named(name, parts.__getitem__))
        return out

    @staticmethod
    def _per_group(x: torch.Tensor, plan: PairPlan, fn) -> torch.Tensor:
        """``fn(g, part)`` on each group's slice of ``x`` (planned order), concatenated back."""
        outs = [fn(g, part) for g, part in enumerate(x.split(plan.sizes))]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def linear(self, x: torch.Tensor, plan: PairPlan, ws: list, weight: str, bias: str) -> torch.Tensor:
        """A per-assay linear layer on each pair's instances: x (P, N, in) -> (P, N, out), one batched matrix
        product per group: (heads, pairs x N, in) @ (heads, in, out)."""
        n = x.shape[1]

        def one(g: int, part: torch.Tensor) -> torch.Tensor:
            heads, pairs = plan.groups[g]
            w, b = ws[g](weight), ws[g](bias)
            out = torch.baddbmm(b.unsqueeze(1), part.reshape(heads, pairs * n, part.shape[-1]), w)
            return out.view(heads * pairs, n, w.shape[-1])

        return self._per_group(x, plan, one)

    def project(self, x: torch.Tensor, plan: PairPlan, ws: list) -> torch.Tensor:
        return self.dropout(torch.relu(self.linear(x, plan, ws, "gamma_w", "gamma_b")))  # (P, N, h)

    def classify(self, pooled: torch.Tensor, plan: PairPlan, ws: list) -> torch.Tensor:
        """F_alpha on the pooled representation (P, h) -> logits (P,)."""

        def one(g: int, part: torch.Tensor) -> torch.Tensor:
            heads, pairs = plan.groups[g]
            w, b = ws[g]("c_w"), ws[g]("c_b")  # (heads, h, 1), (heads, 1)
            return torch.baddbmm(b.unsqueeze(1), part.reshape(heads, pairs, part.shape[-1]), w).reshape(-1)

        return self._per_group(pooled, plan, one)

    def bag_logit(self, pooled: torch.Tensor, plan: PairPlan, ws: list, means: torch.Tensor | None) -> torch.Tensor:
        """F_alpha's logit plus, in heads with a mean stream, the linear readout of each pair's well mean
        (P, mean_dim): m_t . mean + b_t. The stream starts at zero, so training starts at the attention model;
        it holds the linear model on well means that a per-assay head otherwise has to rebuild through its
        projector and attention from 20-500 labels (see the README's quality panel)."""
        logit = self.classify(pooled, plan, ws)
        if not self.mean_dim:
            return logit
        if means is None:
            raise ValueError(
                "heads with a linear stream (a mean stream or a shared readout) need each pair's stream input (means)"
            )

        def one(g: int, part: torch.Tensor) -> torch.Tensor:
            heads, pairs = plan.groups[g]
            w, b = ws[g]("m_w"), ws[g]("m_b")  # (heads, D, 1), (heads, 1)
            return torch.baddbmm(b.unsqueeze(1), part.reshape(heads, pairs, part.shape[-1]), w).reshape(-1)

        return logit + self._per_group(means.to(pooled.dtype), plan, one)

    def probability(self, out: dict) -> torch.Tensor:
        return torch.sigmoid(full(out["logit"]))

    def loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        """Summed BCE over pairs (the caller normalises)."""
        return self.pair_loss(out, target).sum()

    def pair_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        """BCE of each pair: (P,)."""
        logit = full(out["logit"])
        return nn.functional.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), reduction="none")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Reads checkpoints of earlier versions, which saved each weight as its own (T, ...) parameter."""
        if prefix + "flat" not in state_dict and prefix + "gamma_w" in state_dict:
            rows = []
            for name, _shape, _fan_in in self._parts:
                pieces = [
                    state_dict.pop(prefix + alias) for alias, (part, _, _) in self._aliases.items() if part == name
                ] or [state_dict.pop(prefix + name)]
                merged = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]
                rows.append(merged.reshape(merged.shape[0], -1))
            state_dict[prefix + "flat"] = torch.cat(rows, dim=1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"assays={self.n_assays}, in={self.in_dim}, hidden={self.hidden}"


class GatedAttentionHeads(StackedHeads):
    kind = "abmil"

    def __init__(
        self,
        n_assays: int,
        in_dim: int,
        hidden: int,
        dropout: float = 0.5,
        mean_dim: int = 0,
        attention_dim: int | None = None,
    ):
        super().__init__(n_assays, in_dim, hidden, dropout, mean_dim)
        a = self.attention_dim = attention_dim or hidden
        self._build(
            [
                ("gamma_w", (in_dim, hidden), in_dim),
                ("gamma_b", (hidden,), in_dim),  # F_gamma
                ("vu_w", (hidden, 2 * a), hidden),
                ("vu_b", (2 * a,), hidden),  # F_beta: tanh | sigmoid
                ("w_w", (a, 1), a),
                ("w_b", (1,), a),  # F_beta: score
                ("c_w", (hidden, 1), hidden),
                ("c_b", (1,), hidden),
            ],  # F_alpha: classifier
            {"v_w": ("vu_w", 0, a), "u_w": ("vu_w", a, 2 * a), "v_b": ("vu_b", 0, a), "u_b": ("vu_b", a, 2 * a)},
        )

    def forward_planned(self, x, mask, plan: PairPlan, table=None, means=None, score_bias=None) -> dict:
        ws = self.planned_weights(plan, table)
        h = self.project(x, plan, ws)  # (P, N, h)
        a = self.attention_dim
        vu = self.linear(h, plan, ws, "vu_w", "vu_b")
        gate = gated(vu[..., :a], vu[..., a:])
        scores = self.linear(gate, plan, ws, "w_w", "w_b").squeeze(-1)  # (P, N)
        if score_bias is not None:
            scores = scores + score_bias.to(scores.dtype)
        attention = masked_softmax(scores, mask)
        pooled = attention_pool(attention, h)  # (P, h)
        return {"logit": self.bag_logit(pooled, plan, ws, means), "attention": attention, "embedding": pooled}


class DSMILHeads(StackedHeads):
    kind = "dsmil"

    def __init__(
        self,
        n_assays: int,
        in_dim: int,
        hidden: int,
        dropout: float = 0.5,
        mean_dim: int = 0,
        query_dim: int | None = None,
    ):
        super().__init__(n_assays, in_dim, hidden, dropout, mean_dim)
        q = self.query_dim = query_dim or hidden
        self._build(
            [
                ("gamma_w", (in_dim, hidden), in_dim),
                ("gamma_b", (hidden,), in_dim),  # F_gamma
                ("qi_w", (hidden, q + 1), hidden),
                ("qi_b", (q + 1,), hidden),  # queries (F_beta) | instance cls
                ("c_w", (hidden, 1), hidden),
                ("c_b", (1,), hidden),
            ],  # bag classifier (F_alpha)
            {"q_w": ("qi_w", 0, q), "inst_w": ("qi_w", q, q + 1), "q_b": ("qi_b", 0, q), "inst_b": ("qi_b", q, q + 1)},
        )

    def forward_planned(self, x, mask, plan: PairPlan, table=None, means=None, score_bias=None) -> dict:
        ws = self.planned_weights(plan, table)
        h = self.project(x, plan, ws)  # (P, N, h)
        q = self.query_dim
        qi = self.linear(h, plan, ws, "qi_w", "qi_b")  # (P, N, q + 1)
        instance = qi[..., q].masked_fill(~mask, float("-inf"))  # instance classifier, (P, N)
        critical = instance.argmax(dim=1)  # (P,)
        rows = torch.arange(len(critical), device=x.device)
        max_logit = instance[rows, critical]
        queries = torch.tanh(qi[..., :q])  # (P, N, q)
        q_critical = queries[rows, critical]  # (P, q)
        scores = (queries * (q_critical / math.sqrt(q)).unsqueeze(1)).sum(-1)
        if score_bias is not None:
            scores = scores + score_bias.to(scores.dtype)
        attention = masked_softmax(scores, mask)
        pooled = attention_pool(attention, h)  # (P, h)
        return {
            "logit": self.bag_logit(pooled, plan, ws, means),
            "max_logit": max_logit,
            "attention": attention,
            "embedding": pooled,
            "critical": critical,
        }

    def probability(self, out: dict) -> torch.Tensor:
        return 0.5 * (torch.sigmoid(full(out["logit"])) + torch.sigmoid(full(out["max_logit"])))

    def pair_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits
        target = target.to(full(out["logit"]).dtype)
        return 0.5 * (
            bce(full(out["logit"]), target, reduction="none") + bce(full(out["max_logit"]), target, reduction="none")
        )


class MeanPoolHeads(StackedHeads):
    """Mean pooling instead of attention (uniform weights): the "mean per well -> MLP" comparison."""

    kind = "mean"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5, mean_dim: int = 0):
        super().__init__(n_assays, in_dim, hidden, dropout, mean_dim)
        self._build(
            [
                ("gamma_w", (in_dim, hidden), in_dim),
                ("gamma_b", (hidden,), in_dim),
                ("c_w", (hidden, 1), hidden),
                ("c_b", (1,), hidden),
            ],
            {},
        )

    def forward_planned(self, x, mask, plan: PairPlan, table=None, means=None, score_bias=None) -> dict:
        ws = self.planned_weights(plan, table)
        h = self.project(x, plan, ws)
        # with a shared attention (score_bias) its softmax pools; these heads add no scores of their own
        weights = mean_weights(mask, h.dtype) if score_bias is None else masked_softmax(score_bias.to(h.dtype), mask)
        pooled = attention_pool(weights, h)
        return {"logit": self.bag_logit(pooled, plan, ws, means), "attention": weights, "embedding": pooled}


HEADS = {"abmil": GatedAttentionHeads, "dsmil": DSMILHeads, "mean": MeanPoolHeads}
