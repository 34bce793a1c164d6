"""Attention-MIL heads for many assays at once, with stacked weights.

One head per assay t: F_gamma_t (projector, Linear + ReLU + dropout), F_beta_t (attention with a softmax over
the well's instances) and F_alpha_t (classifier). A call evaluates a list of (well, assay) *pairs*: the rows of
the instance tensor and the assay index of each pair, so the cost grows with the number of pairs asked for (the
labelled ones in training), not with wells x assays.

Storage: all weights of head t are one row of a single ``flat`` parameter of shape (T, K). A forward pass
gathers each pair's row once (one index_select, whose backward is one sorted sum), and an optimizer can
update the rows of the heads used in a step as separate contiguous tensors (see
``momil.train.LazyHeadAdamW``). The named weights (``gamma_w``, ``q_w``, ...; shape (T, fan_in, fan_out) or
(T, fan_out)) are views of ``flat``. Layers that read the same input are stored side by side and applied as one
matrix product: DSMIL's query and instance-classifier weights (``qi_w`` = [q_w | inst_w]), ABMIL's tanh and
sigmoid branches (``vu_w`` = [v_w | u_w]).

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


class _GatherParts(torch.autograd.Function):
    """Rows of a (T, K) table for each index, returned as views of the named column ranges (one gather); the
    backward writes the parts' gradients side by side into one (P, K) buffer and sums it into the table's rows
    once. (Slicing a gathered tensor under autograd would instead zero-fill a (P, K) gradient per part.)"""

    @staticmethod
    def forward(ctx, table, index, layout):
        rows = table.index_select(0, index)
        ctx.save_for_backward(index)
        ctx.layout, ctx.n_rows = layout, table.shape[0]
        ctx.mark_non_differentiable(index)
        return tuple(rows[:, start:stop].view((rows.shape[0],) + tuple(shape)) for start, stop, shape in layout)

    @staticmethod
    def backward(ctx, *grads):
        (index,) = ctx.saved_tensors
        width = ctx.layout[-1][1]
        reference = next(g for g in grads if g is not None)
        buffer = reference.new_empty(index.shape[0], width)
        for (start, stop, _shape), grad in zip(ctx.layout, grads):
            if grad is None:
                buffer[:, start:stop].zero_()
            else:
                buffer[:, start:stop].copy_(grad.reshape(index.shape[0], stop - start))
        return _rows_backward(buffer, index, ctx.n_rows), None, None


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-pair linear map: x (P, N, in), weight (P, in, out), bias (P, out) -> (P, N, out)."""
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= self.threshold
        return x * keep * (256.0 / (256 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def full(t: torch.Tensor) -> torch.Tensor:
    """At least float32 (bf16/fp16 under autocast are upcast; float64 stays float64)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(full(scores), dim=-1).to(scores.dtype)


class StackedHeads(nn.Module):
    """T heads whose weights are the rows of ``flat`` (T, K); see the module's docstring."""

    kind = "base"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5):
        super().__init__()
        self.n_assays, self.in_dim, self.hidden = n_assays, in_dim, hidden
        self.dropout = FastDropout(dropout)

    def _build(self, parts: list[tuple[str, tuple[int, ...], int]], aliases: dict[str, tuple[str, int, int]]
               ) -> None:
        """``parts``: (name, per-head shape, fan_in) stored in this order in a row of ``flat``, each initialised
        as nn.Linear initialises a layer with that fan_in; ``aliases``: name -> (part, start, stop) along the
        part's last axis (the separate layers a merged part holds, and the names earlier versions saved)."""
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

    def pair_weights(self, assay: torch.Tensor):
        """Each pair's head row, gathered once: a function name -> (P, *shape) view."""
        layout = tuple(self._layout.values())
        parts = dict(zip(self._layout, _GatherParts.apply(self.flat, assay, layout)))
        return lambda name: self._named(name, parts.__getitem__)

    def project(self, x: torch.Tensor, w) -> torch.Tensor:
        return self.dropout(torch.relu(_linear(x, w("gamma_w"), w("gamma_b"))))  # (P, N, h)

    def classify(self, pooled: torch.Tensor, w) -> torch.Tensor:
        """F_alpha on the pooled representation (P, h) -> logits (P,)."""
        return (pooled * w("c_w").squeeze(-1)).sum(-1) + w("c_b").squeeze(-1)

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
                pieces = [state_dict.pop(prefix + alias) for alias, (part, _, _) in self._aliases.items()
                          if part == name] or [state_dict.pop(prefix + name)]
                merged = torch.cat(pieces, dim=-1) if len(pieces) > 1 else pieces[0]
                rows.append(merged.reshape(merged.shape[0], -1))
            state_dict[prefix + "flat"] = torch.cat(rows, dim=1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"assays={self.n_assays}, in={self.in_dim}, hidden={self.hidden}"


class GatedAttentionHeads(StackedHeads):
    kind = "abmil"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5, attention_dim: int | None = None):
        super().__init__(n_assays, in_dim, hidden, dropout)
        a = self.attention_dim = attention_dim or hidden
        self._build([("gamma_w", (in_dim, hidden), in_dim), ("gamma_b", (hidden,), in_dim),  # F_gamma
                     ("vu_w", (hidden, 2 * a), hidden), ("vu_b", (2 * a,), hidden),  # F_beta: tanh | sigmoid
                     ("w_w", (a, 1), a), ("w_b", (1,), a),  # F_beta: score
                     ("c_w", (hidden, 1), hidden), ("c_b", (1,), hidden)],  # F_alpha: classifier
                    {"v_w": ("vu_w", 0, a), "u_w": ("vu_w", a, 2 * a), "v_b": ("vu_b", 0, a), "u_b": ("vu_b", a, 2 * a)})

    def forward(self, x: torch.Tensor, mask: torch.Tensor, assay: torch.Tensor) -> dict:
        w = self.pair_weights(assay)
        h = self.project(x, w)  # (P, N, h)
        a = self.attention_dim
        vu = _linear(h, w("vu_w"), w("vu_b"))
        gate = torch.tanh(vu[..., :a]) * torch.sigmoid(vu[..., a:])
        scores = _linear(gate, w("w_w"), w("w_b")).squeeze(-1)  # (P, N)
        attention = masked_softmax(scores, mask)
        pooled = torch.bmm(attention.unsqueeze(1), h).squeeze(1)  # (P, h)
        return {"logit": self.classify(pooled, w), "attention": attention, "embedding": pooled}


class DSMILHeads(StackedHeads):
    kind = "dsmil"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5, query_dim: int | None = None):
        super().__init__(n_assays, in_dim, hidden, dropout)
        q = self.query_dim = query_dim or hidden
        self._build([("gamma_w", (in_dim, hidden), in_dim), ("gamma_b", (hidden,), in_dim),  # F_gamma
                     ("qi_w", (hidden, q + 1), hidden), ("qi_b", (q + 1,), hidden),  # queries (F_beta) | instance cls
                     ("c_w", (hidden, 1), hidden), ("c_b", (1,), hidden)],  # bag classifier (F_alpha)
                    {"q_w": ("qi_w", 0, q), "inst_w": ("qi_w", q, q + 1),
                     "q_b": ("qi_b", 0, q), "inst_b": ("qi_b", q, q + 1)})

    def forward(self, x: torch.Tensor, mask: torch.Tensor, assay: torch.Tensor) -> dict:
        w = self.pair_weights(assay)
        h = self.project(x, w)  # (P, N, h)
        q = self.query_dim
        qi = _linear(h, w("qi_w"), w("qi_b"))  # (P, N, q + 1)
        instance = qi[..., q].masked_fill(~mask, float("-inf"))  # instance classifier, (P, N)
        critical = instance.argmax(dim=1)  # (P,)
        rows = torch.arange(len(critical), device=x.device)
        max_logit = instance[rows, critical]
        queries = torch.tanh(qi[..., :q])  # (P, N, q)
        q_critical = queries[rows, critical]  # (P, q)
        scores = torch.bmm(queries, q_critical.unsqueeze(-1)).squeeze(-1) / math.sqrt(q)
        attention = masked_softmax(scores, mask)
        pooled = torch.bmm(attention.unsqueeze(1), h).squeeze(1)  # (P, h)
        return {"logit": self.classify(pooled, w), "max_logit": max_logit, "attention": attention,
                "embedding": pooled, "critical": critical}

    def probability(self, out: dict) -> torch.Tensor:
        return 0.5 * (torch.sigmoid(full(out["logit"])) + torch.sigmoid(full(out["max_logit"])))

    def pair_loss(self, out: dict, target: torch.Tensor) -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits
        target = target.to(full(out["logit"]).dtype)
        return 0.5 * (bce(full(out["logit"]), target, reduction="none")
                      + bce(full(out["max_logit"]), target, reduction="none"))


class MeanPoolHeads(StackedHeads):
    """Mean pooling instead of attention (uniform weights): the "mean per well -> MLP" comparison."""

    kind = "mean"

    def __init__(self, n_assays: int, in_dim: int, hidden: int, dropout: float = 0.5):
        super().__init__(n_assays, in_dim, hidden, dropout)
        self._build([("gamma_w", (in_dim, hidden), in_dim), ("gamma_b", (hidden,), in_dim),
                     ("c_w", (hidden, 1), hidden), ("c_b", (1,), hidden)], {})

    def forward(self, x: torch.Tensor, mask: torch.Tensor, assay: torch.Tensor) -> dict:
        w = self.pair_weights(assay)
        h = self.project(x, w)
        weights = mask.to(h.dtype) / mask.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
        pooled = torch.bmm(weights.unsqueeze(1), h).squeeze(1)
        return {"logit": self.classify(pooled, w), "attention": weights, "embedding": pooled}


HEADS = {"abmil": GatedAttentionHeads, "dsmil": DSMILHeads, "mean": MeanPoolHeads}
