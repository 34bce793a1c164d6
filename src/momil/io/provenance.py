"""Provenance records: every output says which inputs, settings and version made it."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

from momil.io.atomic import json_default

_HASH_LIMIT = 64 * 1024 * 1024  # inputs up to this size are hashed; larger ones are recorded by size and mtime


def describe_input(path) -> dict:
    """Path, size, modification time and (for files up to 64 MiB) SHA-256 of one input."""
    path = Path(path)
    record: dict[str, Any] = {"path": str(path.resolve())}
    if not path.exists():
        record["exists"] = False
        return record
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        record["files"] = len(files)
        record["bytes"] = sum(p.stat().st_size for p in files)
        return record
    stat = path.stat()
    record["bytes"] = stat.st_size
    record["modified"] = _dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc).isoformat()
    if stat.st_size <= _HASH_LIMIT:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        record["sha256"] = digest.hexdigest()
    return record


def provenance(stage: str, settings: Any = None, inputs: dict | None = None, **extra) -> dict:
    """The record every output carries: stage, settings, inputs, versions, command line, time."""
    from momil import __version__

    versions = {"momil": __version__, "python": platform.python_version()}
    for name in ("numpy", "pandas", "pyarrow", "torch", "rdkit", "sklearn"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    record = {
        "stage": stage,
        "momil_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "settings": settings or {},
        "inputs": {k: describe_input(v) for k, v in (inputs or {}).items() if v is not None},
        "versions": versions,
    }
    record.update(extra)
    return json.loads(json.dumps(record, default=json_default))
