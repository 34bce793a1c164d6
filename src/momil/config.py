"""Typed settings: one dataclass per stage, filled from defaults < a TOML file < command-line flags.

A TOML file holds one table per stage (``[simulate]``, ``[ingest]``, ``[correct]``, ``[split]``); keys are the
settings' field names. Every output records the settings it was made with.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

from momil.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_COMMENT = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=\s*[^#]*)?#\s*(.+)$")


def field_help(cls) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the class source, used as its --help text."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover
        return {}
    helps = {}
    for line in source.splitlines():
        match = _COMMENT.match(line)
        if match:
            helps[match.group(1)] = match.group(2).strip()
    return helps


def add_settings_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per dataclass field; unset options leave the field to TOML/defaults."""
    helps = field_help(cls)
    group = parser.add_argument_group(f"{cls.__name__} (also settable in the TOML file's table)")
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        text = helps.get(field.name, "")
        text = f"{text} (default: {default})" if text else f"default: {default}"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        if isinstance(default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
        else:
            kind = type(default) if default is not None else str
            group.add_argument(flag, dest=field.name, type=kind, default=argparse.SUPPRESS, help=text,
                               metavar=field.name.upper())


def load_toml(path, section: str) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise InputError(path, "config file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise InputError(path, f"not valid TOML ({err})") from err
    return dict(data.get(section, {}))


def build_settings(cls, args: argparse.Namespace, config_path=None, section: str = "", **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_path:
        from_file = load_toml(config_path, section)
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise InputError(config_path, f"unknown setting(s) {unknown} in [{section}]",
                             f"known settings: {sorted(names)}")
        values.update(from_file)
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except TypeError as err:
        raise InputError(config_path, f"bad settings for [{section}]: {err}") from err
