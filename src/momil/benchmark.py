"""Deprecated alias of `momil.benchmark`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.protocol.benchmark`
- `momil.report.paper_tables` (the tables)
"""

from momil.protocol.benchmark import (  # noqa: F401
    METHODS,
    BenchmarkResult,
    BenchmarkSettings,
    _finished,
    _select_once,
    attention_examples,
    field_views,
    find_record,
    run_benchmark,
    run_probes,
    write_report,
)
from momil.report.paper_tables import (  # noqa: F401
    _auc_cell,
    _md,
    _stars,
    auc_table,
    table3_markdown,
)
