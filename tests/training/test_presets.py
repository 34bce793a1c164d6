"""Presets: named settings for train / cv / select / impute / benchmark; defaults < preset < TOML < flags."""

from __future__ import annotations

import dataclasses

import pytest

from momil.cli import build_parser
from momil.config import build_settings
from momil.errors import MomilError
from momil.presets import PRESETS, preset_values
from momil.protocol.cv import CVSettings, grid
from momil.protocol.imputation import ImputeSettings
from momil.protocol.selection import SelectSettings
from momil.training.settings import TrainSettings

INPUTS = ["--store", "s", "--labels", "l.parquet", "--folds", "f.parquet", "--out", "o"]
SECTIONS = {"train": TrainSettings, "cv": CVSettings, "select": SelectSettings, "impute": ImputeSettings}


def settings_of(argv, cls, section, config=None):
    args = build_parser().parse_args(argv)
    return build_settings(cls, args, config, section)


def test_every_preset_names_real_settings_in_range():
    for name, sections in PRESETS.items():
        for section, values in sections.items():
            cls = SECTIONS[section]
            known = {f.name for f in dataclasses.fields(cls)}
            assert set(values) <= known, (name, section, set(values) - known)
            cls(**values)  # range checks of every value


def test_quick_preset_is_the_default():
    for section, cls in SECTIONS.items():
        values = preset_values("quick", section)
        if section == "impute":
            values.pop("rounds")  # 2 rounds on the panel, 1 by default
        default = cls()
        assert {k: getattr(default, k) for k in values} == values, section


def test_paper_preset_gives_the_papers_grid_and_schedule():
    train = settings_of(["cv", *INPUTS, "--preset", "paper"], TrainSettings, "train")
    cv = settings_of(["cv", *INPUTS, "--preset", "paper"], CVSettings, "cv")
    assert (train.head, train.epochs, train.warmup_epochs, train.patience) == ("dsmil", 100, 20, 10)
    assert train.select_epoch == "best" and train.weight_decay == 5e-4 and train.dropout == 0.5
    assert len(grid(cv)) == 18 and {p["lr"] for p in grid(cv)} == {1e-4, 5e-5, 1e-5}


def test_flags_and_toml_override_the_preset(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[train]\nepochs = 40\nwarmup_epochs = 5\n")
    argv = ["train", *INPUTS, "--preset", "paper", "--config", str(config), "--warmup-epochs", "7"]
    train = settings_of(argv, TrainSettings, "train", config)
    assert train.epochs == 40  # TOML over the preset's 100
    assert train.warmup_epochs == 7  # the flag over TOML and preset
    assert train.head == "dsmil" and train.lr == 1e-4  # the preset over the defaults


def test_unknown_preset_refused():
    with pytest.raises(MomilError, match="--preset must be one of"):
        preset_values("fast", "train")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cv", *INPUTS, "--preset", "fast"])


@pytest.mark.parametrize("command", ["train", "cv", "select", "impute", "benchmark"])
def test_every_training_command_takes_a_preset(command):
    args = build_parser().parse_args([command, *INPUTS, "--preset", "quick"])
    assert args.preset == "quick"
