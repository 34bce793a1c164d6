"""Losses: the AMTL task-balanced objectives and the validation loss."""

from __future__ import annotations

import math

import numpy as np
import torch


def balanced_loss(pair_loss: torch.Tensor, task: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AMTL's weighted geometric mean of the task losses present in a step: sum_t w_t log L_t / sum_t w_t, where
    L_t is the mean loss of task t's pairs; ``task`` (P,) indexes ``weights`` (tasks in the step)."""
    n = weights.shape[0]
    sums = pair_loss.new_zeros(n).index_add(0, task, pair_loss)
    counts = pair_loss.new_zeros(n).index_add(0, task, torch.ones_like(pair_loss))
    present = counts > 0
    mean = sums[present] / counts[present]
    w = weights[present].to(mean.dtype)
    return (w * torch.log(mean + 1e-8)).sum() / w.sum().clamp(min=1e-8)


def smoothed_balanced_loss(
    pair_loss: torch.Tensor,
    task: torch.Tensor,
    weights: torch.Tensor,
    running: np.ndarray,
    task_ids: np.ndarray,
    momentum: float = 0.9,
) -> torch.Tensor:
    """AMTL's weighted geometric mean for sparse labels: its gradient, sum_t w_t grad(L_t) / L_t, with L_t in the
    denominator replaced by the task's running loss (an EMA over steps, ``running`` (T,), updated in place; NaN =
    not seen yet). A task with one or two labelled pairs in a step otherwise divides by a near-zero loss and its
    easiest pairs dominate the step. ``task`` (P,) indexes ``weights`` / ``task_ids`` (global task numbers)."""
    n = weights.shape[0]
    sums = pair_loss.new_zeros(n).index_add(0, task, pair_loss)
    counts = pair_loss.new_zeros(n).index_add(0, task, torch.ones_like(pair_loss))
    present = counts > 0
    mean = sums[present] / counts[present]
    ids = task_ids[present.cpu().numpy()]
    observed = mean.detach().float().cpu().numpy().astype(np.float64)
    previous = running[ids]
    running[ids] = np.where(np.isnan(previous), observed, momentum * previous + (1 - momentum) * observed)
    scale = torch.as_tensor(np.maximum(running[ids], 1e-3), dtype=mean.dtype, device=mean.device)
    w = weights[present].to(mean.dtype)
    return (w * mean / scale).sum() / w.sum().clamp(min=1e-8)


def amtl_weights(per_assay: dict[int, float], potentials: np.ndarray, gamma: float) -> np.ndarray:
    """(1 - achievement) ** gamma per task, achievement = validation AUC / single-task AUC in [0, 1]."""
    weights = np.full(len(potentials), np.nan)
    for t, auc in per_assay.items():
        potential = potentials[t]
        if not (math.isnan(auc) or math.isnan(potential) or potential <= 0):
            weights[t] = (1.0 - min(1.0, max(0.0, auc / potential))) ** gamma
    fill = np.nanmean(weights) if np.isfinite(weights).any() else 1.0
    weights = np.where(np.isnan(weights), fill, weights)
    return np.maximum(weights, 1e-3)  # a task at its potential keeps a small weight


def mean_bce(label: np.ndarray, prob: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (scikit-learn's ``log_loss``; NaN without pairs)."""
    from sklearn.metrics import log_loss

    if len(label) == 0:
        return float("nan")
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    return float(log_loss(np.asarray(label, dtype=np.float64), p, labels=[0, 1]))
