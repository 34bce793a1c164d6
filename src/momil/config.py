"""Typed settings: one dataclass per stage, filled from defaults < a TOML file < command-line flags.

A TOML file holds one table per stage (``[simulate]``, ``[ingest]``, ``[correct]``, ``[split]``, ...; :data:`TABLES`
lists them); keys are the settings' field names. One file can serve every stage: a command reads the tables of its
settings and leaves the others, but a table no command reads (a typo) is refused. A settings class that several
commands share names its own table (``shared_table``: ``[executor]`` for who runs the protocol's fits), read before
the command's own table (``[cv]``, which holds the same fields, wins). Every output records the settings it was
made with.

Each field is declared with :func:`setting`: its default, its help text and its allowed range (bounds, choices)
live in the field's metadata. :class:`Settings` checks every field against that range when the object is made
(from Python, a TOML file or the command line alike), so an out-of-range value is refused with the flag's name
and the allowed range before a stage reads or writes anything; ``--help`` shows the same range.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from momil.errors import InputError, MomilError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# every table a `--config` TOML file may hold: the sections the commands build their settings from
TABLES = (
    "simulate",
    "ingest",
    "correct",
    "split",
    "field",
    "segment",
    "pretrain",
    "extract",
    "train",
    "cv",
    "select",
    "impute",
    "executor",
    "benchmark",
)


def setting(
    default,
    help: str = "",
    *,
    low=None,
    high=None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[str] | None = None,
):
    """A settings field: ``default``, ``help`` for ``--help``, and its range.

    ``low`` / ``high`` bound a number (closed unless ``low_open`` / ``high_open``); ``choices`` lists the allowed
    values of a string (``None`` stays allowed where it is the default)."""
    meta = {
        "help": help,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": tuple(choices) if choices is not None else None,
    }
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def range_text(field: dataclasses.Field) -> str:
    """The allowed range of a field, as ``--help`` and error messages state it ("" when any value goes)."""
    meta = field.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        left = "(" if meta.get("low_open") else "["
        right = ")" if meta.get("high_open") else "]"
        return f"in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f"{'>' if meta.get('low_open') else '>='} {low:g}"
    if high is not None:
        return f"{'<' if meta.get('high_open') else '<='} {high:g}"
    return ""


def _kind(field: dataclasses.Field):
    default = field.default
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def check_field(field: dataclasses.Field, value) -> None:
    """Refuse ``value`` for ``field`` if its type or range is wrong; the message names the flag and the range."""
    flag = flag_name(field.name)
    kind = _kind(field)
    meta = field.metadata
    allowed = range_text(field)
    if value is None and field.default is None:
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise MomilError(f"{flag} must be true or false, not {value!r}")
        return
    if kind in (int, float):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not is_number or (kind is int and not float(value).is_integer()):
            raise MomilError(f"{flag} must be {'a whole number' if kind is int else 'a number'}, not {value!r}")
        if not math.isfinite(float(value)):
            raise MomilError(f"{flag} must be a finite number, not {value!r}")
        low, high = meta.get("low"), meta.get("high")
        bad = (low is not None and (value <= low if meta.get("low_open") else value < low)) or (
            high is not None and (value >= high if meta.get("high_open") else value > high)
        )
        if bad:
            raise MomilError(f"{flag} must be {allowed}, not {value!r}")
        return
    if not isinstance(value, str):
        raise MomilError(f"{flag} must be text, not {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise MomilError(f"{flag} must be {allowed}, not {value!r}")


def check_device_name(name: str, flag: str = "--device") -> None:
    """Refuse a device name torch would not take: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    text = str(name)
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return
    raise MomilError(f"{flag} must be auto, cpu, cuda or cuda:N, not {name!r}")


class Settings:
    """Base of every stage's settings dataclass: each field is checked against its range when the object is made
    (and on ``dataclasses.replace``); a subclass may add cross-field rules in ``check()``."""

    shared_table: ClassVar[str] = ""  # a table of the TOML file this class's fields are read from in every command

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            check_field(field, getattr(self, field.name))
        self.check()

    def check(self) -> None:
        """Rules between fields (a subclass overrides this); the ranges of single fields are already checked."""


def field_help(cls) -> dict[str, str]:
    """Each field's help text with its allowed range, as ``--help`` prints it."""
    helps = {}
    for field in dataclasses.fields(cls):
        text = field.metadata.get("help", "")
        allowed = range_text(field)
        helps[field.name] = "; ".join(part for part in (text, allowed) if part)
    return helps


def add_settings_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per dataclass field; unset options leave the field to TOML/defaults."""
    helps = field_help(cls)
    group = parser.add_argument_group(f"{cls.__name__} (also settable in the TOML file's table)")
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = flag_name(field.name)
        default = field.default
        text = helps.get(field.name, "")
        text = f"{text} (default: {default})" if text else f"default: {default}"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        if isinstance(default, bool):
            group.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        else:
            kind = type(default) if default is not None else str
            group.add_argument(
                flag, dest=field.name, type=kind, default=argparse.SUPPRESS, help=text, metavar=field.name.upper()
            )


def load_toml(path, section: str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(path, "config file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise InputError(path, f"not valid TOML ({err})") from err
    loose = sorted(key for key, value in data.items() if not isinstance(value, dict))
    if loose:
        raise InputError(path, f"setting(s) {loose} outside a table", "put them in their stage's table, e.g. [train]")
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise InputError(path, f"unknown table(s) {unknown}", f"momil reads the tables {', '.join(TABLES)}")
    return dict(data.get(section, {}))


def _table(config_path, section: str, names: set[str]) -> dict[str, Any]:
    from_file = load_toml(config_path, section)
    unknown = sorted(set(from_file) - names)
    if unknown:
        raise InputError(
            config_path, f"unknown setting(s) {unknown} in [{section}]", f"known settings: {sorted(names)}"
        )
    return from_file


def build_settings(cls, args: argparse.Namespace, config_path=None, section: str = "", **overrides):
    from momil.presets import preset_values

    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = preset_values(getattr(args, "preset", None), section)  # defaults < preset < TOML < flags
    if config_path:
        for base in reversed(cls.__mro__):  # a shared table ([executor]) first, the command's own table after it
            table = base.__dict__.get("shared_table", "")
            if table and table != section and dataclasses.is_dataclass(base):
                values.update(_table(config_path, table, {f.name for f in dataclasses.fields(base)}))
        values.update(_table(config_path, section, names))
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as err:
        raise InputError(config_path, f"bad settings for [{section}]: {err}") from err
