"""The building blocks the heads and baselines share: row gathers, the pair plan (assays grouped for batched
products), gated attention, masked softmax and (attention or mean) pooling. Written once here so that MoMIL
heads and the baselines pool the same way. All of it is plain autograd: the custom autograd functions that
stood here (a row gather, the heads' weight blocks, a sigmoid-form tanh, a byte-wise dropout) were measured
by ``benchmarks/bench_train.py`` on 2026-12-02 against their plain forms over the whole training step and
removed (0.91-1.28x; the weight blocks as ``torch.split`` under autograd ran 0.97-1.03x of the custom ones)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` along dim 0 for a table of any shape, as an embedding lookup: its backward sums the
    rows' gradients over sorted indices, deterministic on CUDA (index_select's index_add is not)."""
    flat = nn.functional.embedding(index, table.reshape(table.shape[0], -1))
    return flat.view((index.shape[0],) + tuple(table.shape[1:]))


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
    return torch.tanh(v) * torch.sigmoid(u)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(full(scores), dim=-1).to(scores.dtype)
