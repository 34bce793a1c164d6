"""`momil.config`: which tables of a `--config` TOML file a command reads, in which order, and what it refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from momil.cli import build_parser
from momil.config import TABLES, build_settings
from momil.errors import InputError
from momil.protocol.cv import CVSettings
from momil.protocol.executor import ExecutorSettings
from momil.training.settings import TrainSettings

CLI = Path(__file__).resolve().parents[1] / "src" / "momil" / "cli"
INPUTS = ["--store", "s", "--labels", "l.parquet", "--folds", "f.parquet", "--out", "o"]


def test_the_known_tables_are_the_ones_the_commands_read():
    read = set()
    for path in CLI.glob("*.py"):
        read |= set(re.findall(r'build_settings\(\s*\w+,\s*args,\s*args\.config,\s*"(\w+)"', path.read_text()))
    assert read == set(TABLES)


def test_the_executor_table_serves_every_command_that_fans_out_and_the_cv_table_wins(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        '[executor]\nexecutor = "processes"\nworkers = 3\nthreads = 1\n[cv]\nworkers = 4\n[train]\nepochs = 7\n'
        "[simulate]\nn_compounds = 10\n"  # another stage's table: left alone
    )

    def built(argv, cls, section):
        return build_settings(cls, build_parser().parse_args([*argv, "--config", str(config)]), config, section)

    select = built(["select", *INPUTS], ExecutorSettings, "executor")
    assert (select.executor, select.workers, select.threads) == ("processes", 3, 1)
    cv = built(["cv", *INPUTS], CVSettings, "cv")
    assert (cv.executor, cv.workers, cv.threads) == ("processes", 4, 1)  # [cv] over [executor]
    assert built(["cv", *INPUTS, "--workers", "5"], CVSettings, "cv").workers == 5  # the flag over both
    assert built(["cv", *INPUTS], TrainSettings, "train").epochs == 7


@pytest.mark.parametrize(
    "text, message",
    [
        ("[trian]\nepochs = 3\n", r"unknown table\(s\) \['trian'\] -- momil reads the tables simulate, ingest"),
        ("epochs = 3\n[train]\nlr = 0.01\n", r"setting\(s\) \['epochs'\] outside a table -- put them in"),
        ("[executor]\nepochs = 3\n", r"unknown setting\(s\) \['epochs'\] in \[executor\]"),
    ],
)
def test_a_config_file_that_no_command_can_read_is_refused_by_name(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    args = build_parser().parse_args(["cv", *INPUTS])
    with pytest.raises(InputError, match=message) as caught:
        build_settings(CVSettings, args, config, "cv")
    assert str(config) in str(caught.value)
