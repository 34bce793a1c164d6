"""The `momil` command: one subcommand per stage, thin over the library.

Errors a user can cause are printed as one line (``momil: error: ...``) and exit with status 2; nothing is
written by a command that fails. The commands live by pipeline group: :mod:`momil.cli.screen` (simulate,
ingest, correct, split, validate, info, cells, demo), :mod:`momil.cli.imaging` (pretrain, extract, probe),
:mod:`momil.cli.model` (train, cv, predict) and :mod:`momil.cli.protocol` (select, impute, benchmark, report).
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import signal
import sys
import threading
import warnings
from pathlib import Path

from momil import __version__, distributed, preemption
from momil.cli import imaging, model, protocol, screen
from momil.errors import MomilError
from momil.io.paths import OutputLocked, output_lock
from momil.preemption import Preempted

GROUPS = (screen, imaging, model, protocol)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="momil", description="MoMIL: predict compound activity in target-directed assays from Cell Painting."
    )
    parser.add_argument("--version", action="version", version=f"momil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<stage>")

    def stage(name, help_text, func):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="TOML file with a table for this stage")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    for group in GROUPS:
        group.register(stage)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"momil: warning: {message}", file=sys.stderr)


def _output_of(args) -> Path | None:
    """The path a command writes (its --out), if it has one."""
    out = getattr(args, "out", None)
    return Path(out) if out else None


def _remove_new_output(out: Path | None, existed: bool) -> None:
    """After a refused command: remove an output that this run created (a refused command writes nothing)."""
    if out is None or existed or not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out, ignore_errors=True)
    else:
        out.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    warnings.showwarning = _show_warning
    preemption.install()  # SIGTERM: a clean stop as Ctrl-C, after a checkpoint of the step when training
    out = _output_of(args)
    existed = out is not None and (out.exists() or out.is_symlink())
    try:
        ctx = distributed.init_from_env(args.command, getattr(args, "device", None) or "auto")
    except MomilError as err:
        print(f"momil: error: {err}", file=sys.stderr)
        return 2
    main_rank = ctx.is_main  # under torchrun: rank 0 holds the output's lock, reports, warns and cleans up
    if not main_rank:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of this process
        warnings.simplefilter("ignore")
    try:
        with output_lock(out if main_rank else None):
            return int(args.func(args) or 0)
    except OutputLocked as err:
        print(f"momil: error: {err}", file=sys.stderr)
        return 2
    except MomilError as err:
        if main_rank:
            _remove_new_output(out, existed)
            print(f"momil: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise
        _remove_new_output(out, existed)
        where = f" ({err.filename})" if err.filename else ""
        print(
            f"momil: error: {err.strerror}{where} -- nothing was committed; free space or choose a writable "
            "--out, then run the command again (finished checkpoints are reused)",
            file=sys.stderr,
        )
        return 2
    except Preempted as err:
        if main_rank:
            print(f"momil: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            "momil: interrupted; nothing was committed by the unfinished step (run the same command again to "
            "resume from the last checkpoint)",
            file=sys.stderr,
        )
        return 130
    finally:
        distributed.shutdown()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
