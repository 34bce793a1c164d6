"""Fault injection for the fault tests: a process kills itself at a named point of the code.

``MOMIL_FAULT=name:n`` makes the n-th call of ``fault_point(name)`` send SIGKILL to its own process, so a test
can stop a real run at a fixed place (after the first rows are written, after an epoch's checkpoint, ...) rather
than on a timer, then rerun it and compare. ``MOMIL_FAULT=name:n:TERM`` sends SIGTERM instead (a preemption).
Under torchrun ``MOMIL_FAULT_RANK=r`` keeps the fault to rank r. Without the variable a fault point costs one
environment lookup.

Points: ``store.write_rows`` (ingest, correct, extract's assembly), ``extract.field`` (a field's embeddings
saved), ``train.step`` (a training step done), ``train.epoch`` (a training checkpoint saved: train, cv, select,
impute), ``pretrain.epoch``.
"""

from __future__ import annotations

import os
import signal

_calls: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("MOMIL_FAULT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name or os.environ.get("MOMIL_FAULT_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return
    count, _, how = rest.partition(":")
    _calls[name] = _calls.get(name, 0) + 1
    if _calls[name] == int(count or 1) or (_calls[name] > int(count or 1) and how != "TERM"):
        os.kill(os.getpid(), signal.SIGTERM if how == "TERM" else signal.SIGKILL)
