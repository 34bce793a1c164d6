"""Deprecated alias of `momil.provenance`, kept so that earlier code and the README's names keep working.

The contents now live in:

- `momil.io.atomic`
- `momil.io.provenance`
"""

from momil.io.atomic import (  # noqa: F401
    _alive,
    _temp_name,
    atomic_dir,
    atomic_path,
    json_default,
    remove_stale_temporaries,
    safe_name,
    write_json_atomic,
)
from momil.io.provenance import (  # noqa: F401
    _HASH_LIMIT,
    describe_input,
    provenance,
)
