"""Output paths: one place where every command checks where it is about to write.

A command's output is refused, before anything is read or written, when

- it is the same path as one of the command's inputs, or an input lies inside an output folder that is made
  anew (replacing it would delete the input), or it lies inside an input folder (a store or Parquet-parts folder
  is not a place for outputs);
- it exists and the command was not given ``--overwrite`` (where the command has that flag);
- it is a file where a folder is written, or a folder where a file is written;
- its suffix says another format than the one written (a ``.csv`` name for a Parquet table).

Every refusal is one :class:`~momil.errors.MomilError` naming the flag, the path and what to do instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from momil.errors import MomilError


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return child != parent


def check_output(
    out,
    kind: str,
    inputs: Mapping[str, object] | None = None,
    overwrite: bool | None = False,
    flag: str = "--out",
    suffixes: Iterable[str] | None = None,
) -> Path:
    """Check ``out`` (a ``"file"`` or a ``"dir"``) against ``inputs`` ({flag: path}); returns it as a Path.

    ``overwrite=None`` means the output is written into or refreshed (a command without ``--overwrite``: train, cv,
    select, impute, benchmark and pretrain write into their folder and resume from it), so an existing output is
    accepted and may hold inputs; ``False`` / ``True``: the output is made anew (refused when it exists, unless
    ``True``), so it must not hold an input. ``suffixes`` lists the accepted file-name endings (lower case).
    """
    if kind not in ("file", "dir"):  # pragma: no cover - programming error
        raise ValueError(kind)
    if out is None or str(out).strip() == "":
        raise MomilError(f"{flag} is empty -- name the output {'folder' if kind == 'dir' else 'file'}")
    out = Path(out)
    target = _resolved(out)
    for name, path in (inputs or {}).items():
        if path is None or str(path) == "":
            continue
        for single in path if isinstance(path, (list, tuple)) else [path]:
            source = _resolved(single)
            if target == source:
                raise MomilError(
                    f"{flag} {out} is also the input {name} -- writing would replace the input; choose another output"
                )
            if _inside(source, target) and overwrite is not None:  # a folder that is made anew would lose it
                raise MomilError(
                    f"{flag} {out} holds the input {name} ({single}) -- writing would delete it; "
                    "choose an output outside the inputs"
                )
            if Path(single).is_dir() and _inside(target, source):
                raise MomilError(
                    f"{flag} {out} lies inside the input folder {name} ({single}) -- choose an "
                    "output outside the inputs"
                )
    if out.exists() or out.is_symlink():
        if kind == "dir" and not out.is_dir():
            raise MomilError(f"{flag} {out} is an existing file, not a folder -- name a folder to create")
        if kind == "file" and out.is_dir():
            raise MomilError(f"{flag} {out} is an existing folder -- name a file to write")
        if overwrite is False:
            raise MomilError(f"{flag} {out} already exists -- choose another output or pass --overwrite")
    elif out.parent.exists() and not out.parent.is_dir():
        raise MomilError(f"{flag} {out}: {out.parent} is a file, not a folder")
    if suffixes is not None:
        accepted = tuple(suffixes)
        if not out.name.lower().endswith(accepted):
            raise MomilError(
                f"{flag} {out}: this output is written as {' or '.join(accepted)} -- name it with that ending"
            )
    return out


class OutputLocked(MomilError):
    """Another run holds the output's lock (the refused run must not touch that output)."""


def lock_path(out) -> Path:
    """The lock file of an output: hidden, beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def output_lock(out) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the block: a second momil run writing to the same output is refused
    at once (it would otherwise interleave its writes with the first's). The lock is an ``flock`` on a hidden
    file beside the output, so a killed run never leaves a stale lock; ``out=None`` locks nothing."""
    if out is None:
        yield
        return
    import fcntl

    path = lock_path(out)
    if not path.parent.exists():
        yield  # the output's folder does not exist yet: nothing can be writing there (checked again on write)
        return
    try:
        handle = open(path, "a+")
    except OSError:  # a read-only place: the command itself reports that it cannot write
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputLocked(
                f"{out}: another momil run ({holder}) is writing to this output -- wait for it to "
                "finish or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
