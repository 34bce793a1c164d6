"""Shell helpers for the CLI tests: run a command in-process, and a small simulated screen prepared from the
shell (ingest, correct, split)."""

from __future__ import annotations

from momil.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(map(str, argv)))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def prepared_screen(tmp_path, capsys, screen) -> list:
    """ingest -> correct -> split a simulated screen from the shell; the model commands' shared arguments."""
    assert (
        run(
            capsys,
            "ingest",
            "--instances",
            screen / "instances.parquet",
            "--wells",
            screen / "wells.parquet",
            "--out",
            tmp_path / "raw",
            "--quiet",
        )[0]
        == 0
    )
    assert run(capsys, "correct", "--store", tmp_path / "raw", "--out", tmp_path / "store", "--quiet")[0] == 0
    assert (
        run(
            capsys,
            "split",
            "--wells",
            screen / "wells.parquet",
            "--labels",
            screen / "labels.parquet",
            "--compounds",
            screen / "compounds.parquet",
            "--out",
            tmp_path / "folds.parquet",
            "--quiet",
        )[0]
        == 0
    )
    common = [
        "--store",
        tmp_path / "store",
        "--labels",
        screen / "labels.parquet",
        "--folds",
        tmp_path / "folds.parquet",
        "--assays",
        screen / "assays.parquet",
    ]
    return common


def shell_screen(tmp_path, capsys, *options) -> tuple:
    """A 60-compound simulated screen (6 features, 6 instances per well) prepared from the shell:
    (screen folder, the model commands' shared arguments); ``options`` add to or override `momil simulate`'s."""
    screen = tmp_path / "screen"
    assert (
        run(
            capsys,
            "simulate",
            "--out",
            screen,
            "--n-compounds",
            60,
            "--replicates",
            2,
            "--negcon-per-plate",
            8,
            "--dim",
            6,
            "--instances",
            6,
            *options,
            "--quiet",
        )[0]
        == 0
    )
    return screen, prepared_screen(tmp_path, capsys, screen)
