"""The linear floor inside a network (momil.model.floor, momil.training.floor): the floor is the mean-LR pipeline
folded to raw features, it changes nothing while the network trains, its share is the one that ranks the
validation wells best, and models without it are unchanged."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from momil.data.bags import load_bags
from momil.data.pairs import WellPairs, rotation_wells
from momil.io.contract import COMPOUND
from momil.model.baselines import MeanMLP, MultiLabelMIL
from momil.model.linear import fit_assay, well_means
from momil.model.momil import MoMIL
from momil.model.registry import model_from_hparams
from momil.simulate.screen import SimulateSettings
from momil.training.fit import fit, predict_pairs
from momil.training.floor import SHARES, blend_floor, linear_floor_weights
from momil.training.metrics import roc_auc, validation_score
from momil.training.settings import TrainSettings

from conftest import simulated_screen

CPU = torch.device("cpu")
PRIMARY = np.array([True, True, False, False])


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    settings = SimulateSettings(
        n_compounds=90,
        replicates=2,
        negcon_per_plate=8,
        dim=8,
        instances=12,
        n_assays=4,
        n_primary=2,
        n_targets=2,
        responder_fraction=0.6,
        effect_size=2.5,
        plate_effect=0.3,
        batch_effect=0.3,
        label_density=0.6,
        primary_density=0.9,
        hit_rate=0.4,
    )
    store, labels, folds = simulated_screen(tmp_path_factory.mktemp("floor"), settings, n_folds=3)
    _, wells = rotation_wells(store.wells, folds, 0)
    pairs = WellPairs.build(store.wells, labels, list(labels.assays))
    return store, labels, pairs, wells


def _hparams(kind, store, pairs, floor=True):
    return {
        "model": kind,
        "in_dim": store.dim,
        "assays": list(pairs.assays),
        "head": "abmil",
        "projector_dim": 8,
        "head_dim": 8,
        "dropout": 0.0,
        "shared_projector": True,
        "mean_stream": True,
        "linear_floor": floor,
    }


def test_the_floor_is_the_mean_lr_pipeline_on_raw_features(screen):
    store, _, pairs, wells = screen
    weight, bias = linear_floor_weights(store, wells["train"], pairs)
    train = np.unique(pairs.labelled_wells(np.asarray(wells["train"], np.int64)))
    rows, assay, label = pairs.pairs(train)
    compounds = store.wells[COMPOUND].astype(str).to_numpy()[train]
    profiles = pd.DataFrame(well_means(store, train)).groupby(compounds, sort=True).mean()
    for t in range(len(pairs.assays)):
        y = pd.Series(label[assay == t], index=compounds[rows[assay == t]]).groupby(level=0).first()
        model = fit_assay(profiles.loc[y.index].to_numpy(), y.to_numpy().astype(int))
        x = profiles.to_numpy()
        np.testing.assert_allclose(x @ weight[t] + bias[t], model.decision_function(x), rtol=1e-6, atol=1e-6)
        assert np.abs(weight[t]).sum() > 0  # every assay here has both classes among the training compounds


@pytest.mark.parametrize("kind", ["momil", "mean-mlp", "multilabel-mil"])
def test_a_floor_at_share_zero_is_the_network_alone(screen, kind):
    store, _, pairs, wells = screen
    torch.manual_seed(0)
    plain = model_from_hparams(_hparams(kind, store, pairs, floor=False)).eval()
    with_floor = model_from_hparams(_hparams(kind, store, pairs))
    with_floor.load_state_dict(plain.state_dict())  # a model saved without a floor loads with share 0
    with_floor.eval()
    weight, bias = linear_floor_weights(store, wells["train"], pairs)
    with_floor.floor.weight.copy_(torch.from_numpy(weight).float())
    with_floor.floor.bias.copy_(torch.from_numpy(bias).float())
    bags, mask = load_bags(store, wells["test"][:10])
    torch.testing.assert_close(with_floor.predict(bags, mask), plain.predict(bags, mask), rtol=0, atol=0)
    well, assay = torch.arange(10).repeat_interleave(2), torch.tensor([0, 1]).repeat(10)
    torch.testing.assert_close(
        with_floor.probability(with_floor(bags, mask, well, assay)),
        plain.probability(plain(bags, mask, well, assay)),
        rtol=0,
        atol=0,
    )
    # at share 1 the model ranks each assay's wells as the floor does
    with_floor.floor.share.fill_(1.0)
    means = torch.from_numpy(well_means(store, wells["test"][:10])).float()
    floor_logits = means @ torch.from_numpy(weight).float().T + torch.from_numpy(bias).float()
    prob = with_floor.predict(bags, mask)
    for t in range(len(pairs.assays)):
        assert np.array_equal(np.argsort(prob[:, t].numpy()), np.argsort(floor_logits[:, t].numpy()))


def test_the_share_is_the_one_that_ranks_the_validation_wells_best(screen):
    store, _, pairs, wells = screen
    torch.manual_seed(0)
    model = MoMIL(store.dim, list(pairs.assays), "abmil", 8, 8, 0.0, mean_stream=True, linear_floor=True)
    with torch.no_grad():  # a network that is pure noise, loud beside the floor
        start, stop, _ = model.heads._layout["c_w"]
        model.heads.flat[:, start:stop].normal_(0, 30.0)
    model.eval()
    share, score = blend_floor(model, store, wells["train"], wells["val"], pairs, PRIMARY, CPU)
    assert float(model.floor.share) == share and share in SHARES
    scores = {}
    for candidate in SHARES:
        model.floor.share.fill_(candidate)
        _, assay, label, prob = predict_pairs(model, store, wells["val"], pairs, CPU)
        scores[candidate] = validation_score(assay, label, prob, PRIMARY)[0]
    assert score == pytest.approx(max(scores.values())) and scores[share] == pytest.approx(score)
    assert share >= 0.5 and scores[1.0] > scores[0.0] + 0.05, scores  # the floor outranks the noise
    # the blend is saved with the model
    model.floor.share.fill_(share)
    again = model_from_hparams(model.hparams)
    again.load_state_dict(model.state_dict())
    bags, mask = load_bags(store, wells["test"][:8])
    torch.testing.assert_close(again.eval().predict(bags, mask), model.predict(bags, mask))


def test_models_without_a_floor_keep_their_form():
    for model in (MoMIL(4, ["a"], "abmil", 4, 4), MeanMLP(4, ["a"], 4, 4), MultiLabelMIL(4, ["a"], 4, 4)):
        assert model.floor is None and "linear_floor" not in model.hparams
        assert not any(key.startswith("floor.") for key in model.state_dict())


def test_the_floor_lifts_a_fit_where_the_well_mean_holds_the_signal(screen):
    store, _, pairs, wells = screen
    scores, shares = {}, {}
    for floor in (False, True):
        settings = TrainSettings(projector_dim=8, head_dim=8, epochs=3, warmup_epochs=1, linear_floor=floor, seed=0)
        result = fit(store, pairs, wells["train"], wells["val"], PRIMARY, settings, show_progress=False)
        bags, mask = load_bags(store, wells["test"])
        prob = result.model.predict(bags, mask).numpy()
        rows, assay, label = pairs.pairs(wells["test"])
        keep = PRIMARY[assay]
        scores[floor] = roc_auc(label[keep], prob[rows[keep], assay[keep]])
        shares[floor] = result.floor_share
    # three epochs do not teach the network the linear model; the blend leans on the floor
    assert shares[False] == 0.0 and shares[True] > 0, shares
    assert scores[True] > 0.65 and scores[True] > scores[False] + 0.05, scores  # measured 0.690 vs 0.616
