"""The protocol's fan-out (momil.protocol.executor, `momil cv --executor`): processes and Ray give the local
executor's results, a killed worker's fits are resumed, and a missing Ray is refused naming the extra."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from momil.errors import MomilError
from momil.protocol.cv import CVSettings, cross_validate
from momil.protocol.executor import check_executor
from momil.simulate.screen import SimulateSettings
from momil.training.settings import TrainSettings

from conftest import simulated_screen

TRAIN = TrainSettings(projector_dim=8, head_dim=8, epochs=3, warmup_epochs=1, batch_wells=16, seed=0)
CV = CVSettings(projector_dims="8", head_dims="8", lrs="3e-3,1e-3", rotations="0,1")


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    settings = SimulateSettings(
        n_compounds=40, replicates=2, negcon_per_plate=8, dim=6, instances=8, n_assays=4, n_primary=2, n_targets=2,
        label_density=0.5, primary_density=0.9,
    )  # fmt: skip
    root = tmp_path_factory.mktemp("executor")
    store, labels, folds = simulated_screen(root, settings, n_folds=3)
    primary = list(labels.assays[:2])
    local = cross_validate(store, labels, folds, primary, root / "local", CV, TRAIN, show_progress=False)
    return root, store, labels, folds, primary, local


def _same(a, b):
    keys = ["Metadata_Compound", "assay", "fold"]
    left = a.compound_predictions.sort_values(keys).reset_index(drop=True)
    right = b.compound_predictions.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(left[keys], right[keys])
    np.testing.assert_allclose(left["probability"], right["probability"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.metrics["roc_auc"], b.metrics["roc_auc"], atol=1e-6)


def test_processes_give_the_local_results(screen):
    root, store, labels, folds, primary, local = screen
    cv = dataclasses.replace(CV, executor="processes", workers=2, threads=1)
    fanned = cross_validate(store, labels, folds, primary, root / "processes", cv, TRAIN, show_progress=False)
    _same(local, fanned)
    assert len(list((root / "processes" / "runs").glob("rot*/model0/grid*/last.pt"))) == 4


def test_a_killed_worker_is_resumed_and_the_result_is_unchanged(screen, monkeypatch):
    root, store, labels, folds, primary, local = screen
    # every worker kills itself at its 4th epoch (its second fit, of 3 epochs): the pool breaks, is started again
    # and resumes the fits in flight from their checkpoints. Which worker takes which fit is up to the pool, so a
    # restarted pool can break again (each attempt still finishes at least 3 epochs of the 12): allow enough restarts
    import momil.protocol.executor as executor

    monkeypatch.setattr(executor, "ATTEMPTS", 6)
    monkeypatch.setenv("MOMIL_FAULT", "train.epoch:4")
    cv = dataclasses.replace(CV, executor="processes", workers=2, threads=1)
    fanned = cross_validate(store, labels, folds, primary, root / "killed", cv, TRAIN, show_progress=False)
    _same(local, fanned)


def test_selection_inside_cv_fans_out_its_single_assay_models_and_grid(screen, monkeypatch):
    """cv --select on processes: each rotation's single-assay models, then its grid points, are the workers' tasks;
    the selections and test predictions are the local run's."""
    import momil.protocol.cv as cv_module
    import momil.protocol.single_assay as single_assay
    from momil.protocol.selection import SelectSettings

    root, store, labels, folds, primary, _ = screen
    select = SelectSettings(stages="performance", th_perf=0.5, stl_head_dim=8)
    cv = dataclasses.replace(CV, select=True)
    local = cross_validate(store, labels, folds, primary, root / "sel-local", cv, TRAIN, False, select=select)

    def not_here(*args, **kwargs):
        raise AssertionError("a fit ran in the driver, not in a worker")

    monkeypatch.setattr(single_assay, "fit", not_here)
    trained_elsewhere = cv_module.fit

    def finished_only(*args, **kwargs):  # the walk only reads back the fits the workers finished
        if not (args[6] / "last.pt").exists():
            not_here()
        return trained_elsewhere(*args, **kwargs)

    monkeypatch.setattr(cv_module, "fit", finished_only)
    workers = dataclasses.replace(cv, executor="processes", workers=2, threads=1)
    fanned = cross_validate(store, labels, folds, primary, root / "sel-fanned", workers, TRAIN, False, select=select)
    pd.testing.assert_frame_equal(
        fanned.assay_selection.drop(columns=["perf_auc"]), local.assay_selection.drop(columns=["perf_auc"])
    )
    np.testing.assert_allclose(fanned.assay_selection["perf_auc"], local.assay_selection["perf_auc"], atol=1e-4)
    _same(local, fanned)


def test_ray_gives_the_local_results(screen):
    ray = pytest.importorskip("ray", reason="Ray is in the test extra; this machine's environment lacks it")
    root, store, labels, folds, primary, local = screen
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cv = dataclasses.replace(CV, executor="ray", threads=1)
        fanned = cross_validate(store, labels, folds, primary, root / "ray", cv, TRAIN, show_progress=False)
    finally:
        ray.shutdown()
    _same(local, fanned)


def test_executor_settings_are_checked(monkeypatch):
    with pytest.raises(MomilError, match="--executor must be one of"):
        check_executor("slurm", 2)
    with pytest.raises(MomilError, match="--workers"):
        check_executor("processes", 0)
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(MomilError, match=r'pip install "momil\[ray\]"'):
        check_executor("ray", 2)
