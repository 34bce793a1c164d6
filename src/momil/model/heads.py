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

import dataclasses
import math

import numpy as np
import torch
from torch import nn


class _Gather(torch.autograd.Function):
    """Rows of a 2-D table: index_select forward (on CPU about 4x faster than the embedding's own forward for wide
    rows), the embedding's backward (a sum over sorted indices: about 3x faster than index_select's index_add
    and deterministic on CUDA)."""

    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _rows_backward(grad.contiguous(), index, ctx.n_rows), None


def _rows_backward(grad: torch.Tensor, index: torch.Tensor, n_rows: int) -> torch.Tensor:
    """The gradient of gathered rows summed back into a table of ``n_rows`` rows (the embedding's backward)."""
    return torch.ops.aten.embedding_dense_backward(grad, index, n_rows, -1, False)


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` along dim 0 for a table of any shape (see :class:`_Gather`)."""
    flat = _Gather.apply(table.reshape(table.shape[0], -1), index)
    return flat.view((index.shape[0],) + tuple(table.shape[1:]))


class _Blocks(torch.autograd.Function):
    """Blocks of a (R, K) table (rows ``index`` of it, gathered once, when an index is given) returned as views
    shaped per block: ``layout`` lists (row_start, row_stop, col_start, col_stop, shape) tiling the table. The
    backward writes the blocks' gradients into one (R, K) buffer (slicing under autograd would instead add a
    zero-filled table-sized gradient per block) and, with an index, sums it into the table's rows once."""

    @staticmethod
    def forward(ctx, table, index, layout):
        rows = table if index is None else table.index_select(0, index)
        ctx.has_index, ctx.layout, ctx.n_rows = index is not None, layout, table.shape[0]
        ctx.shape = rows.shape
        if index is not None:
            ctx.save_for_backward(index)
            ctx.mark_non_differentiable(index)
        return tuple(rows[r0:r1, c0:c1].view(shape) for r0, r1, c0, c1, shape in layout)

    @staticmethod
    def backward(ctx, *grads):
        reference = next(g for g in grads if g is not None)
        buffer = reference.new_empty(ctx.shape)
        for (r0, r1, c0, c1, _shape), grad in zip(ctx.layout, grads):
            if grad is None:
                buffer[r0:r1, c0:c1].zero_()
            else:
                buffer[r0:r1, c0:c1].copy_(grad.reshape(r1 - r0, c1 - c0))
        if not ctx.has_index:
            return buffer, None, None
        (index,) = ctx.saved_tensors
        return _rows_backward(buffer, index, ctx.n_rows), None, None


@dataclasses.dataclass(frozen=True)
class PairPlan:
    """How a list of (well, assay) pairs is evaluated: the pairs of each assay side by side, the assays with the
    same number of pairs in one group (fewest pairs first), so that a per-assay layer is one batched matrix
    product per group. Built on the host from the pairs' assay indices (a few microseconds per hundred pairs).

    ``order`` (P,): the pairs in planned order (positions in the caller's list); ``inverse`` (P,): the planned
    position of each of the caller's pairs; ``assays`` (U,): the table row of each head in use, group by group;
    ``pair_head`` (P,): the head (0..U-1) of each planned pair; ``groups``: (heads, pairs per head) per group.
    """

    order: torch.Tensor
    inverse: torch.Tensor
    assays: torch.Tensor
    pair_head: torch.Tensor
    groups: tuple[tuple[int, int], ...]
    in_order: bool

    @classmethod
    def build(cls, assay, device=None) -> PairPlan:
        values = assay.detach().cpu().numpy() if isinstance(assay, torch.Tensor) else np.asarray(assay)
        if device is None:
            device = assay.device if isinstance(assay, torch.Tensor) else torch.device("cpu")
        values = values.astype(np.int64, copy=False).reshape(-1)
        unique, pair_unique, counts = np.unique(values, return_inverse=True, return_counts=True)
        by_count = np.lexsort((unique, counts))  # heads ordered by (pairs, assay)
        rank = np.empty(len(unique), dtype=np.int64)
        rank[by_count] = np.arange(len(unique))
        pair_rank = rank[pair_unique.reshape(-1)]
        order = np.argsort(pair_rank, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        sorted_counts = counts[by_count]
        sizes, firsts = np.unique(sorted_counts, return_index=True)
        heads = np.diff(np.append(firsts, len(sorted_counts)))
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        return cls(
            as_tensor(order),
            as_tensor(inverse),
            as_tensor(unique[by_count]),
            as_tensor(pair_rank[order]),
            tuple((int(n), int(c)) for n, c in zip(heads, sizes)),
            bool((order == np.arange(len(order))).all()),
        )

    @property
    def sizes(self) -> list[int]:
        """Pairs per group."""
        return [n * c for n, c in self.groups]

    @property
    def spans(self) -> list[tuple[int, int, int, int, int, int]]:
        """Per group: (first head, end head, first pair, end pair, heads, pairs per head)."""
        out, row, pair = [], 0, 0
        for heads, pairs in self.groups:
            out.append((row, row + heads, pair, pair + heads * pairs, heads, pairs))
            row, pair = row + heads, pair + heads * pairs
        return out

    def permute(self, t: torch.Tensor) -> torch.Tensor:
        """A per-pair tensor of the caller's order in planned order."""
        return t if self.in_order else t.index_select(0, self.order)

    def unpermute(self, out: dict) -> dict:
        """Planned-order outputs back in the caller's order."""
        if self.in_order:
            return out
        return {k: v.index_select(0, self.inverse) for k, v in out.items()}


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1 (absolute error below 1e-6): on CPU torch's tanh is about 6x slower than its
    sigmoid, and tanh is a tenth of a head's training step."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    return _SigmoidTanh.apply(x) if x.device.type == "cpu" else torch.tanh(x)


class FastDropout(nn.Module):
    """Inverted dropout drawing its random bytes eight at a time (the drop probability is rounded to 1/256).

    On CPU it is about 25x faster than ``nn.Dropout``'s Bernoulli sampling, which otherwise takes a quarter of
    a training step. It draws from torch's global generator, so seeds and checkpoints govern it as usual."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), not {p}")
        self.p = p
        self.threshold = int(round(p * 256))

    @property
    def scale(self) -> float:
        return 256.0 / (256 - self.threshold)

    def keep_mask(self, shape, device) -> torch.Tensor | None:
        """The units kept in a tensor of ``shape`` (bool), or None where nothing is dropped (eval, p = 0)."""
        if not self.training or self.threshold == 0:
            return None
        n = math.prod(shape)
        words = torch.empty((n + 7) // 8, dtype=torch.int64, device=device).random_(-(2**63), None)
        return words.view(torch.uint8)[:n].view(shape) >= self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.keep_mask(x.shape, x.device)
        return x if keep is None else x * keep.view(torch.uint8) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def full(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 under autocast are upcast; float64 stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def attention_pool(attention: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """sum_n a_n h_n: attention (P, N), h (P, N, h) -> (P, h). Elementwise: on CPU about twice as fast as a
    batched matrix-vector product, forward and backward."""
    return (attention.unsqueeze(-1) * h).sum(1)


def mean_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uniform pooling weights over each bag's instances: mean pooling is attention with these weights (the one
    mean pooling of the package: MoMIL's ``mean`` heads and the mean-MLP baseline)."""
    return mask.to(dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)


def gated(v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The gated-attention gate tanh(V h) * sigmoid(U h) of Ilse et al. (the one gated attention of the package:
    MoMIL's ``abmil`` heads and the multi-label MIL baseline); ``v``, ``u`` are the two projections."""
    return fast_tanh(v) * torch.sigmoid(u)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(full(scores), dim=-1).to(scores.dtype)


class StackedHeads(nn.Module):
    """T heads whose weights are the rows of ``flat`` (T, K); see the module's docstring."""

    kind = "base"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5, mean_dim: int = 0):
        super().__init__()
        self.n_assays, self.in_dim, self.hidden = n_assays, in_dim, hidden
        self.mean_dim = mean_dim
        self.dropout = FastDropout(dropout)

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
        self, x: torch.Tensor, mask: torch.Tensor, assay: torch.Tensor, means: torch.Tensor | None = None
    ) -> dict:
        """Outputs for pairs in the caller's order: ``x`` (P, N, d), ``mask`` (P, N), ``assay`` (P,); ``means``
        (P, mean_dim): each pair's well mean, read by the mean stream (heads built with ``mean_dim``)."""
        plan = PairPlan.build(assay, x.device)
        means = None if means is None else plan.permute(means)
        return plan.unpermute(self.forward_planned(plan.permute(x), plan.permute(mask), plan, None, means))

    def forward_planned(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        plan: PairPlan,
        table: torch.Tensor | None = None,
        means: torch.Tensor | None = None,
    ) -> dict:
        """Outputs in ``plan``'s order for ``x``, ``mask`` and ``means`` given in that order. ``table``: the rows
        of ``flat`` for ``plan.assays``, in that order (a training step's copy of the rows it updates); by
        default they are gathered from ``flat``."""
        raise NotImplementedError

    def planned_weights(self, plan: PairPlan, table: torch.Tensor | None = None) -> list:
        """Per group of ``plan``, a function name -> (heads of the group, *shape) view of their weights."""
        layout, row = [], 0
        for heads, _pairs in plan.groups:
            layout += [
                (row, row + heads, start, stop, (heads,) + tuple(shape)) for start, stop, shape in self._layout.values()
            ]
            row += heads
        source, index = (self.flat, plan.assays) if table is None else (table, None)
        views = _Blocks.apply(source, index, tuple(layout))
        width = len(self._layout)
        groups = [dict(zip(self._layout, views[g * width : (g + 1) * width])) for g in range(len(plan.groups))]
        return [lambda name, parts=parts: self._named(name, parts.__getitem__) for parts in groups]

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
            raise ValueError("heads with a mean stream need each pair's well mean (means)")

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

    def forward_planned(self, x, mask, plan: PairPlan, table=None, means=None) -> dict:
        ws = self.planned_weights(plan, table)
        h = self.project(x, plan, ws)  # (P, N, h)
        a = self.attention_dim
        vu = self.linear(h, plan, ws, "vu_w", "vu_b")
        gate = gated(vu[..., :a], vu[..., a:])
        scores = self.linear(gate, plan, ws, "w_w", "w_b").squeeze(-1)  # (P, N)
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

    def forward_planned(self, x, mask, plan: PairPlan, table=None, means=None) -> dict:
        ws = self.planned_weights(plan, table)
        h = self.project(x, plan, ws)  # (P, N, h)
        q = self.query_dim
        qi = self.linear(h, plan, ws, "qi_w", "qi_b")  # (P, N, q + 1)
        instance = qi[..., q].masked_fill(~mask, float("-inf"))  # instance classifier, (P, N)
        critical = instance.argmax(dim=1)  # (P,)
        rows = torch.arange(len(critical), device=x.device)
        max_logit = instance[rows, critical]
        queries = fast_tanh(qi[..., :q])  # (P, N, q)
        q_critical = queries[rows, critical]  # (P, q)
        scores = (queries * (q_critical / math.sqrt(q)).unsqueeze(1)).sum(-1)
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

    def forward_planned(self, x, mask, plan: PairPlan, table=None, means=None) -> dict:
        ws = self.planned_weights(plan, table)
        h = self.project(x, plan, ws)
        weights = mean_weights(mask, h.dtype)
        pooled = attention_pool(weights, h)
        return {"logit": self.bag_logit(pooled, plan, ws, means), "attention": weights, "embedding": pooled}


HEADS = {"abmil": GatedAttentionHeads, "dsmil": DSMILHeads, "mean": MeanPoolHeads}
