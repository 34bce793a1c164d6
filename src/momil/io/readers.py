"""One reader layer for the files momil reads back: torch checkpoints, JSON records, Parquet batches.

Every load failure (missing file, a folder where a file belongs, a damaged or foreign file) becomes one
:class:`~momil.errors.InputError` that names the file, says what is wrong and what to do, instead of a pyarrow,
JSON or pickle traceback.

Torch files are loaded with ``weights_only=True``: tensors, numbers, strings and plain containers only, never
arbitrary pickled objects (a crafted checkpoint could otherwise run code when loaded). momil's own model,
training, pretraining and backbone files hold nothing else; a file that needs more (e.g. a training checkpoint
with an ``argparse.Namespace`` inside) is refused with a message that says why and how to re-save its weights.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from momil.errors import InputError


def _existing_file(path, what: str, fix: str | None = None) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(path, f"{what} not found", fix or "check the path")
    if path.is_dir():
        raise InputError(path, f"is a folder, expected the {what} file")
    return path


def load_torch(path, what: str = "checkpoint", map_location="cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; every failure is an InputError naming ``path``."""
    import torch  # heavy: only the stages that read checkpoints pay for it

    path = _existing_file(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise InputError(
                path,
                f"refused to load this {what}: it holds the Python object {found.group(1)}, not "
                "only tensors, numbers and plain containers, and unpickling it could run code from the "
                "file",
                "save only the weights (torch.save(model.state_dict(), path)) from code you trust, and name that file",
            ) from err
        cause = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text) or re.search(r"(invalid load key[^\n]*)", text)
        reason = cause.group(1).strip() if cause else text.splitlines()[0]
        raise InputError(
            path, f"not a readable {what} ({reason})", "the file is damaged or not a torch checkpoint; write it again"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as err:
        reason = str(err).split("\n")[0] or type(err).__name__
        raise InputError(
            path, f"not a readable {what} ({reason})", "the file is damaged or not a torch checkpoint; write it again"
        ) from err


def read_json(path, what: str = "JSON file") -> Any:
    """A JSON document; a missing, empty or damaged file is an InputError naming ``path``."""
    path = _existing_file(path, what)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read the {what} ({err})") from err
    if not text.strip():
        raise InputError(path, f"the {what} is empty", "write it again with the command that makes it")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(
            path,
            f"the {what} is not valid JSON ({err.msg} at line {err.lineno})",
            "the file is damaged; write it again with the command that makes it",
        ) from err


def read_parquet_frame(path, what: str = "table"):
    """A whole Parquet file as a DataFrame; a missing or damaged file is an InputError naming ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _existing_file(path, what)
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise InputError(
            path,
            f"cannot read the {what} ({str(err).splitlines()[0]})",
            "the file is damaged or not Parquet; write it again",
        ) from err


def guarded_batches(batches: Iterator, path, what: str = "Parquet file") -> Iterator:
    """Yield from an iterator of record batches; a decoding failure mid-file (a corrupt data page, a truncated
    file) becomes an InputError naming ``path`` and the row where reading stopped."""
    import pyarrow as pa

    rows = 0
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, ValueError) as err:
            raise InputError(
                path,
                f"cannot read the {what} after data row {rows} ({str(err).splitlines()[0]})",
                "the file is damaged; write it again or drop it from the input",
            ) from err
        rows += batch.num_rows
        yield batch
