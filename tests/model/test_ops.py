"""momil.model.ops and the heads' weight views: plain autograd, checked against indexing and slicing."""

import torch

from momil.model.heads import DSMILHeads
from momil.model.ops import PairPlan, gather_rows


def test_gather_rows_equals_indexing_in_values_and_gradients():
    torch.manual_seed(0)
    table = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([4, 1, 1, 5, 0])
    weight = torch.randn(5, 3, 4, dtype=torch.float64)
    (gather_rows(table, index) * weight).sum().backward()
    grad, table.grad = table.grad.clone(), None
    (table[index] * weight).sum().backward()
    torch.testing.assert_close(grad, table.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(gather_rows(table, index), table[index])


def test_planned_weights_are_the_rows_of_the_heads_in_use_with_their_gradients():
    """Per group, each named weight is the heads' rows of ``flat`` sliced to the part, and gradients reach
    exactly those rows (the others stay zero)."""
    torch.manual_seed(0)
    heads = DSMILHeads(7, 5, 4).double()
    plan = PairPlan.build(torch.tensor([3, 3, 0, 6, 6, 6, 0, 3, 2]))  # groups (heads x pairs): 1 x 1, 1 x 2, 2 x 3
    ws = heads.planned_weights(plan)
    names = ["gamma_w", "gamma_b", "q_w", "inst_b", "c_w"]
    weights = {(g, n): torch.randn(ws[g](n).shape, dtype=torch.float64) for g in range(len(ws)) for n in names}
    sum((ws[g](n) * w).sum() for (g, n), w in weights.items()).backward()
    grad, heads.flat.grad = heads.flat.grad.clone(), None
    row, total = 0, 0.0
    for g, (count, _pairs) in enumerate(plan.groups):
        rows = heads.flat[plan.assays[row : row + count]]
        for n in names:
            expected = heads.weights(rows, n)
            torch.testing.assert_close(ws[g](n), expected)
            total = total + (expected * weights[(g, n)]).sum()
        row += count
    total.backward()
    torch.testing.assert_close(grad, heads.flat.grad, rtol=0, atol=1e-12)
    unused = sorted(set(range(7)) - set(plan.assays.tolist()))
    assert unused == [1, 4, 5] and torch.all(grad[unused] == 0)
