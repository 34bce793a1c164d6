"""MoMIL model: gradients, permutation invariance, label masking, batched heads equal a per-assay reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from momil.model.heads import HEADS, DSMILHeads, GatedAttentionHeads, PairPlan, masked_softmax
from momil.model.momil import MoMIL

KINDS = sorted(HEADS)


def make_heads(kind: str, **kwargs):
    return HEADS[kind](**kwargs)


def random_bags(b=4, n=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    bags = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 5:] = False  # ragged bags
    mask[3, 2:] = False
    return bags, mask


@pytest.mark.parametrize("kind", KINDS)
def test_head_gradient_matches_finite_differences(kind):
    torch.manual_seed(0)
    heads = make_heads(kind, n_assays=3, in_dim=5, hidden=4, dropout=0.0).double()
    bags, mask = random_bags()
    wells = torch.tensor([0, 1, 2, 3, 0])
    assays = torch.tensor([0, 2, 1, 2, 1])
    target = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)

    def loss_of(x):
        return heads.loss(heads(x[wells], mask[wells], assays), target)

    assert torch.autograd.gradcheck(loss_of, (bags.clone().requires_grad_(True),), eps=1e-6, atol=1e-5)
    params = [p for p in heads.parameters()]

    def loss_params(*flat):
        for p, v in zip(params, flat):
            p.data = v.detach()
        return heads.loss(heads(bags[wells], mask[wells], assays), target)

    # parameter gradients against central differences on a few coordinates
    loss = heads.loss(heads(bags[wells], mask[wells], assays), target)
    grads = torch.autograd.grad(loss, params)
    for p, g in zip(params, grads):
        flat = p.data.view(-1)
        for index in range(0, flat.numel(), max(1, flat.numel() // 4)):
            old = flat[index].item()
            flat[index] = old + 1e-6
            up = heads.loss(heads(bags[wells], mask[wells], assays), target).item()
            flat[index] = old - 1e-6
            down = heads.loss(heads(bags[wells], mask[wells], assays), target).item()
            flat[index] = old
            assert g.view(-1)[index].item() == pytest.approx((up - down) / 2e-6, abs=1e-5)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_permutation_invariance(kind):
    torch.manual_seed(1)
    model = MoMIL(in_dim=5, assays=["a", "b"], head=kind, projector_dim=6, head_dim=4, dropout=0.0).double().eval()
    bags, mask = random_bags()
    full = torch.ones_like(mask)
    base = model.predict(bags, full)
    perm = torch.randperm(bags.shape[1])
    shuffled = model.predict(bags[:, perm], full)
    torch.testing.assert_close(base, shuffled)
    # padding is invisible: a bag with extra masked rows predicts as the bag alone
    alone = model.predict(bags[3:4, :2], torch.ones(1, 2, dtype=torch.bool))
    padded = model.predict(bags[3:4], mask[3:4])
    torch.testing.assert_close(alone, padded)


def test_attention_is_a_distribution_over_real_instances():
    torch.manual_seed(2)
    for kind in ("abmil", "dsmil"):
        model = MoMIL(in_dim=5, assays=["a", "b", "c"], head=kind, projector_dim=6, head_dim=4).double().eval()
        bags, mask = random_bags()
        out = model(bags, mask, torch.tensor([0, 1, 3]), torch.tensor([2, 0, 1]))
        att = out["attention"]
        torch.testing.assert_close(att.sum(dim=1), torch.ones(3, dtype=torch.float64))
        assert torch.all(att[1, 5:] == 0) and torch.all(att[2, 2:] == 0)
        single = model.attention(bags[0], 2)
        assert single.shape == (7,) and single.sum().item() == pytest.approx(1.0)


def test_unknown_labels_change_neither_loss_nor_gradient():
    """Labels enter only as pairs; pairs of unknown labels do not exist, whatever value they would hold."""
    torch.manual_seed(3)
    model = MoMIL(in_dim=5, assays=["a", "b", "c"], projector_dim=6, head_dim=4, dropout=0.0).double()
    bags, mask = random_bags()
    known = (torch.tensor([0, 1, 2]), torch.tensor([0, 2, 1]), torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))

    def loss_and_grads(extra_bags):
        model.zero_grad()
        b = bags.clone()
        b[3] = extra_bags  # a well whose labels are all unknown: it is in the batch but in no pair
        out = model(b, mask, known[0], known[1])
        loss = model.loss(out, known[2])
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    loss1, grads1 = loss_and_grads(bags[3])
    loss2, grads2 = loss_and_grads(torch.randn_like(bags[3]) * 100)
    assert loss1 == loss2
    for g1, g2 in zip(grads1, grads2):
        torch.testing.assert_close(g1, g2)


class ReferenceABMIL(nn.Module):
    """One assay's gated-attention head written plainly, sharing weights with stacked heads' slice t."""

    def __init__(self, heads: GatedAttentionHeads, t: int):
        super().__init__()
        self.h, self.t = heads, t

    def forward(self, x):  # x (N, d)
        h, t = self.h, self.t
        hidden = torch.relu(x @ h.gamma_w[t] + h.gamma_b[t])
        gate = torch.tanh(hidden @ h.v_w[t] + h.v_b[t]) * torch.sigmoid(hidden @ h.u_w[t] + h.u_b[t])
        a = torch.softmax((gate @ h.w_w[t] + h.w_b[t]).squeeze(-1), dim=0)
        return (a @ hidden) @ h.c_w[t] + h.c_b[t]


class ReferenceDSMIL(nn.Module):
    def __init__(self, heads: DSMILHeads, t: int):
        super().__init__()
        self.h, self.t = heads, t

    def forward(self, x):
        h, t = self.h, self.t
        hidden = torch.relu(x @ h.gamma_w[t] + h.gamma_b[t])
        inst = (hidden @ h.inst_w[t] + h.inst_b[t]).squeeze(-1)
        m = int(inst.argmax())
        q = torch.tanh(hidden @ h.q_w[t] + h.q_b[t])
        a = torch.softmax(q @ q[m] / h.query_dim**0.5, dim=0)
        bag = (a @ hidden) @ h.c_w[t] + h.c_b[t]
        return 0.5 * (torch.sigmoid(bag) + torch.sigmoid(inst[m]))


@pytest.mark.parametrize("kind", ["abmil", "dsmil"])
def test_batched_heads_equal_per_assay_reference(kind):
    torch.manual_seed(4)
    heads = make_heads(kind, n_assays=6, in_dim=5, hidden=4, dropout=0.0).double().eval()
    bags, mask = random_bags(b=5, n=9)
    wells = torch.tensor([0, 0, 1, 2, 3, 4, 4, 1])
    assays = torch.tensor([0, 5, 3, 2, 1, 4, 0, 5])
    prob = heads.probability(heads(bags[wells], mask[wells], assays))
    for i, (w, t) in enumerate(zip(wells.tolist(), assays.tolist())):
        x = bags[w][mask[w]]
        if kind == "abmil":
            expected = torch.sigmoid(ReferenceABMIL(heads, t)(x)).squeeze()
        else:
            expected = ReferenceDSMIL(heads, t)(x).squeeze()
        torch.testing.assert_close(prob[i], expected)


def test_pair_plan_groups_the_pairs_of_each_assay():

    assay = torch.tensor([5, 2, 5, 7, 2, 5, 9])
    plan = PairPlan.build(assay)
    # heads by number of pairs, then assay: 7 and 9 (one pair each), 2 (two), 5 (three)
    assert plan.assays.tolist() == [7, 9, 2, 5]
    assert plan.groups == ((2, 1), (1, 2), (1, 3))
    assert plan.sizes == [2, 2, 3]
    assert assay[plan.order].tolist() == [7, 9, 2, 2, 5, 5, 5]
    assert plan.order.tolist() == [3, 6, 1, 4, 0, 2, 5]  # stable within an assay
    assert plan.pair_head.tolist() == [0, 1, 2, 2, 3, 3, 3]
    torch.testing.assert_close(plan.permute(assay)[plan.inverse], assay)
    assert not plan.in_order and PairPlan.build(torch.tensor([1, 3, 3])).in_order
    assert plan.spans == [(0, 2, 0, 2, 2, 1), (2, 3, 2, 4, 1, 2), (3, 4, 4, 7, 1, 3)]


def test_cost_follows_pairs_not_wells_times_assays():
    """The head evaluates exactly the pairs asked for: tensors inside scale with P, not B x T."""
    torch.manual_seed(5)
    model = MoMIL(in_dim=8, assays=[f"t{i}" for i in range(500)], projector_dim=8, head_dim=4)
    bags = torch.randn(16, 10, 8)
    mask = torch.ones(16, 10, dtype=torch.bool)
    out = model(bags, mask, torch.tensor([0, 3, 7]), torch.tensor([1, 499, 250]))
    assert out["logit"].shape == (3,) and out["attention"].shape == (3, 10)


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_checkpoints_with_one_parameter_per_weight_still_load(kind):
    """Earlier versions saved each weight (gamma_w, q_w, inst_w, ...) as its own (T, ...) parameter; the heads
    now keep one (T, K) table and read such checkpoints into it."""
    torch.manual_seed(6)
    heads = HEADS[kind](n_assays=3, in_dim=5, hidden=4, dropout=0.0).double().eval()
    names = {
        "abmil": ["gamma_w", "gamma_b", "v_w", "v_b", "u_w", "u_b", "w_w", "w_b", "c_w", "c_b"],
        "dsmil": ["gamma_w", "gamma_b", "inst_w", "inst_b", "q_w", "q_b", "c_w", "c_b"],
        "mean": ["gamma_w", "gamma_b", "c_w", "c_b"],
    }[kind]
    old = {name: getattr(heads, name).detach().clone().contiguous() for name in names}
    assert old["gamma_w"].shape == (3, 5, 4) and old["c_w"].shape == (3, 4, 1)
    fresh = HEADS[kind](n_assays=3, in_dim=5, hidden=4, dropout=0.0).double().eval()
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.flat, heads.flat, rtol=0, atol=0)


def test_masked_softmax():
    scores = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(
        masked_softmax(scores, mask), torch.tensor([[1 / (1 + torch.e), torch.e / (1 + torch.e), 0.0]])
    )


def test_unknown_head_refused():
    from momil.errors import MomilError

    with pytest.raises(MomilError, match="head must be one of"):
        MoMIL(in_dim=3, assays=["a"], head="transformer")


# ------------------------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize("kind", ["mean-mlp", "multilabel-mil"])
def test_baselines_share_the_pair_interface(kind, tmp_path):
    from momil.model.baselines import BASELINES
    from momil.training.checkpoints import load_model, save_model

    torch.manual_seed(0)
    model = BASELINES[kind](6, ["a", "b", "c"], projector_dim=8, head_dim=4, dropout=0.0).eval()
    bags = torch.randn(4, 5, 6)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    wells, assays = torch.tensor([0, 1, 3]), torch.tensor([2, 0, 1])
    out = model(bags, mask, wells, assays)
    probs = model.predict(bags, mask)
    assert probs.shape == (4, 3)
    assert torch.allclose(model.probability(out), probs[wells, assays], atol=1e-6)
    # padding is ignored and instance order does not matter
    padded = bags.clone()
    padded[1, 3:] = 1e3
    assert torch.allclose(model.predict(padded, mask), probs, atol=1e-6)
    assert torch.allclose(
        model.predict(bags[:, torch.randperm(5)], torch.ones(4, 5, dtype=torch.bool))[[0, 2, 3]],
        probs[[0, 2, 3]],
        atol=1e-5,
    )
    # unlabelled wells and assays are not pairs: a batch with extra unlabelled wells gives the same gradient
    target = torch.tensor([1.0])
    model.zero_grad()
    model.loss(model(bags[:1], mask[:1], torch.tensor([0]), torch.tensor([2])), target).backward()
    alone = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.loss(model(bags, mask, torch.tensor([0]), torch.tensor([2])), target).backward()
    together = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(alone) == len(together) and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, together))
    weights = model.attention(bags[0], 1)
    assert weights.shape == (5,) and torch.isclose(weights.sum(), torch.tensor(1.0))
    assert model.embed(bags, mask, 0).shape[0] == 4
    save_model(tmp_path / "m.pt", model)
    again, _ = load_model(tmp_path / "m.pt")
    assert type(again) is type(model) and torch.allclose(again.predict(bags, mask), probs)


def test_mean_mlp_sees_only_the_well_mean():
    from momil.model.baselines import MeanMLP

    model = MeanMLP(3, ["a"], 8, 4, 0.0).eval()
    bag = torch.randn(1, 6, 3)
    same_mean = bag.mean(1, keepdim=True).expand(1, 6, 3).clone()
    mask = torch.ones(1, 6, dtype=torch.bool)
    assert torch.allclose(model.predict(bag, mask), model.predict(same_mean, mask), atol=1e-6)


def test_mean_mlp_standardises_its_input_and_has_its_own_dropout():
    from momil.model.baselines import MeanMLP
    from momil.model.registry import model_from_hparams

    torch.manual_seed(0)
    model = MeanMLP(3, ["a"], 8, 4, dropout=0.5).eval()
    assert model.hparams["mlp_dropout"] == 0.0
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.mlp)  # the MIL models' 0.5 is not its
    means = torch.tensor([[1.0, 10.0, 5.0], [3.0, 30.0, 5.0]], dtype=torch.float64)
    model.standardise_inputs(means)
    assert torch.allclose(model.input_mean, torch.tensor([2.0, 20.0, 5.0]))
    assert torch.allclose(model.input_scale, torch.tensor([1.0, 10.0, 1.0]))  # a constant feature keeps scale 1
    # the MLP reads (mean - input_mean) / input_scale: a well at the training mean reads zeros
    at_mean = model.input_mean.reshape(1, 1, 3).expand(1, 4, 3).clone()
    mask = torch.ones(1, 4, dtype=torch.bool)
    expected = torch.sigmoid(model.out(model.mlp(torch.zeros(1, 3))))
    assert torch.allclose(model.predict(at_mean, mask), expected, atol=1e-6)
    assert MeanMLP(3, ["a"], 8, 4, mlp_dropout=0.3).mlp[2].p == 0.3
    # a model saved before the standardisation loads with none (mean 0, scale 1)
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("input_")}
    hparams = {k: v for k, v in model.hparams.items() if k != "mlp_dropout"}
    loaded = model_from_hparams(hparams)
    loaded.load_state_dict(old)
    assert torch.equal(loaded.input_mean, torch.zeros(3)) and torch.equal(loaded.input_scale, torch.ones(3))


def test_mean_mlp_mean_stream_starts_at_zero_and_reads_the_standardised_mean():
    from momil.model.baselines import MeanMLP
    from momil.model.registry import model_from_hparams

    bags = torch.randn(3, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    torch.manual_seed(0)
    with_stream = MeanMLP(4, ["a", "b"], 8, 6, mean_stream=True).eval()
    torch.manual_seed(0)
    without = MeanMLP(4, ["a", "b"], 8, 6).eval()
    assert with_stream.hparams["mean_stream"] and "mean_stream" not in without.hparams
    assert without.skip is None
    means = torch.stack([bags[i][mask[i]].mean(0) for i in range(3)]).double()
    for model in (with_stream, without):
        model.standardise_inputs(means)
    before = with_stream.well_outputs(bags, mask)["logits"]
    assert torch.allclose(before, without.well_outputs(bags, mask)["logits"])  # zero at the start
    weight, bias = torch.randn(2, 4), torch.randn(2)
    with torch.no_grad():
        with_stream.skip.weight.copy_(weight)
        with_stream.skip.bias.copy_(bias)
    after = with_stream.well_outputs(bags, mask)["logits"]
    z = (means.float() - with_stream.input_mean) / with_stream.input_scale
    assert torch.allclose(after - before, z @ weight.T + bias, atol=1e-5)
    # a model saved without the stream (the hyperparameters name none) loads without it, state and all
    loaded = model_from_hparams(dict(without.hparams))
    loaded.load_state_dict(without.state_dict())
    assert loaded.skip is None
    assert torch.allclose(loaded.well_outputs(bags, mask)["logits"], without.well_outputs(bags, mask)["logits"])
    assert model_from_hparams(dict(with_stream.hparams)).skip is not None


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_mean_stream_starts_at_zero_and_adds_a_linear_readout_of_the_well_mean(kind):
    bags = torch.randn(4, 7, 8)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    wells, assays = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([0, 2, 1, 1, 2])
    torch.manual_seed(0)
    with_stream = MoMIL(8, ["a", "b", "c"], kind, 6, 5, 0.0, mean_stream=True).eval()
    torch.manual_seed(0)
    without = MoMIL(8, ["a", "b", "c"], kind, 6, 5, 0.0, mean_stream=False).eval()
    before = with_stream(bags, mask, wells, assays)["logit"]
    assert torch.allclose(before, without(bags, mask, wells, assays)["logit"])  # zero at the start
    m_w, m_b = torch.randn(3, 8, 1), torch.randn(3, 1)
    with torch.no_grad():
        with_stream.heads.m_w.copy_(m_w)
        with_stream.heads.m_b.copy_(m_b)
    after = with_stream(bags, mask, wells, assays)["logit"]
    means = torch.stack([bags[w][mask[w]].mean(0) for w in wells.tolist()])  # real instances only
    readout = (means.unsqueeze(1) @ m_w[assays]).reshape(-1) + m_b[assays, 0]
    assert torch.allclose(after - before, readout, atol=1e-5)
    # predict (every well x every assay) agrees with the pair forward
    probs = with_stream.predict(bags, mask)
    assert torch.allclose(probs[wells, assays], with_stream.probability(with_stream(bags, mask, wells, assays)))


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_shared_attention_starts_as_one_attention_for_every_assay_and_each_head_adds_its_own_scores(kind):
    from momil.errors import MomilError
    from momil.model.ops import gated
    from momil.model.registry import model_from_hparams

    torch.manual_seed(1)
    bags = torch.randn(3, 6, 8)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[2, 4:] = False
    model = MoMIL(8, ["a", "b", "c"], kind, 6, 5, 0.0, shared_attention=True).eval()
    wells, assays = torch.tensor([0, 0, 0, 2, 2]), torch.tensor([0, 1, 2, 0, 2])
    out = model(bags, mask, wells, assays)
    z = model.encode(bags, mask)
    shared = model.shared["w"](gated(model.shared["v"](z), model.shared["u"](z))).squeeze(-1)
    expected = masked_softmax(shared, mask)[wells]
    own = model.heads(z[wells], mask[wells], assays)["attention"]  # each head's attention without the shared one
    combined = own * shared[wells].exp()  # softmax(own scores + shared scores)
    assert torch.allclose(out["attention"], combined / combined.sum(1, keepdim=True), atol=1e-5)
    if kind != "dsmil":  # the heads' own scores are zero at the start (DSMIL's are its query similarities)
        assert torch.allclose(out["attention"], expected, atol=1e-6)
    assert float(out["attention"][3:, 4:].abs().max()) == 0.0  # padding gets none
    if kind == "abmil":  # a head's own scores are added to the shared ones
        with torch.no_grad():
            model.heads.w_w[1].normal_()
        moved = model(bags, mask, wells, assays)["attention"]
        assert torch.allclose(moved[[0, 2, 3, 4]], expected[[0, 2, 3, 4]], atol=1e-6)  # other assays unchanged
        assert not torch.allclose(moved[1], expected[1])
    probs = model.predict(bags, mask)  # every well x every assay agrees with the pair forward
    assert torch.allclose(probs[wells, assays], model.probability(model(bags, mask, wells, assays)), atol=1e-6)
    again = model_from_hparams(dict(model.hparams))  # saved and rebuilt with it
    again.load_state_dict(model.state_dict())
    assert torch.allclose(again.eval()(bags, mask, wells, assays)["logit"], model(bags, mask, wells, assays)["logit"])
    assert model_from_hparams({k: v for k, v in model.hparams.items() if k != "shared_attention"}).shared is None
    with pytest.raises(MomilError, match="shared_projector"):
        MoMIL(8, ["a"], kind, 6, 5, 0.0, shared_projector=False, shared_attention=True)


@pytest.mark.parametrize("kind", sorted(HEADS))
@pytest.mark.parametrize("shared_attention", [False, True])
def test_shared_readout_starts_at_zero_and_adds_a_linear_readout_of_the_shared_attention_pool(kind, shared_attention):
    from momil.errors import MomilError
    from momil.model.ops import gated
    from momil.model.registry import model_from_hparams

    bags = torch.randn(4, 7, 8)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    wells, assays = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([0, 2, 1, 1, 2])
    args = (8, ["a", "b", "c"], kind, 6, 5, 0.0)
    model = MoMIL(*args, mean_stream=True, shared_attention=shared_attention, shared_readout=True).eval()
    plain = MoMIL(*args, mean_stream=True, shared_attention=shared_attention)
    assert model.heads.m_w.shape == (3, 8 + 6, 1)  # the well mean and the pooled F_phi output, side by side
    assert float(model.heads.m_w[:, 8:].abs().max()) == 0.0  # the readout starts at zero
    before = model(bags, mask, wells, assays)["logit"]
    r_w, r_b = torch.randn(3, 6, 1), torch.randn(3, 1)
    with torch.no_grad():
        model.heads.m_w[:, 8:].copy_(r_w)
        model.heads.m_b.add_(r_b)
    after = model(bags, mask, wells, assays)["logit"]
    z = model.encode(bags, mask)
    scores = model.shared["w"](gated(model.shared["v"](z), model.shared["u"](z))).squeeze(-1)
    pooled = (masked_softmax(scores, mask).unsqueeze(-1) * z).sum(1)[wells]  # one attention for every assay
    assert float(masked_softmax(scores, mask)[1, 5:].abs().max()) == 0.0  # padding gets none
    readout = (pooled.unsqueeze(1) @ r_w[assays]).reshape(-1) + r_b[assays, 0]
    assert torch.allclose(after - before, readout, atol=1e-5)
    probs = model.predict(bags, mask)  # every well x every assay agrees with the pair forward
    assert torch.allclose(probs[wells, assays], model.probability(model(bags, mask, wells, assays)), atol=1e-6)
    again = model_from_hparams(dict(model.hparams))  # saved and rebuilt with it
    again.load_state_dict(model.state_dict())
    assert torch.allclose(again.eval()(bags, mask, wells, assays)["logit"], after)
    assert "shared_readout" not in plain.hparams  # models without it keep the hyperparameters they had
    with pytest.raises(MomilError, match="shared_projector"):
        MoMIL(*args, shared_projector=False, shared_readout=True)


def test_linear_streams_without_their_input_are_refused_by_name():
    bags, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    readout_only = MoMIL(8, ["a", "b"], "abmil", 6, 5, 0.0, shared_readout=True).eval()
    z = readout_only.encode(bags, mask)
    plan = PairPlan.build(torch.tensor([0, 1]), bags.device)
    pooled = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="linear stream .a mean stream or a shared readout."):
        readout_only.heads.bag_logit(pooled, plan, readout_only.heads.planned_weights(plan), None)
    assert readout_only.streams(z, mask, None, readout_only.shared_scores(z)).shape == (2, 6)  # no mean needed
    with_mean = MoMIL(8, ["a", "b"], "abmil", 6, 5, 0.0, mean_stream=True).eval()
    with pytest.raises(ValueError, match="mean stream needs each well's mean"):
        with_mean.streams(with_mean.encode(bags, mask), mask, None, None)


def test_models_saved_without_a_mean_stream_still_load():
    from momil.model.registry import model_from_hparams

    old = MoMIL(8, ["a", "b"], "abmil", 6, 5, 0.0)
    hparams = {k: v for k, v in old.hparams.items() if k != "mean_stream"}  # as saved before the stream existed
    loaded = model_from_hparams(hparams)
    loaded.load_state_dict(old.state_dict())
    assert not loaded.mean_stream


def test_output_calibration_is_the_identity_until_set_and_then_an_increasing_map_per_assay():
    from momil.model.calibration import OutputCalibration

    calibration = OutputCalibration(3)
    p = torch.rand(5, 3) * 0.98 + 0.01
    assert torch.equal(calibration(p), p)
    calibration.shift.copy_(torch.tensor([0.5, -1.0, 2.0]))
    calibration.scale.copy_(torch.tensor([2.0, 0.5, 1.0]))
    calibration.slope_bias.copy_(torch.tensor([1.5, -0.3]))
    logit = torch.log(p) - torch.log1p(-p)
    expected = torch.sigmoid(1.5 * (logit - calibration.shift) / calibration.scale - 0.3)
    assert torch.allclose(calibration(p), expected, atol=1e-6)
    assert torch.allclose(calibration(p[:, [2, 0]], [2, 0]), expected[:, [2, 0]], atol=1e-6)
    wells, assays = torch.tensor([0, 3, 4, 1]), torch.tensor([1, 1, 0, 2])
    assert torch.allclose(calibration.pairs(p[wells, assays], assays), expected[wells, assays], atol=1e-6)
    for t in range(3):  # the order of the wells within an assay is kept
        assert bool((torch.diff(calibration(p)[torch.argsort(p[:, t]), t]) > 0).all())


def test_models_saved_without_calibration_load_with_the_identity():
    model = MoMIL(8, ["a", "b"], "abmil", 6, 5, 0.0)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("calibration.")}
    loaded = MoMIL(8, ["a", "b"], "abmil", 6, 5, 0.0)
    loaded.load_state_dict(state)
    assert loaded.calibration.identity
