"""The custom ops of momil.model.ops against their plain autograd forms (``reference_ops``)."""

import numpy as np
import pytest
import torch

from momil.model.momil import MoMIL
from momil.model.ops import BlockViews, reference_ops


def _step_losses_and_grads(kind: str, reference: bool, steps: int = 3):
    """Losses and parameter gradients of a few AdamW steps on fixed batches, dropout off (eval draws none)."""
    torch.manual_seed(0)
    model = MoMIL(12, [f"t{i}" for i in range(9)], kind, projector_dim=10, head_dim=6, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-2)
    rng = np.random.default_rng(1)
    losses, grads = [], []
    for _ in range(steps):
        bags = torch.from_numpy(rng.normal(size=(8, 7, 12)).astype(np.float32))
        mask = torch.from_numpy(rng.random((8, 7)) < 0.8)
        mask[:, 0] = True
        wells = torch.from_numpy(rng.integers(0, 8, 20))
        assays = torch.from_numpy(rng.integers(0, 9, 20))
        target = torch.from_numpy(rng.integers(0, 2, 20).astype(np.float32))
        if reference:
            with reference_ops():
                loss = model.loss(model(bags, mask, wells, assays), target) / 20
                optimizer.zero_grad()
                loss.backward()
        else:
            loss = model.loss(model(bags, mask, wells, assays), target) / 20
            optimizer.zero_grad()
            loss.backward()
        losses.append(float(loss.detach()))
        grads.append([p.grad.clone() for p in model.parameters()])
        optimizer.step()
    return losses, grads


@pytest.mark.parametrize("kind", ["dsmil", "abmil", "mean"])
def test_custom_ops_equal_plain_autograd_over_training_steps(kind):
    fast_losses, fast_grads = _step_losses_and_grads(kind, reference=False)
    plain_losses, plain_grads = _step_losses_and_grads(kind, reference=True)
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=0, atol=1e-6)
    for fast, plain in zip(fast_grads, plain_grads):
        for a, b in zip(fast, plain):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_block_views_backward_equals_slicing():
    torch.manual_seed(0)
    table = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 1, 1, 5])
    layout = ((0, 2, 0, 6, (2, 2, 3)), (0, 2, 6, 10, (2, 4)), (2, 4, 0, 6, (2, 3, 2)), (2, 4, 6, 10, (2, 2, 2)))
    weights = [torch.randn(v[-1], dtype=torch.float64) for v in layout]
    (sum((b * w).sum() for b, w in zip(BlockViews.apply(table, index, layout), weights))).backward()
    fast = table.grad.clone()
    table.grad = None
    rows = table[index]
    (sum((rows[r0:r1, c0:c1].reshape(s) * w).sum() for (r0, r1, c0, c1, s), w in zip(layout, weights))).backward()
    torch.testing.assert_close(fast, table.grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="unknown custom ops"):
        with reference_ops("fused"):
            pass
