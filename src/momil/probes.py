"""Deprecated alias of `momil.probes`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.protocol.fewshot`
"""

from momil.protocol.fewshot import (  # noqa: F401
    ProbeSettings,
    _draw,
    _embed,
    choose_unseen,
    probe_unseen,
    shot_counts,
)
