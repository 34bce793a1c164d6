"""Optimisers and the learning-rate schedule (linear warm-up, cosine annealing)."""

from __future__ import annotations

import warnings

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from momil.model.base import MILModel


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, eta_min: float = 0.0
) -> LRScheduler:
    """torch's schedulers, stepped once per optimiser step: step s < ``warmup_steps`` runs at (s + 1) /
    ``warmup_steps`` of the base rate (:class:`~torch.optim.lr_scheduler.LinearLR`), then the rate anneals on a
    cosine to ``eta_min`` at ``total_steps`` (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`)."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=eta_min)
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def resume_schedule(scheduler: LRScheduler, saved: dict | None, steps_done: int) -> None:
    """Put a fresh :func:`warmup_cosine` schedule where a checkpoint left it: its saved state, or, for a
    checkpoint written before schedules were saved, ``steps_done`` steps replayed (the same recursion, so the same
    rates)."""
    if saved is not None:
        scheduler.load_state_dict(saved)
        return
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
        group["lr"] = lr  # the fresh schedule's first rate: loading the optimiser's state overwrote it
    with warnings.catch_warnings():  # replaying without optimiser steps is what torch warns about
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps_done):
            scheduler.step()


class LazyHeadAdamW:
    """AdamW for the stacked head parameters that updates only the heads (rows) used in a step.

    Like TensorFlow's LazyAdam: a head's weights, moments and bias-correction step count change only in steps
    where it has labelled pairs, so a step costs the same with 200 or 2,000 assays. When every head has pairs in
    every step it is exactly AdamW (decoupled weight decay, bias correction), which ``tests/training/test_train.py``
    checks. ``lazy_heads=False`` trains the heads with plain AdamW instead.

    Each used row is handed to torch's fused AdamW kernel (CPU and CUDA from torch 2.4, the floor momil depends
    on) as a tensor of its own, with its own step count, so the update is one pass over the used rows, in place,
    with no gather or scatter (it was about 5x faster on CPU than the gather/scatter form it replaced).
    """

    def __init__(
        self,
        params: dict[str, torch.nn.Parameter],
        weight_decay: float,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = params
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.float32, device=first.device)
        # row views, made once: the kernel updates them, and so the tables, in place
        self._rows = {
            n: (p.detach().unbind(0), self.exp_avg[n].unbind(0), self.exp_avg_sq[n].unbind(0))
            for n, p in params.items()
        }
        self._step_rows = self.steps.unbind(0)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: dict[str, torch.Tensor], lr: float) -> None:
        """``rows``: the used heads, unique, in any order; ``grads[name]``: their gradients, row i for rows[i]."""
        beta1, beta2 = self.betas
        self.steps.index_add_(0, rows, torch.ones(len(rows), dtype=self.steps.dtype, device=self.steps.device))
        used = rows.tolist()
        params, gs, ms, vs, steps = [], [], [], [], []
        for name, (p_rows, m_rows, v_rows) in self._rows.items():
            params += [p_rows[i] for i in used]
            ms += [m_rows[i] for i in used]
            vs += [v_rows[i] for i in used]
            gs += list(grads[name].unbind(0))
            steps += [self._step_rows[i] for i in used]
        torch._fused_adamw_(
            params,
            gs,
            ms,
            vs,
            [],
            steps,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=self.weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for name in self.params:
            self.exp_avg[name].copy_(state["exp_avg"][name])
            self.exp_avg_sq[name].copy_(state["exp_avg_sq"][name])
        self.steps.copy_(state["steps"])


def _has_fused_adamw(device: torch.device) -> bool:
    """Whether torch's fused AdamW kernel runs on ``device`` (CPU from torch 2.4, CUDA earlier)."""
    if not hasattr(torch, "_fused_adamw_"):
        return False
    try:
        p, g = torch.zeros(2, device=device), torch.ones(2, device=device)
        torch._fused_adamw_(
            [p],
            [g],
            [torch.zeros_like(p)],
            [torch.zeros_like(p)],
            [],
            [torch.ones((), device=device)],
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )
    except (RuntimeError, NotImplementedError):
        return False
    return True


def make_optimizers(
    model: MILModel, lr: float, weight_decay: float, lazy_heads: bool, device
) -> tuple[torch.optim.AdamW, LazyHeadAdamW | None]:
    """AdamW for the dense parameters (torch's fused kernel where it runs) and, with ``lazy_heads`` on a model
    with a head table (:meth:`MILModel.head_table`), :class:`LazyHeadAdamW` for that table (else None: the heads
    are dense parameters too)."""
    device = torch.device(device)
    table = model.head_table() if lazy_heads else None
    if table:
        lazy = LazyHeadAdamW(table, weight_decay)
        in_table = {id(p) for p in table.values()}
        dense_params = [p for p in model.parameters() if id(p) not in in_table]
    else:
        lazy, dense_params = None, list(model.parameters())
    if not dense_params:  # lazy heads without a shared projector: a placeholder keeps the schedule's bookkeeping
        dense_params = [torch.nn.Parameter(torch.zeros(0, device=device))]
    fused = _has_fused_adamw(device) and all(p.dtype in (torch.float32, torch.float64) for p in dense_params)
    return torch.optim.AdamW(dense_params, lr=lr, weight_decay=weight_decay, fused=fused or None), lazy
