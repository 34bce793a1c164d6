"""Preemption: SIGTERM (a cluster's scheduler taking the node back) stops a training run at the next step with a
checkpoint of that step, so the rerun resumes mid-epoch and ends with the same result as an uninterrupted run.

Outside a :func:`deferred` block SIGTERM stops the process as Ctrl-C does (the unfinished step is not committed and
the rerun resumes from the last checkpoint). Inside one (the epoch loop of :func:`momil.training.fit.fit`) the first
SIGTERM only sets a flag that the loop reads after each step (:func:`requested`); a second one stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_state = {"deferring": 0, "requested": False}


class Preempted(KeyboardInterrupt):
    """Raised after the checkpoint of a SIGTERM-ed run is written; the CLI exits 130 with its message."""


def on_sigterm(signum, frame) -> None:  # pragma: no cover - exercised through subprocesses in the fault tests
    if _state["deferring"] and not _state["requested"]:
        _state["requested"] = True
        return
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGTERM here (from the main thread only, where Python delivers signals)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def deferred():
    """While inside, the first SIGTERM is a request to stop at the next step instead of an immediate stop."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        if not _state["deferring"]:
            _state["requested"] = False


def requested() -> bool:
    return _state["requested"]


def requested_on_any_rank(device) -> bool:
    """Whether SIGTERM reached this process or, under torchrun, any rank (a MAX all-reduce of the flag on
    ``device``), so that every rank stops after the same step."""
    from momil import distributed

    flag = requested()
    if distributed.context().active:
        import torch

        flag = bool(distributed.all_reduce_(torch.tensor([float(flag)], device=device), "max").item())
    return flag


def request() -> None:
    """Ask for a stop as SIGTERM does (for tests and embedding code)."""
    _state["requested"] = True
