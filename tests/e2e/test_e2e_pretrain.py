"""End to end, from rendered images: pretrain a tiny ViT for a few CPU minutes, extract, and check that its
features separate the simulator's compound classes better than the same ViT with random weights (slow: about
4 minutes on 2 cores; ``pytest -m slow``)."""

from __future__ import annotations

import warnings

import pytest

from momil.imaging.extract import ExtractSettings
from momil.imaging.fields import FieldSettings
from momil.imaging.pretrain import PretrainSettings, pretrain
from momil.imaging.probe import compare_backbones
from momil.simulate.screen import SimulateSettings, compound_classes, simulate


@pytest.mark.slow
def test_pretrained_features_beat_random_features(tmp_path):
    warnings.simplefilter("ignore")
    screen = tmp_path / "screen"
    simulate(
        screen,
        SimulateSettings(
            n_compounds=240,
            replicates=1,
            negcon_per_plate=4,
            render_images=True,
            image_size=128,
            sites=2,
            instances=64,
            n_assays=4,
            n_primary=2,
            n_targets=3,
            hit_rate=0.3,
            responder_fraction=0.6,
        ),
        show_progress=False,
    )
    load_data = screen / "load_data.parquet"
    settings = PretrainSettings(
        method="dinov2",
        backbone="vit-tiny",
        global_size=64,
        local_size=32,
        local_crops=2,
        out_dim=256,
        epochs=12,
        batch_fields=8,
        lr=0.016,
        warmup_epochs=2,
        teacher_temp_epochs=0,
        device="cpu",
    )
    summary = pretrain(load_data, tmp_path / "fm", FieldSettings(size=128), settings, show_progress=False)
    assert summary["last_loss"] < summary["first_loss"]
    field = FieldSettings(size=128, tile=64, stride=64, drop_background=False)
    table = compare_backbones(
        load_data,
        screen / "wells.parquet",
        {"random": "", "pretrained": str(tmp_path / "fm" / "backbone.pt")},
        {"class": compound_classes(screen)},
        tmp_path,
        field,
        ExtractSettings(backbone="vit-tiny", device="cpu", dtype="float32"),
    )
    scores = {name: list(group["accuracy"]) for name, group in table.groupby("features")}
    # 4-class probe accuracy, averaged over three regularisation strengths and at the best of them
    mean = {name: sum(values) / len(values) for name, values in scores.items()}
    assert mean["pretrained"] > mean["random"] + 0.02, scores
    assert max(scores["pretrained"]) > max(scores["random"]) + 0.02, scores
