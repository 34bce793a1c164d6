"""Atomic writes: outputs appear whole or not at all; temporaries of killed runs are cleaned."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def safe_name(text: str, limit: int = 40) -> str:
    """A file name for any identifier: unsafe characters replaced, cut to ``limit``, plus a short hash of the
    original so that different identifiers never share a name."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:limit]
    return f"{cleaned}-{hashlib.sha1(str(text).encode()).hexdigest()[:8]}"


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path, name: str | None = None) -> int:
    """Remove the hidden ``.name.tmp-<pid>-*`` files or folders a killed run left beside ``path`` (those whose
    process no longer runs); ``name="*"`` sweeps every such temporary in the folder ``path``. Returns how many
    were removed. Temporaries of a live run are left alone."""
    path = Path(path)
    folder, pattern = (path, ".*.tmp-*") if name == "*" else (path.parent, f".{path.name}.tmp-*")
    removed = 0
    if not folder.is_dir():
        return 0
    for candidate in folder.glob(pattern):
        try:
            pid = int(candidate.name.rsplit(".tmp-", 1)[1].split("-")[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _alive(pid):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()
        removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed.

    An interrupted run leaves only a hidden ``.name.tmp-*`` folder, never a half-written ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        from momil.errors import MomilError

        raise MomilError(f"{path}: already exists -- choose another output or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _temp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(obj: Any, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=json_default, sort_keys=False) + "\n")
    return path


def json_default(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)
