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


def momil(*argv, ranks: int = 1, nnodes: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    """``momil ARGV`` as one process, or under torchrun with ``ranks`` processes (gloo, localhost)."""
    args = [str(a) for a in argv] + ["--quiet"]
    env = {**os.environ, "MOMIL_NO_PROGRESS": "1", "MOMIL_THREADS": "1"}
    if ranks == 1:
        command = [sys.executable, "-m", "momil", *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "momil", *args,
        ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
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
