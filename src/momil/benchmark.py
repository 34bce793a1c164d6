"""Deprecated alias of `momil.benchmark`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.protocol.benchmark`
"""

from momil.protocol.benchmark import (  # noqa: F401
    METHODS,
    BenchmarkResult,
    BenchmarkSettings,
    _auc_cell,
    _finished,
    _md,
    _select_once,
    _stars,
    attention_examples,
    auc_table,
    field_views,
    find_record,
    run_benchmark,
    run_probes,
    table3_markdown,
    write_report,
)
