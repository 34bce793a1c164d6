"""Faults: a run killed (SIGKILL at a fixed point of the code), interrupted (Ctrl-C), out of disk space, or
racing a second run on the same output leaves no partial output, says what happened, and a rerun ends with the
same result as an uninterrupted run.

Kills use the code's fault points (``MOMIL_FAULT=name:n``, see :mod:`momil.faults`) in a subprocess; the
uninterrupted reference and the rerun go through the CLI's ``main`` in this process.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from momil.cli import main
from momil.errors import MomilError
from momil.io.paths import output_lock

from conftest import WORKSPACE_MODEL, prepared_workspace

MODEL = WORKSPACE_MODEL
SMALL = ["--projector-dim", 8, "--head-dim", 4, "--lr", "1e-3", "--warmup-epochs", 1]
GRID = ["--projector-dims", 8, "--head-dims", 4, "--lrs", "1e-3", "--warmup-epochs", 1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return prepared_workspace(tmp_path_factory.mktemp("faults-base"))


@pytest.fixture
def work(base, tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "w"
    shutil.copytree(base, folder)
    monkeypatch.chdir(folder)
    return folder


def run(*argv) -> int:
    return main([str(a) for a in argv] + ["--quiet"])


def killed(fault: str, *argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOMIL_FAULT": fault, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    return subprocess.run(
        [sys.executable, "-m", "momil", *map(str, argv), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def temporaries(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name]


def same_store(a: Path, b: Path) -> None:
    assert (a / "features.bin").read_bytes() == (b / "features.bin").read_bytes()
    wells = sorted(a.glob("wells-*.parquet"))[-1].name
    pd.testing.assert_frame_equal(pd.read_parquet(a / wells), pd.read_parquet(sorted(b.glob("wells-*.parquet"))[-1]))
    del wells


def same_tensors(a: Path, b: Path, key: str | None = None) -> None:
    x = torch.load(a, weights_only=True)
    y = torch.load(b, weights_only=True)
    x, y = (x[key], y[key]) if key else (x, y)
    assert x.keys() == y.keys()
    for name in x:
        assert torch.equal(x[name], y[name]), name


def same_csv(a: Path, b: Path, drop=("seconds",)) -> None:
    x, y = pd.read_csv(a), pd.read_csv(b)
    keep = [c for c in x.columns if c not in drop]
    pd.testing.assert_frame_equal(x[keep], y[keep])


# -------------------------------------------------------------------------------------- SIGKILL, then rerun
STAGES = {
    "ingest": (
        "store.write_rows:1",
        ["ingest", "--instances", "screen/instances.parquet", "--wells", "screen/wells.parquet", "--out", "{out}"],
        lambda a, b: same_store(a, b),
    ),
    "correct": ("store.write_rows:1", ["correct", "--store", "store", "--out", "{out}"], lambda a, b: same_store(a, b)),
    "extract": (
        "extract.field:2",
        [
            "extract",
            "--load-data",
            "render/load_data.parquet",
            "--wells",
            "render/wells.parquet",
            "--out",
            "{out}",
            "--backbone",
            "vit-tiny",
            "--size",
            64,
            "--tile",
            32,
            "--stride",
            32,
            "--device",
            "cpu",
        ],
        lambda a, b: same_store(a, b),
    ),
    "train": (
        "train.epoch:2",
        ["train", *MODEL, "--out", "{out}", "--epochs", 3, *SMALL],
        lambda a, b: (
            same_tensors(a / "model.pt", b / "model.pt", "state_dict"),
            same_csv(a / "history.csv", b / "history.csv"),
        ),
    ),
    "cv": (
        "train.epoch:1",
        ["cv", *MODEL, "--out", "{out}", "--rotations", "0", "--epochs", 2, *GRID],
        lambda a, b: same_csv(a / "metrics.csv", b / "metrics.csv"),
    ),
    "select": (
        "train.epoch:2",
        [
            "select",
            *MODEL,
            "--out",
            "{out}",
            "--rotations",
            "0",
            "--stages",
            "performance,influence",
            "--epochs",
            2,
            "--projector-dim",
            8,
            "--stl-head-dim",
            4,
            "--stl-lr",
            "1e-3",
            "--warmup-epochs",
            1,
        ],
        lambda a, b: same_csv(a / "rot0" / "selection.csv", b / "rot0" / "selection.csv"),
    ),
    "impute": (
        "train.epoch:1",
        ["impute", *MODEL, "--out", "{out}", "--epochs", 2, "--rounds", 1, *SMALL],
        lambda a, b: same_tensors(a / "model.pt", b / "model.pt", "state_dict"),
    ),
    "pretrain": (
        "pretrain.epoch:1",
        [
            "pretrain",
            "--load-data",
            "render/load_data.parquet",
            "--out",
            "{out}",
            "--method",
            "dinov2",
            "--backbone",
            "vit-tiny",
            "--size",
            64,
            "--global-size",
            32,
            "--local-size",
            16,
            "--local-crops",
            1,
            "--out-dim",
            32,
            "--epochs",
            2,
            "--batch-fields",
            4,
            "--device",
            "cpu",
        ],
        lambda a, b: (
            same_tensors(a / "backbone.pt", b / "backbone.pt", "state_dict"),
            same_csv(a / "history.csv", b / "history.csv"),
        ),
    ),
}
FAST = ("ingest", "train")


@pytest.mark.parametrize("stage", [s if s in FAST else pytest.param(s, marks=pytest.mark.slow) for s in STAGES])
def test_killed_run_resumes_to_the_same_result(stage, work):
    fault, argv, same = STAGES[stage]
    fill = lambda out: [str(a).replace("{out}", out) for a in argv]  # noqa: E731
    assert run(*fill("clean")) == 0
    result = killed(fault, *fill("resumed"))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert run(*fill("resumed")) == 0  # the rerun resumes (or restarts) and cleans what the kill left
    same(work / "clean", work / "resumed")
    assert temporaries(work) == []


def test_a_fault_point_kills_only_when_asked(monkeypatch):
    from momil import faults

    monkeypatch.delenv("MOMIL_FAULT", raising=False)
    faults.fault_point("train.epoch")  # no variable: nothing happens
    monkeypatch.setenv("MOMIL_FAULT", "other.point:1")
    faults.fault_point("train.epoch")  # another point: nothing happens


# ------------------------------------------------------------------------------------ threads, Ctrl-C, disk
def test_a_reader_thread_error_ends_extract_instead_of_hanging(work, monkeypatch):
    import momil.imaging.extract as extract_module

    def broken(*args, **kwargs):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(extract_module, "tile_field", broken)
    outcome = {}

    def target():
        try:
            outcome["code"] = run(
                "extract",
                "--load-data",
                "render/load_data.parquet",
                "--wells",
                "render/wells.parquet",
                "--out",
                "x",
                "--backbone",
                "vit-tiny",
                "--size",
                64,
                "--tile",
                32,
                "--stride",
                32,
                "--device",
                "cpu",
            )
        except BaseException as err:  # noqa: BLE001
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "extract hangs when a reader thread raises"
    assert outcome.get("code") == 2, outcome
    assert not Path("x").exists()


def test_reader_error_message_names_the_field(work, monkeypatch, capsys):
    import momil.imaging.extract as extract_module

    monkeypatch.setattr(extract_module, "tile_field", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad tile")))
    assert (
        run(
            "extract",
            "--load-data",
            "render/load_data.parquet",
            "--wells",
            "render/wells.parquet",
            "--out",
            "x",
            "--backbone",
            "vit-tiny",
            "--size",
            64,
            "--tile",
            32,
            "--stride",
            32,
            "--device",
            "cpu",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "reading field plate" in err and "ValueError: bad tile" in err


def test_ctrl_c_leaves_no_model_and_the_rerun_resumes(work, monkeypatch, capsys):
    import momil.training.fit as train_module

    argv = ["train", *MODEL, "--epochs", 3, *SMALL]
    assert run(*argv, "--out", "clean") == 0

    def interrupt(name):
        if name == "train.epoch":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "fault_point", interrupt)
    assert run(*argv, "--out", "again") == 130
    assert "interrupted" in capsys.readouterr().err
    assert not Path("again/model.pt").exists() and Path("again/checkpoint/last.pt").exists()
    monkeypatch.undo()
    monkeypatch.chdir(work)
    assert run(*argv, "--out", "again") == 0
    same_tensors(Path("clean/model.pt"), Path("again/model.pt"), "state_dict")


def test_sigterm_mid_epoch_checkpoints_that_step_and_the_rerun_equals_an_uninterrupted_run(work):
    argv = ["train", *MODEL, "--epochs", 2, *SMALL, "--batch-wells", 4]
    assert run(*argv, "--out", "clean") == 0
    stopped = killed("train.step:3:TERM", *argv, "--out", "again")
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped by SIGTERM in epoch 0 after step 3" in stopped.stderr
    saved = torch.load("again/checkpoint/last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 0 and saved["state"]["step"] == 3 and saved["state"]["partial"]["steps"] == 3
    assert not Path("again/model.pt").exists()
    assert run(*argv, "--out", "again") == 0
    same_tensors(Path("clean/model.pt"), Path("again/model.pt"), "state_dict")
    same_csv(Path("clean/history.csv"), Path("again/history.csv"))


def test_sigterm_mid_epoch_of_pretraining_checkpoints_that_step_and_the_rerun_equals_an_uninterrupted_run(work):
    argv = [a for a in STAGES["pretrain"][1] if a != "{out}"]
    argv[argv.index("--batch-fields") + 1] = 2  # several steps per epoch
    out = argv.index("--out")
    clean = [*argv[: out + 1], "clean", *argv[out + 1 :]]
    again = [*argv[: out + 1], "again", *argv[out + 1 :]]
    assert run(*clean) == 0
    stopped = killed("pretrain.step:2:TERM", *again)
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped by SIGTERM in epoch 0 after step 2" in stopped.stderr
    saved = torch.load("again/checkpoint.pt", weights_only=True)
    state = saved["state"]
    assert state["epoch"] == 0 and state["step"] == 2 and len(state["partial"]["losses"]) == 2
    assert not Path("again/backbone.pt").exists()
    assert run(*again) == 0
    same_tensors(Path("clean/backbone.pt"), Path("again/backbone.pt"), "state_dict")
    same_csv(Path("clean/history.csv"), Path("again/history.csv"))


def test_a_full_disk_is_reported_and_leaves_nothing(work, monkeypatch, capsys):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    code = run("ingest", "--instances", "screen/instances.parquet", "--wells", "screen/wells.parquet", "--out", "s")
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "nothing was committed" in err
    assert not Path("s").exists() and temporaries(work) == []


def test_a_second_run_on_the_same_output_is_refused(work, capsys):
    with output_lock("s"):
        code = run("ingest", "--instances", "screen/instances.parquet", "--wells", "screen/wells.parquet", "--out", "s")
        assert code == 2 and "another momil run" in capsys.readouterr().err
    assert not Path("s").exists()
    assert (
        run("ingest", "--instances", "screen/instances.parquet", "--wells", "screen/wells.parquet", "--out", "s") == 0
    )  # the lock is gone with the first run
    with pytest.raises(MomilError, match="another momil run"), output_lock("t"), output_lock("t"):
        pass


def test_stale_temporaries_of_killed_runs_are_cleaned(work):
    stale = Path(".s.tmp-999999999-deadbeef")
    stale.mkdir()
    (stale / "features.bin").write_bytes(b"partial")
    live = Path(f".s.tmp-{os.getpid()}-cafe0000")
    live.mkdir()
    assert (
        run("ingest", "--instances", "screen/instances.parquet", "--wells", "screen/wells.parquet", "--out", "s") == 0
    )
    assert not stale.exists() and live.exists()  # a live run's temporary is left alone


def test_an_undefined_probe_auc_reads_undefined():
    from momil.protocol.benchmark import table3_markdown

    table3 = pd.DataFrame(
        {
            "assay": ["a", "a"],
            "primary": ["p", "p"],
            "source": ["single-task model on the assay", "MoMIL"],
            "shots": ["all", "5"],
            "auc_mean": [np.nan, np.nan],
            "auc_sd": [np.nan, np.nan],
        }
    )
    text = table3_markdown(table3)
    assert "nan" not in text and text.count("undefined") == 2
