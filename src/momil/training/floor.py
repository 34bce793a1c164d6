"""Fitting a model's linear floor and choosing its share on the validation wells (see :mod:`momil.model.floor`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from momil.data.bags import bag_batches
from momil.data.pairs import WellPairs
from momil.io.contract import COMPOUND
from momil.io.store import InstanceStore
from momil.model.linear import fit_assay, well_means
from momil.model.ops import attention_pool, mean_weights
from momil.training.inference import predict_pairs

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the linear floor's share of the blend, chosen on the validation wells


def linear_floor_weights(
    store: InstanceStore, train_wells: np.ndarray, pairs: WellPairs, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per assay of ``pairs``, the ``mean-lr`` baseline's logistic regression
    (:func:`momil.model.linear.fit_assay`: compound-mean profiles, standardised, C by inner CV) on the labelled
    training compounds, folded back from standardised to raw features: ``weight`` (T, D), ``bias`` (T,) with
    logit = weight . mean + bias. An assay whose training labels hold one class gets zeros."""
    n_assays = len(pairs.assays)
    weight, bias = np.zeros((n_assays, store.dim)), np.zeros(n_assays)
    wells = np.unique(pairs.labelled_wells(np.asarray(train_wells, np.int64)))
    if len(wells) == 0:
        return weight, bias
    well_compound = store.wells[COMPOUND].astype(str).to_numpy()[wells]
    profiles = pd.DataFrame(well_means(store, wells)).groupby(well_compound, sort=True).mean()
    rows, assay, label = pairs.pairs(wells)
    labels = pd.DataFrame({"compound": well_compound[rows], "assay": assay, "label": label})
    labels = labels.groupby(["assay", "compound"], sort=True)["label"].first()
    for t, y in labels.groupby(level="assay"):
        compounds = np.asarray(y.index.get_level_values("compound"))
        model = fit_assay(profiles.loc[compounds].to_numpy(), y.to_numpy().astype(int), seed)
        if model is None:
            continue
        scaler, regression = model[0], model[-1]
        coef = regression.coef_[0] / scaler.scale_
        weight[t] = coef
        bias[t] = float(regression.intercept_[0]) - float(coef @ scaler.mean_)
    return weight, bias


def _sd(logits: np.ndarray) -> np.ndarray:
    sd = logits.std(axis=0)
    return np.where(sd > 1e-6, sd, 1.0)


@torch.no_grad()
def blend_floor(
    model,
    store: InstanceStore,
    train_wells: np.ndarray,
    val_wells: np.ndarray,
    pairs: WellPairs,
    primary: np.ndarray,
    device,
    seed: int = 0,
) -> tuple[float, float]:
    """Fit ``model.floor`` on ``train_wells``, put the network's and the floor's logits on one scale (their
    standard deviations over ``val_wells``) and set the floor's share to the value of :data:`SHARES` whose
    blend ranks the validation pairs best (:func:`momil.training.metrics.validation_score`, the score that ranks
    grid points; a tie goes to the share nearer 1/2). Returns (share, its validation score); (0, NaN), the
    network alone, when the validation wells hold no assay with both classes. The model must be in the state
    training left it (share 0). On validation folds of 10-100 compounds per primary assay the chosen share jumps
    between 0 and 1 from one rotation to the next (the quality panel); judging it on every assay's validation
    pairs instead did no better (few-cells 0.653 against 0.685, mean-weak 0.577 against 0.588)."""
    from momil.training.metrics import validation_score

    floor = model.floor
    weight, bias = linear_floor_weights(store, train_wells, pairs, seed)
    floor.weight.copy_(torch.from_numpy(weight).float())
    floor.bias.copy_(torch.from_numpy(bias).float())
    wells = np.asarray(val_wells, dtype=np.int64)
    if len(wells) < 2:
        return 0.0, float("nan")
    model.eval()
    network, linear = [], []
    for _, bags, mask in bag_batches(store, wells, 64, device):
        p = model.predict(bags, mask).double().clamp(1e-12, 1 - 1e-12)
        network.append((torch.log(p) - torch.log1p(-p)).cpu().numpy())
        linear.append(floor.logits(attention_pool(mean_weights(mask, bags.dtype), bags)).cpu().numpy())
    floor.network_sd.copy_(torch.from_numpy(_sd(np.concatenate(network))).float())
    floor.floor_sd.copy_(torch.from_numpy(_sd(np.concatenate(linear))).float())
    best = None
    for share in SHARES:
        floor.share.fill_(share)
        _, assay, label, prob = predict_pairs(model, store, wells, pairs, device)
        score, _ = validation_score(assay, label, prob, primary)
        if np.isnan(score):
            break
        key = (round(score, 12), -abs(share - 0.5))
        if best is None or key > best[0]:
            best = (key, share, score)
    if best is None:
        floor.share.zero_()
        floor.network_sd.fill_(1.0)
        floor.floor_sd.fill_(1.0)
        return 0.0, float("nan")
    floor.share.fill_(best[1])
    return best[1], best[2]
