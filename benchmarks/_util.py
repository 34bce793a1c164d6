"""Helpers for benchmarks: run a command in a child process and read its wall time and peak memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def run_measured(argv: list[str], env: dict | None = None) -> tuple[float, float, int]:
    """(seconds, peak resident MB, exit code) of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    return seconds, usage.ru_maxrss / 1024.0, os.waitstatus_to_exitcode(status)


def python_code(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    widths = [max(len(str(c)), *(len(str(r[c])) for r in rows)) for c in columns]
    print("| " + " | ".join(str(c).ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)) + " |")
