"""torchrun (gloo, 2 processes on this machine): the distributed stages give what one process gives.

Each test launches ``python -m torch.distributed.run --nproc-per-node 2 -m momil <stage> ...``, the README's
command, against the same command run as one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from momil.io.store import InstanceStore

from conftest import render_screen


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def momil(*argv, ranks: int = 1, timeout: int = 300, code: int = 0, env=None) -> subprocess.CompletedProcess:
    """``momil ARGV`` as one process, or under torchrun with ``ranks`` processes (gloo, localhost)."""
    args = [str(a) for a in argv] + ["--quiet"]
    env = {**os.environ, "MOMIL_NO_PROGRESS": "1", "MOMIL_THREADS": "1", **(env or {})}
    if ranks == 1:
        command = [sys.executable, "-m", "momil", *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "momil", *args,
        ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == code, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render_screen(tmp_path_factory.mktemp("rendered") / "screen", n_compounds=6, sites=2)


EXTRACT = ["--backbone", "vit-tiny", "--size", 64, "--tile", 32, "--stride", 32, "--batch-tiles", 8]
EXTRACT += ["--dtype", "float32", "--device", "cpu"]


def test_extract_on_two_ranks_makes_the_one_process_store(rendered, tmp_path):
    inputs = ["--load-data", rendered / "load_data.parquet", "--wells", rendered / "wells.parquet"]
    momil("extract", *inputs, "--out", tmp_path / "one", *EXTRACT, "--no-drop-background")
    done = momil("extract", *inputs, "--out", tmp_path / "two", *EXTRACT, "--no-drop-background", ranks=2)
    one, two = InstanceStore(tmp_path / "one"), InstanceStore(tmp_path / "two")
    assert done.stdout.count("instance store written") == 1  # rank 0 reports, the other rank is silent
    assert one.n_wells == two.n_wells and one.n_instances == two.n_instances > 0
    assert one.wells.equals(two.wells)
    np.testing.assert_allclose(np.asarray(two.features), np.asarray(one.features), atol=1e-5, rtol=0)
    for well in range(one.n_wells):
        assert one.instance_meta(well).equals(two.instance_meta(well))
    assert not (tmp_path / "two.extract").exists()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from conftest import prepared_workspace

    return prepared_workspace(tmp_path_factory.mktemp("workspace"))


def _train(workspace, out, ranks, *extra, code=0, env=None):
    inputs = ["--store", workspace / "corr", "--labels", workspace / "screen" / "labels.parquet"]
    inputs += ["--folds", workspace / "folds.parquet", "--assays", workspace / "screen" / "assays.parquet"]
    # a fixed schedule, no dropout (each rank draws its own masks) and 8 wells per step, shared by the ranks
    fixed = ["--epochs", 3, "--warmup-epochs", 1, "--select-epoch", "last", "--dropout", 0, "--batch-wells", 8]
    return momil("train", *inputs, "--out", out, *fixed, "--device", "cpu", *extra, ranks=ranks, code=code, env=env)


@pytest.mark.parametrize("heads", ["--lazy-heads", "--no-lazy-heads"])
def test_train_on_two_ranks_gives_the_one_process_losses_metrics_and_weights(workspace, tmp_path, heads):
    import pandas as pd
    import torch

    _train(workspace, tmp_path / "one", 1, heads)
    done = _train(workspace, tmp_path / "two", 2, heads)
    assert done.stdout.count("model written to") == 1
    one, two = pd.read_csv(tmp_path / "one" / "history.csv"), pd.read_csv(tmp_path / "two" / "history.csv")
    assert len(one) == len(two) == 3
    for column in ("train_loss", "val_auc", "val_loss", "lr"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-5, atol=1e-6, err_msg=column)
    # the shared weights agree to float rounding; Adam turns the rounding noise of head weights whose gradient is
    # ~0 into steps of the learning rate's size, so the heads are compared by what they compute
    w1 = torch.load(tmp_path / "one" / "model.pt", weights_only=True)["state_dict"]
    w2 = torch.load(tmp_path / "two" / "model.pt", weights_only=True)["state_dict"]
    for name in ("projector.0.weight", "projector.0.bias"):
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
    p1 = pd.read_parquet(tmp_path / "one" / "model_validation.parquet")
    p2 = pd.read_parquet(tmp_path / "two" / "model_validation.parquet")
    assert p1[["Metadata_Compound", "assay", "label"]].equals(p2[["Metadata_Compound", "assay", "label"]])
    np.testing.assert_allclose(p2["probability"], p1["probability"], atol=1e-5)


def test_resume_with_another_world_size_is_refused(workspace, tmp_path):
    _train(workspace, tmp_path / "run", 2)
    done = _train(workspace, tmp_path / "run", 1, code=2)  # same settings: it would resume the 2-rank checkpoint
    assert "written by a run on 2 process(es); this run has 1" in done.stderr


def test_sigterm_on_one_rank_stops_every_rank_at_that_step_and_the_rerun_equals_an_uninterrupted_run(
    workspace, tmp_path
):
    """A preemption signal reaching rank 1 alone: both ranks stop after the same step, rank 0 writes the checkpoint
    of that step (with both ranks' RNG), and the resumed run ends where an uninterrupted 2-rank run ends."""
    import pandas as pd
    import torch

    _train(workspace, tmp_path / "clean", 2, "--batch-wells", 4)
    stopped = _train(
        workspace, tmp_path / "run", 2, "--batch-wells", 4, code=1,
        env={"MOMIL_FAULT": "train.step:3:TERM", "MOMIL_FAULT_RANK": "1"},
    )  # fmt: skip
    assert "stopped by SIGTERM in epoch 0 after step 3" in stopped.stderr
    saved = torch.load(tmp_path / "run" / "checkpoint" / "last.pt", weights_only=True)
    assert saved["state"]["partial"]["steps"] == 3 and len(saved["rank_torch_rng"]) == 2
    _train(workspace, tmp_path / "run", 2, "--batch-wells", 4)
    one, two = pd.read_csv(tmp_path / "clean" / "history.csv"), pd.read_csv(tmp_path / "run" / "history.csv")
    for column in ("train_loss", "val_auc", "val_loss", "lr"):
        np.testing.assert_allclose(two[column], one[column], rtol=1e-6, atol=1e-7, err_msg=column)
    w1 = torch.load(tmp_path / "clean" / "model.pt", weights_only=True)["state_dict"]
    w2 = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-6, atol=1e-7, msg=name)


def _cv(workspace, out, ranks, *extra, code=0):
    inputs = ["--store", workspace / "corr", "--labels", workspace / "screen" / "labels.parquet"]
    inputs += ["--folds", workspace / "folds.parquet", "--assays", workspace / "screen" / "assays.parquet"]
    fixed = ["--epochs", 2, "--warmup-epochs", 1, "--select-epoch", "last", "--dropout", 0, "--batch-wells", 8]
    fixed += ["--projector-dims", 8, "--head-dims", 4, "--lrs", "1e-2,3e-3", "--rotations", "0,1", "--device", "cpu"]
    return momil("cv", *inputs, "--out", out, *fixed, *extra, ranks=ranks, code=code)


def test_cv_on_two_ranks_gives_the_one_process_grid_choices_and_predictions(workspace, tmp_path):
    """Every rank walks the protocol; each of its 4 fits (2 rotations x 2 learning rates) is split over the ranks,
    and rank 0 writes the models, predictions and metrics."""
    import pandas as pd

    _cv(workspace, tmp_path / "one", 1)
    done = _cv(workspace, tmp_path / "two", 2)
    assert done.stdout.count("cross-validation (mtl-all") == 1
    s1, s2 = pd.read_csv(tmp_path / "one" / "selections.csv"), pd.read_csv(tmp_path / "two" / "selections.csv")
    assert s1[["test_fold", "lr", "selected"]].equals(s2[["test_fold", "lr", "selected"]])
    np.testing.assert_allclose(s2["val_auc"], s1["val_auc"], atol=1e-6)
    keys = ["Metadata_Compound", "assay", "fold"]
    p1 = pd.read_parquet(tmp_path / "one" / "compound_predictions.parquet").sort_values(keys, ignore_index=True)
    p2 = pd.read_parquet(tmp_path / "two" / "compound_predictions.parquet").sort_values(keys, ignore_index=True)
    assert p1[keys].equals(p2[keys]) and len(p1) > 0
    np.testing.assert_allclose(p2["probability"], p1["probability"], atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two" / "models").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "models").iterdir()
    )


def test_cv_selection_and_imputation_are_refused_under_torchrun(workspace, tmp_path):
    done = _cv(workspace, tmp_path / "imputing", 2, "--impute", code=1)
    assert "under torchrun momil cv splits each fit's wells" in done.stderr
    assert not (tmp_path / "imputing" / "summary.json").exists()


PRETRAIN = ["--backbone", "vit-tiny", "--size", 64, "--global-size", 32, "--local-size", 16, "--local-crops", 1]
PRETRAIN += ["--out-dim", 32, "--epochs", 2, "--warmup-epochs", 1, "--device", "cpu"]


@pytest.mark.parametrize("method", ["dino", "dinov2"])
def test_pretrain_on_two_ranks_gives_the_one_process_losses(rendered, tmp_path, method):
    """8 fields, a global batch of 4 (4 on one process, 2 on each of two ranks): the same crops, masks, Sinkhorn
    targets over the whole batch, centre statistics and gradients (KoLeo, taken within each rank's fields as
    DINOv2 does, is left out)."""
    import pandas as pd
    import torch

    fields = rendered / "load_data.parquet"
    assert len(pd.read_parquet(fields)) >= 8
    common = ["pretrain", "--load-data", fields, "--method", method, *PRETRAIN, "--koleo-weight", 0]
    momil(*common, "--out", tmp_path / "one", "--batch-fields", 4)
    momil(*common, "--out", tmp_path / "two", "--batch-fields", 2, ranks=2)
    one, two = pd.read_csv(tmp_path / "one" / "history.csv"), pd.read_csv(tmp_path / "two" / "history.csv")
    assert len(one) == len(two) == 2
    for column in [c for c in one.columns if c not in ("seconds", "koleo")]:  # koleo: per rank, weight 0
        np.testing.assert_allclose(two[column], one[column], rtol=1e-4, atol=1e-5, err_msg=column)
    a = torch.load(tmp_path / "one" / "backbone.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "two" / "backbone.pt", weights_only=False)["state_dict"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)


def test_two_nodes_on_localhost_make_the_one_process_store(rendered, tmp_path):
    """``--nnodes 2``: two launchers (node ranks 0 and 1, one process each) meeting at one rendezvous point, as on
    two machines of a cluster; the store equals one process's."""
    inputs = ["--load-data", rendered / "load_data.parquet", "--wells", rendered / "wells.parquet"]
    momil("extract", *inputs, "--out", tmp_path / "one", *EXTRACT, "--no-drop-background")
    port, env = _free_port(), {**os.environ, "MOMIL_NO_PROGRESS": "1", "MOMIL_THREADS": "1"}
    args = ["extract", *inputs, "--out", tmp_path / "two", *EXTRACT, "--no-drop-background", "--quiet"]
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "momil",
                *map(str, args),
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for node in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=300) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "instance store written" in outputs[0][0] and "instance store written" not in outputs[1][0]
    one, two = InstanceStore(tmp_path / "one"), InstanceStore(tmp_path / "two")
    np.testing.assert_allclose(np.asarray(two.features), np.asarray(one.features), atol=1e-5, rtol=0)


def test_a_stage_that_does_not_run_distributed_is_refused_under_torchrun(workspace, tmp_path):
    done = momil("correct", "--store", workspace / "store", "--out", tmp_path / "c", ranks=2, code=1)
    assert "momil correct does not run under torchrun" in done.stderr
    assert not (tmp_path / "c").exists()
