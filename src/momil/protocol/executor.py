"""The protocol's fan-out: independent fits run by a pool of local processes or on a Ray cluster.

A cross-validation is many independent fits (rotations x model sets x grid points), and assay selection one
single-assay model per candidate. Each is a :class:`FitTask` or a :class:`SingleAssayTask` whose result lives in
its own folder (``fit``'s checkpoint, the single-assay model file), so the executor only has to run the tasks; the
protocol then walks its fits in order as it always does and finds each one finished (``fit`` resumes a complete
checkpoint without training, a single-assay model with the same signature is reused). A lost worker or a killed
driver loses at most the fits in flight: their checkpoints stay behind and the next attempt resumes them. Results
equal the local executor's within floating point (a worker uses its own number of torch threads, which can change
the order of sums).

* ``local``: the fits run one after another in this process (no fan-out);
* ``processes``: a pool of ``workers`` spawned processes on this machine, each with ``threads`` torch threads
  (default: the machine's cores divided among the workers);
* ``ray``: one Ray task per fit (``num_cpus=1``) on the cluster at ``ray_address`` (or a local one);
  Ray retries a task whose worker died. Ray is an optional extra: ``pip install "momil[ray]"``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from momil.config import Settings, setting
from momil.errors import MomilError

EXECUTORS = ("local", "processes", "ray")
ATTEMPTS = 3  # a pool whose worker died is started again this many times in all


@dataclasses.dataclass
class ExecutorSettings(Settings):
    """Who runs the protocol's independent fits (`momil cv`, `select`, `benchmark`); in a TOML file, the
    ``[executor]`` table of every one of them (``momil cv``'s ``[cv]`` table may hold the same keys, and wins)."""

    shared_table: ClassVar[str] = "executor"

    executor: str = setting(
        "local",
        '"local" (one fit after another), "processes" (a pool of --workers processes) or "ray" (a Ray cluster, '
        "the optional extra momil[ray]): who runs the (rotation, grid point) fits and selection's single-assay "
        "models",
        choices=["local", "processes", "ray"],
    )
    workers: int = setting(2, "worker processes of --executor processes", low=1)
    threads: int = setting(0, "torch threads per worker (0: the cores divided among the workers)", low=0)
    ray_address: str = setting("", "--executor ray: the cluster's address (empty: start or join a local one)")

    def check(self) -> None:
        check_executor(self.executor, self.workers)

    @property
    def fans_out(self) -> bool:
        return self.executor != "local"

    def run(self, tasks: list) -> None:
        run_tasks(tasks, self.executor, self.workers, self.threads, self.ray_address)

    def runner(self) -> ExecutorSettings:
        """These settings alone (from a subclass that adds others, as the cross-validation's)."""
        return ExecutorSettings(self.executor, self.workers, self.threads, self.ray_address)


@dataclasses.dataclass
class FitTask:
    """One fit: ``fit(InstanceStore(store), pairs, train_wells, val_wells, primary, settings, run_dir)``."""

    store: str
    pairs: object  # momil.data.pairs.WellPairs
    train_wells: np.ndarray
    val_wells: np.ndarray
    primary: np.ndarray
    settings: object  # momil.training.settings.TrainSettings
    run_dir: str
    potentials: np.ndarray | None = None

    def run(self) -> str:
        from momil.io.store import InstanceStore
        from momil.training.fit import fit

        fit(
            InstanceStore(self.store),
            self.pairs,
            self.train_wells,
            self.val_wells,
            self.primary,
            self.settings,
            Path(self.run_dir),
            show_progress=False,
            potentials=self.potentials,
        )
        return self.run_dir


@dataclasses.dataclass
class SingleAssayTask:
    """One single-assay model of assay selection: ``train_single_assay(InstanceStore(store), labels, assay, ...)``
    into ``root``/<assay>/."""

    store: str
    labels: object  # momil.io.contract.LabelMatrix
    assay: str
    train_wells: np.ndarray
    val_wells: np.ndarray
    settings: object  # momil.training.settings.TrainSettings
    root: str

    def run(self) -> str:
        from momil.io.store import InstanceStore
        from momil.protocol.single_assay import train_single_assay

        store = InstanceStore(self.store)
        train_single_assay(
            store, self.labels, self.assay, self.train_wells, self.val_wells, self.settings, Path(self.root)
        )
        return self.root


def run_task(task: FitTask | SingleAssayTask, threads: int | None = None) -> str:
    """Run one task in this process (a worker's entry point); returns its folder."""
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    return task.run()


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def check_executor(executor: str, workers: int) -> None:
    if executor not in EXECUTORS:
        raise MomilError(f"--executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if workers < 1:
        raise MomilError(f"--workers must be a positive whole number, not {workers}")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise MomilError(
                '--executor ray needs Ray, an optional extra: pip install "momil[ray]" (or use --executor processes)'
            ) from err


def run_tasks(tasks: list, executor: str = "local", workers: int = 2, threads: int = 0, ray_address: str = "") -> None:
    """Run every task (see the module's docstring); returns when all are finished."""
    check_executor(executor, workers)
    if not tasks or executor == "local":
        for task in tasks:
            run_task(task)
        return
    threads = threads or default_threads(workers)
    if executor == "processes":
        _run_processes(tasks, workers, threads)
    else:
        _run_ray(tasks, threads, ray_address)


def _run_processes(tasks: list, workers: int, threads: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # no forked torch state
    pending = list(tasks)
    for attempt in range(ATTEMPTS):
        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context) as pool:
                futures = {pool.submit(run_task, task, threads): task for task in pending}
                for future, task in futures.items():
                    future.result()
                    pending.remove(task)
            return
        except BrokenProcessPool:  # a worker died (killed, out of memory): resume what is left
            if attempt == ATTEMPTS - 1:
                raise MomilError(
                    f"a worker process died {ATTEMPTS} times; {len(pending)} fits are unfinished -- run the command "
                    "again to resume them (finished fits are kept)"
                ) from None


def _run_ray(tasks: list, threads: int, address: str) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1, max_retries=ATTEMPTS)(run_task)
    ray.get([remote.remote(task, threads) for task in tasks])
