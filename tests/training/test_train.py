"""Training: schedule, resume equivalence after a kill at any epoch, and attention beating mean pooling."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from momil.data.bags import load_bags
from momil.data.pairs import WellPairs, wells_of
from momil.errors import MomilError
from momil.io.contract import LabelMatrix
from momil.io.store import InstanceStore, StoreWriter
from momil.training.checkpoints import load_model, save_model
from momil.training.fit import fit, predict_pairs
from momil.training.metrics import roc_auc
from momil.training.optim import resume_schedule, warmup_cosine
from momil.training.settings import TrainSettings


def _schedule_factors(warmup: int, total: int) -> list[float]:
    """The rate warmup_cosine gives each of ``total`` steps, as a fraction of the base rate."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = warmup_cosine(optimizer, warmup, total)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_warmup_then_cosine():
    factors = _schedule_factors(20, 100)
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == pytest.approx(1.0)
    assert factors[20] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert factors[99] < 0.01 and all(a >= b for a, b in zip(factors[20:], factors[21:]))


@pytest.mark.parametrize("warmup,total", [(20, 100), (0, 50), (1, 20), (5, 5), (30, 250)])
def test_schedule_equals_the_closed_form(warmup, total):
    """torch's LinearLR + CosineAnnealingLR recurse; they equal the closed form the schedule was written as."""

    def closed_form(step):
        if warmup and step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    assert _schedule_factors(warmup, total) == pytest.approx([closed_form(s) for s in range(total)], rel=1e-12)


def test_schedule_resumes_from_its_state_or_by_replay():
    param = torch.nn.Parameter(torch.zeros(1))
    expected = _schedule_factors(4, 30)
    for saved in (True, False):
        optimizer = torch.optim.AdamW([param], lr=1.0)
        first = warmup_cosine(optimizer, 4, 30)
        for _ in range(11):
            optimizer.step()
            first.step()
        state = optimizer.state_dict()
        resumed = torch.optim.AdamW([param], lr=1.0)
        scheduler = warmup_cosine(resumed, 4, 30)
        resumed.load_state_dict(state)
        resume_schedule(scheduler, first.state_dict() if saved else None, 11)
        rates = []
        for _ in range(11, 30):
            rates.append(resumed.param_groups[0]["lr"])
            resumed.step()
            scheduler.step()
        assert rates == pytest.approx(expected[11:], rel=1e-12)


def test_roc_auc_undefined_for_one_class():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.4])))
    assert roc_auc(np.array([0, 1]), np.array([0.2, 0.4])) == 1.0


def needle_screen(path, n_compounds=120, per_well=30, dim=8, responders=2, seed=0):
    """Wells where an active compound shows in `responders` instances only (a needle in the bag), and the
    bag's mean is swamped by a per-well nuisance offset: attention can find the needle, a mean cannot."""
    rng = np.random.default_rng(seed)
    direction = np.zeros(dim)
    direction[0] = 1.0
    active = rng.random(n_compounds) < 0.5
    rows = []
    with StoreWriter.create(path, dim=dim) as writer:
        for c in range(n_compounds):
            for r in range(2):
                bag = rng.normal(size=(per_well, dim))
                bag += rng.normal(scale=3.0) * direction  # nuisance shift of the whole well along the signal
                if active[c]:
                    bag[:responders, 0] += 8.0
                writer.add_bag(
                    {
                        "Metadata_Plate": f"P{r}",
                        "Metadata_Well": f"W{c:04d}",
                        "Metadata_Batch": "b",
                        "Metadata_Compound": f"c{c}",
                        "Metadata_ControlType": "trt",
                    },
                    bag,
                )
            rows.append((f"c{c}", "needle", int(active[c])))
    labels = LabelMatrix.from_long(pd.DataFrame(rows, columns=["Metadata_Compound", "assay", "label"]))
    return InstanceStore(path), labels


def _split(labels):
    compounds = labels.compounds
    return (
        compounds[: int(0.6 * len(compounds))],
        compounds[int(0.6 * len(compounds)) : int(0.8 * len(compounds))],
        compounds[int(0.8 * len(compounds)) :],
    )


def needle_fit(store, labels, **overrides):
    """One fit on the needle screen (60/20/20 split of its compounds) with small, fast settings and
    ``overrides``: the fit's result and its test AUC."""
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    train, val, test = (wells_of(store.wells, c) for c in _split(labels))
    base = {
        "projector_dim": 16,
        "head_dim": 16,
        "dropout": 0.0,
        "lr": 3e-3,
        "epochs": 40,
        "warmup_epochs": 2,
        "batch_wells": 16,
        "seed": 0,
    }
    settings = TrainSettings(**{**base, **overrides})
    result = fit(store, pairs, train, val, np.array([True]), settings, show_progress=False)
    bags, mask = load_bags(store, test)
    _, _, y = pairs.pairs(test)
    return result, roc_auc(y, result.model.predict(bags, mask).numpy()[:, 0])


def test_attention_beats_chance_and_mean_pooling(tmp_path):
    store, labels = needle_screen(tmp_path / "store", responders=3)
    scores = {}
    for head in ("dsmil", "abmil", "mean"):
        _, scores[head] = needle_fit(
            store,
            labels,
            head=head,
            patience=40,
            select_epoch="best",
            linear_floor=False,  # the heads' pooling alone: the well mean carries nothing here
        )
    assert scores["dsmil"] > 0.85 and scores["abmil"] > 0.85, scores
    assert scores["mean"] < 0.75, scores
    assert min(scores["dsmil"], scores["abmil"]) > scores["mean"] + 0.15, scores


def test_a_shared_attention_or_readout_finds_the_needle_that_mean_pooling_heads_miss(tmp_path):
    """Mean-pooling heads have no attention of their own; with --shared-attention the shared gated attention
    pools them and is trained through them, and with --shared-readout (the default) each head reads the shared
    attention's pooled vector."""
    store, labels = needle_screen(tmp_path / "store", responders=3)
    scores = {}
    for attention, readout in ((False, False), (True, False), (False, True)):
        result, scores[attention, readout] = needle_fit(
            store,
            labels,
            head="mean",
            select_epoch="last",
            mean_stream=False,
            calibrate=False,
            shared_attention=attention,
            shared_readout=readout,
        )
        assert (result.model.shared is not None) == (attention or readout)
    assert scores[True, False] > 0.85 and scores[False, False] < 0.75, scores
    # the readout's attention learns only through readout weights that start at zero: on one assay, with no
    # other assays' labels to learn where to look from, it finds the needle in part (0.76 against 0.63)
    assert scores[False, True] > scores[False, False] + 0.08, scores


def test_resume_gives_the_same_numbers(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=10)
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    train_c, val_c, _ = _split(labels)
    train, val = wells_of(store.wells, train_c), wells_of(store.wells, val_c)
    settings = TrainSettings(
        projector_dim=8, head_dim=8, lr=1e-2, epochs=6, warmup_epochs=2, patience=100, batch_wells=8, seed=3
    )
    whole = fit(store, pairs, train, val, np.array([True]), settings, tmp_path / "whole", show_progress=False)

    class Killed(Exception):
        pass

    def kill_at(epoch_to_die):
        def callback(epoch):
            if epoch == epoch_to_die:
                raise Killed

        return callback

    for die in (0, 3):
        folder = tmp_path / f"killed{die}"
        with pytest.raises(Killed):
            fit(
                store,
                pairs,
                train,
                val,
                np.array([True]),
                settings,
                folder,
                show_progress=False,
                on_epoch_end=kill_at(die),
            )
        resumed = fit(store, pairs, train, val, np.array([True]), settings, folder, show_progress=False)
        assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in whole.history]
        assert [h["val_auc"] for h in resumed.history] == [h["val_auc"] for h in whole.history]
        for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), name


def test_checkpoint_from_other_settings_refused(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=10, per_well=4)
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    wells = wells_of(store.wells, labels.compounds)
    fit(
        store,
        pairs,
        wells,
        wells,
        np.array([True]),
        TrainSettings(epochs=1, projector_dim=4, head_dim=4),
        tmp_path / "ck",
        show_progress=False,
    )
    with pytest.raises(MomilError, match="other settings or data"):
        fit(
            store,
            pairs,
            wells,
            wells,
            np.array([True]),
            TrainSettings(epochs=1, projector_dim=8, head_dim=4),
            tmp_path / "ck",
            show_progress=False,
        )


def test_same_seed_same_model_and_save_load(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=16, per_well=5)
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    wells = wells_of(store.wells, labels.compounds)
    settings = TrainSettings(epochs=2, projector_dim=4, head_dim=4, seed=7)
    a = fit(store, pairs, wells, wells, np.array([True]), settings, show_progress=False)
    b = fit(store, pairs, wells, wells, np.array([True]), settings, show_progress=False)
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(x, y)
    save_model(tmp_path / "m.pt", a.model, {"note": "test"})
    loaded, extra = load_model(tmp_path / "m.pt")
    bags, mask = load_bags(store, wells[:4])
    torch.testing.assert_close(loaded.predict(bags, mask), a.model.predict(bags, mask))
    assert extra == {"note": "test"}
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    with pytest.raises(MomilError, match="not a readable model file"):
        load_model(tmp_path / "bad.pt")


def test_no_labels_refused(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=4, per_well=3)
    pairs = WellPairs.build(store.wells, labels, ["other-assay"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MomilError, match="no training well carries a label"):
            fit(store, pairs, np.arange(4), np.arange(4), np.array([True]), show_progress=False)


def test_lazy_head_adamw_equals_adamw_when_every_head_is_used():
    from momil.model.momil import MoMIL
    from momil.training.fit import training_step
    from momil.training.optim import LazyHeadAdamW

    torch.manual_seed(0)
    bags = torch.randn(6, 5, 4)
    mask = torch.ones(6, 5, dtype=torch.bool)
    rows = np.repeat(np.arange(6), 3)
    assay = np.tile(np.arange(3), 6)
    label = (np.arange(18) % 2).astype(np.float32)
    models = []
    for lazy_heads in (False, True):
        torch.manual_seed(1)
        model = MoMIL(4, ["a", "b", "c"], "dsmil", 6, 5, dropout=0.0)
        if lazy_heads:
            lazy = LazyHeadAdamW(dict(model.heads.named_parameters()), 5e-4)
            optimizer = torch.optim.AdamW(model.projector.parameters(), lr=1e-2, weight_decay=5e-4)
        else:
            lazy, optimizer = None, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
        for step in range(5):
            training_step(
                model, bags, mask, rows, assay, label, optimizer, lazy, 1e-2 * (step + 1) / 5, torch.device("cpu")
            )
        models.append(model)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_lazy_update_is_adamw_per_head_with_its_own_step_count():
    """Each head (row) moves exactly as torch's AdamW moves it when stepped only in the steps where the head is
    used: its own bias-correction count (the case the removed vectorised fallback was the reference for)."""
    from momil.training.optim import LazyHeadAdamW

    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, 7))
    start = param.detach().clone()
    lazy = LazyHeadAdamW({"flat": param}, 5e-4)
    schedule = [[0, 2], [2, 3, 4], [2], [0, 1, 2, 3, 4]]
    grads = [torch.randn(len(rows), 7) for rows in schedule]
    for rows, grad in zip(schedule, grads):
        lazy.step(torch.tensor(rows), {"flat": grad}, 1e-2)
    assert lazy.steps.tolist() == [2, 1, 4, 2, 2]
    for head in range(5):
        reference = torch.nn.Parameter(start[head].clone())
        optimizer = torch.optim.AdamW([reference], lr=1e-2, weight_decay=5e-4)
        for rows, grad in zip(schedule, grads):
            if head in rows:
                reference.grad = grad[rows.index(head)].clone()
                optimizer.step()
        torch.testing.assert_close(param.detach()[head], reference.detach())


def test_lazy_heads_leave_unused_heads_untouched():
    from momil.model.momil import MoMIL
    from momil.training.fit import training_step
    from momil.training.optim import LazyHeadAdamW

    torch.manual_seed(0)
    model = MoMIL(4, ["a", "b", "c"], "abmil", 6, 5, dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.heads.named_parameters()}
    lazy = LazyHeadAdamW(dict(model.heads.named_parameters()), 5e-4)
    optimizer = torch.optim.AdamW(model.projector.parameters(), lr=1e-2)
    training_step(
        model,
        torch.randn(2, 3, 4),
        torch.ones(2, 3, dtype=torch.bool),
        np.array([0, 1]),
        np.array([0, 2]),
        np.array([1.0, 0.0], dtype=np.float32),
        optimizer,
        lazy,
        1e-2,
        torch.device("cpu"),
    )
    for name, param in model.heads.named_parameters():
        assert torch.equal(param[1], before[name][1])  # head "b" had no pair
        assert not torch.equal(param[0], before[name][0])


def test_amtl_loss_and_weights_by_hand():
    from momil.training.losses import amtl_weights, balanced_loss

    pair_loss = torch.tensor([1.0, 3.0, 4.0])
    task = torch.tensor([0, 0, 1])
    got = balanced_loss(pair_loss, task, torch.tensor([1.0, 3.0]))
    assert float(got) == pytest.approx((math.log(2.0) + 3 * math.log(4.0)) / 4, rel=1e-6)
    # a task without pairs in the step adds nothing
    assert float(balanced_loss(pair_loss, task, torch.tensor([1.0, 3.0, 100.0]))) == pytest.approx(float(got))
    weights = amtl_weights({0: 0.8, 1: float("nan"), 2: 0.95}, np.array([1.0, 0.9, 0.9]), 2.0)
    assert weights[0] == pytest.approx(0.04)  # achievement 0.8 -> (1 - 0.8)^2
    assert weights[2] == pytest.approx(1e-3)  # beyond its potential: achievement 1, the floor
    assert weights[1] == pytest.approx((0.04 + 0.0) / 2)  # no AUC: the mean weight


def test_amtl_training_runs_and_needs_potentials(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=8)
    extra = labels.to_long().assign(assay="copy")
    both = LabelMatrix.from_long(pd.concat([labels.to_long(), extra], ignore_index=True))
    pairs = WellPairs.build(store.wells, both, ["needle", "copy"])
    train, val, _ = (wells_of(store.wells, c) for c in _split(both))
    settings = TrainSettings(epochs=3, warmup_epochs=1, batch_wells=16, balancing="amtl", projector_dim=8, head_dim=8)
    with pytest.raises(MomilError, match="potential"):
        fit(store, pairs, train, val, np.array([True, False]), settings, show_progress=False)
    first = fit(
        store,
        pairs,
        train,
        val,
        np.array([True, False]),
        settings,
        tmp_path / "ck",
        show_progress=False,
        potentials=np.array([0.9, 0.9]),
    )
    assert len(first.history) == 3 and all(np.isfinite(h["train_loss"]) for h in first.history)
    again = fit(
        store,
        pairs,
        train,
        val,
        np.array([True, False]),
        settings,
        tmp_path / "ck",
        show_progress=False,
        potentials=np.array([0.9, 0.9]),
    )  # resumed from the finished checkpoint
    assert again.best_score == first.best_score


def test_smoothed_amtl_gradient_by_hand():
    from momil.training.losses import smoothed_balanced_loss

    losses = torch.tensor([1.0, 3.0, 4.0], requires_grad=True)
    task = torch.tensor([0, 0, 1])
    running = np.full(3, np.nan)  # task 2 never appears
    weights = torch.tensor([1.0, 3.0])
    smoothed_balanced_loss(losses, task, weights, running, np.array([0, 1])).backward()
    # first sight: the running loss is the observed mean (2 and 4); grad of pair i = w_t / (n_t L~_t sum w)
    assert running[:2].tolist() == [2.0, 4.0] and np.isnan(running[2])
    assert losses.grad.tolist() == pytest.approx([1 / (2 * 2 * 4), 1 / (2 * 2 * 4), 3 / (1 * 4 * 4)])
    # the next step moves the running loss by the EMA, and only for tasks present
    smoothed_balanced_loss(torch.tensor([6.0]), torch.tensor([0]), torch.tensor([1.0]), running, np.array([1]))
    assert running[1] == pytest.approx(0.9 * 4.0 + 0.1 * 6.0) and running[0] == 2.0


def test_keep_freed_memory_sets_glibc_thresholds_and_training_still_runs():
    import platform

    from momil.device import keep_freed_memory

    kept = keep_freed_memory()
    assert kept == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
    assert keep_freed_memory() == kept  # idempotent
    big = torch.ones(8 * 2**20)  # 32 MiB: allocated and freed as usual
    assert float(big.sum()) == 8 * 2**20


def test_select_epoch_last_keeps_the_end_of_the_schedule_and_best_the_best_epoch(tmp_path):
    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=10)
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    train_c, val_c, _ = _split(labels)
    train, val = wells_of(store.wells, train_c), wells_of(store.wells, val_c)
    common = dict(projector_dim=8, head_dim=8, lr=1e-2, epochs=8, warmup_epochs=1, batch_wells=8, seed=0)
    common["linear_floor"] = False  # the epochs alone: a floor's blend would rescore the fit
    last = fit(store, pairs, train, val, np.array([True]), TrainSettings(**common), show_progress=False)
    assert len(last.history) == 8 and last.best_epoch == 7
    assert last.best_score == last.history[-1]["val_auc"]  # the end's score ranks the grid point
    best = fit(
        store,
        pairs,
        train,
        val,
        np.array([True]),
        TrainSettings(**common, select_epoch="best", patience=2),
        show_progress=False,
    )
    scores = [h["val_auc"] for h in best.history]
    assert best.best_score == max(scores) and scores[best.best_epoch] == max(scores)
    assert len(best.history) <= best.best_epoch + 3  # stopped after 2 epochs without a better score
    # the model returned is the one of the best epoch: its validation score is the best one
    _, _, y, prob = predict_pairs(best.model, store, pairs.labelled_wells(val), pairs, torch.device("cpu"))
    assert roc_auc(y, prob) == pytest.approx(best.best_score)


def test_calibration_standardises_each_assay_on_validation_wells_and_keeps_the_order(tmp_path):
    from momil.training.calibration import MIN_SLOPE, label_levels

    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=10)
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    train_c, val_c, test_c = _split(labels)
    train, val, test = (wells_of(store.wells, c) for c in (train_c, val_c, test_c))
    settings = TrainSettings(projector_dim=8, head_dim=8, lr=1e-2, epochs=4, warmup_epochs=1, batch_wells=8)
    raw = fit(store, pairs, train, val, np.array([True]), dataclasses.replace(settings, calibrate=False), None, False)
    cal = fit(store, pairs, train, val, np.array([True]), settings, show_progress=False)
    assert raw.model.calibration.identity and not cal.model.calibration.identity
    slope, bias = cal.model.calibration.slope_bias.tolist()
    assert slope >= MIN_SLOPE and bias == 0.0  # the level is folded into the shift
    bags, mask = load_bags(store, pairs.labelled_wells(val))
    p = cal.model.predict(bags, mask).double()[:, 0]
    logit = torch.log(p) - torch.log1p(-p)  # = slope * z + level, z standardised over the validation wells
    assert float(logit.mean()) == pytest.approx(float(label_levels(pairs)[0]), abs=1e-4)
    assert float(logit.std(unbiased=False)) == pytest.approx(slope, rel=1e-3)
    bags, mask = load_bags(store, test)
    before, after = raw.model.predict(bags, mask)[:, 0], cal.model.predict(bags, mask)[:, 0]
    assert bool((torch.diff(after[torch.argsort(before)]) >= 0).all())  # same fit, same ranking


def test_the_calibration_slope_never_reads_test_labels_and_the_level_is_one_constant_per_assay(tmp_path):
    """The level of an assay is its rate over the whole label matrix, the same in every rotation, so the ranking pooled
    over rotations does not depend on it; the slope is fitted with the training and validation labels only."""
    from momil.training.calibration import fitted_slope, label_levels

    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=10)
    train_c, val_c, test_c = _split(labels)
    train, val, test = (wells_of(store.wells, c) for c in (train_c, val_c, test_c))
    settings = TrainSettings(projector_dim=8, head_dim=8, lr=1e-2, epochs=3, warmup_epochs=1, batch_wells=8)
    flipped = labels.to_long()
    flipped.loc[flipped["Metadata_Compound"].isin(test_c), "label"] = 1 - flipped["label"]
    results = []
    for table in (labels, LabelMatrix.from_long(flipped)):
        pairs = WellPairs.build(store.wells, table, ["needle"])
        results.append((fit(store, pairs, train, val, np.array([True]), settings, show_progress=False), pairs))
    (a, pa), (b, pb) = results
    assert a.model.calibration.slope_bias[0] == b.model.calibration.slope_bias[0]  # test labels: no say
    level_shift = (
        (label_levels(pa) - label_levels(pb))
        * a.model.calibration.scale.numpy()
        / float(a.model.calibration.slope_bias[0])
    )
    np.testing.assert_allclose(
        (b.model.calibration.shift - a.model.calibration.shift).numpy(), level_shift, rtol=1e-5, atol=1e-5
    )
    # the slope is the most likely one: recovered on labels drawn from a known logistic model
    rng = np.random.default_rng(0)
    x, offset = rng.normal(size=4000), rng.normal(scale=0.5, size=4000)
    y = rng.random(4000) < 1 / (1 + np.exp(-(2.0 * x + offset)))
    assert fitted_slope(x, offset, y) == pytest.approx(2.0, abs=0.15)


def test_imputed_labels_do_not_move_the_calibration_level(tmp_path):
    """A fit on measured plus imputed labels centres its probabilities on the measured labels' level: imputed ones
    differ between rotations, and a level that moved with them would scramble the ranking pooled over rotations."""
    from momil.training.calibration import label_levels

    store, labels = needle_screen(tmp_path / "store", n_compounds=40, per_well=10)
    train_c, val_c, _ = _split(labels)
    train, val = (wells_of(store.wells, c) for c in (train_c, val_c))
    long = labels.to_long()
    labels = LabelMatrix.from_long(long[~long["Metadata_Compound"].isin(train_c[::2])])  # half the training unlabelled
    measured = WellPairs.build(store.wells, labels, ["needle"])
    unlabelled = np.setdiff1d(train, measured.labelled_wells(train))
    imputed = pd.DataFrame({"well": unlabelled, "assay": "needle", "label": np.float32(1.0)})
    pairs = WellPairs.build(store.wells, labels, ["needle"], extra_wells=imputed)
    assert abs(label_levels(pairs)[0] - label_levels(measured)[0]) > 0.3  # the imputed actives move the rate
    settings = TrainSettings(projector_dim=8, head_dim=8, lr=1e-2, epochs=3, warmup_epochs=1, batch_wells=8)
    result = fit(store, pairs, train, val, np.array([True]), settings, show_progress=False, measured=measured)
    bags, mask = load_bags(store, measured.labelled_wells(val))
    p = result.model.predict(bags, mask).double()[:, 0]
    logit = torch.log(p) - torch.log1p(-p)
    assert float(logit.mean()) == pytest.approx(float(label_levels(measured)[0]), abs=1e-4)


def test_mean_mlp_is_standardised_with_the_training_wells_only(tmp_path):
    from momil.model.linear import well_means

    store, labels = needle_screen(tmp_path / "store", n_compounds=30, per_well=6)
    pairs = WellPairs.build(store.wells, labels, ["needle"])
    train_c, val_c, _ = _split(labels)
    train, val = (wells_of(store.wells, c) for c in (train_c, val_c))
    settings = TrainSettings(model="mean-mlp", projector_dim=8, head_dim=4, epochs=1, warmup_epochs=0, batch_wells=8)
    result = fit(store, pairs, train, val, np.array([True]), settings, show_progress=False)
    means = well_means(store, pairs.labelled_wells(train))
    np.testing.assert_allclose(result.model.input_mean.numpy(), means.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.model.input_scale.numpy(), means.std(0), rtol=1e-5)
