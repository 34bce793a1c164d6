"""Self-supervised pretraining: losses by hand, nuclei-centred crops and augmentations, resume equivalence."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from momil.imaging.fields import FieldSettings
from momil.imaging.pretrain import (
    PretrainSettings,
    augment,
    crop_views,
    dino_loss,
    ibot_loss,
    koleo_loss,
    nuclei_centres,
    pretrain,
    teacher_targets,
)

from conftest import render_screen


def test_dino_loss_by_hand():
    # two global views and one local; uniform teacher targets after centring give log(K) per pair
    k = 4
    teacher = [torch.zeros(1, k), torch.zeros(1, k)]
    student = [torch.zeros(1, k)] * 3
    loss = dino_loss(student, teacher, torch.zeros(1, k), 0.1, 0.04)
    assert float(loss) == pytest.approx(math.log(k))
    # a sharp teacher that the student matches exactly gives (almost) zero; same-view pairs are left out
    sharp = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    match = [sharp] * 3
    assert float(dino_loss(match, [sharp, sharp], torch.zeros(1, k), 0.01, 0.01)) < 1e-3
    wrong_only_in_view_0 = [torch.tensor([[0.0, 10.0, 0.0, 0.0]]), sharp, sharp]
    # pairs (teacher, student): (0, 1), (0, 2), (1, 0), (1, 2); student view 0 meets teacher view 1 only
    expected = (0 + 0 + 1000.0 + 0) / 4  # CE of a one-hot target against a logit gap of 10 / 0.01
    got = float(dino_loss(wrong_only_in_view_0, [sharp, sharp], torch.zeros(1, k), 0.01, 0.01))
    assert got == pytest.approx(expected, rel=1e-3)


def test_sinkhorn_targets_share_the_prototypes_out_evenly():
    torch.manual_seed(0)
    logits = torch.randn(6, 3) * 0.5
    logits[:, 0] += 2.0  # every sample prefers prototype 0: a plain softmax sends most mass there
    soft = teacher_targets(logits, torch.zeros(1, 3), 0.1, "center")
    sk = teacher_targets(logits, torch.zeros(1, 3), 0.1, "sinkhorn", iterations=50)
    assert float(soft[:, 0].mean()) > 0.9
    torch.testing.assert_close(sk.sum(1), torch.ones(6))  # each sample a distribution
    torch.testing.assert_close(sk.sum(0), torch.full((3,), 2.0), atol=1e-3, rtol=0)  # each prototype 6 / 3
    # the ranking within a prototype is kept: the sample with the highest logit gets the most of it
    assert int(sk[:, 1].argmax()) == int(logits[:, 1].argmax())
    # patch tokens (B, N, K) are assigned over the batch's tokens together
    assert teacher_targets(torch.randn(2, 4, 3), torch.zeros(1, 1, 3), 0.1, "sinkhorn").shape == (2, 4, 3)
    with pytest.raises(Exception, match="centering"):
        teacher_targets(logits, torch.zeros(1, 3), 0.1, "median")


def test_ibot_loss_counts_masked_tokens_only():
    k = 3
    teacher = torch.tensor([[[10.0, 0, 0], [0, 10.0, 0]]])  # (1, 2 patches, K)
    student = torch.tensor([[[10.0, 0, 0], [10.0, 0, 0]]])  # right on patch 0, wrong on patch 1
    only_first = ibot_loss(student, teacher, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1, k), 0.1, 0.01)
    only_second = ibot_loss(student, teacher, torch.tensor([[0.0, 1.0]]), torch.zeros(1, 1, k), 0.1, 0.01)
    assert float(only_first) < 1e-3 and float(only_second) > 50


def test_koleo_rewards_spread():
    close = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.98, 0.02]])
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert float(koleo_loss(spread)) < float(koleo_loss(close))
    assert float(koleo_loss(torch.ones(1, 2))) == 0.0  # one sample has no neighbour


def test_crops_centre_on_nuclei_and_augmentations_keep_channels():
    rng = np.random.default_rng(0)
    nuclei = np.zeros((100, 100), np.float32)
    nuclei[70:80, 20:30] = 1.0  # one bright nucleus
    centres = nuclei_centres(nuclei + 0.01 * rng.random((100, 100)).astype(np.float32), rng, 20, 8)
    assert all(60 <= y < 90 and 10 <= x < 40 for y, x in centres)
    field = rng.random((6, 100, 100)).astype(np.float32)  # any channel count
    field[0] = nuclei
    settings = PretrainSettings(global_size=32, local_size=16, local_crops=3)
    globals_, locals_ = crop_views(field, settings, rng)
    assert [tuple(v.shape) for v in globals_] == [(6, 32, 32)] * 2 and [tuple(v.shape) for v in locals_] == [
        (6, 16, 16)
    ] * 3
    out = augment(torch.from_numpy(field[:, :32, :32]), rng, blur=True)
    assert out.shape == (6, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    return render_screen(tmp_path_factory.mktemp("fields") / "screen") / "load_data.parquet"


SMALL = dict(
    backbone="vit-tiny",
    global_size=32,
    local_size=16,
    local_crops=1,
    out_dim=32,
    epochs=2,
    batch_fields=4,
    warmup_epochs=1,
    teacher_temp_epochs=1,
    device="cpu",
)
FIELD = FieldSettings(size=64, tile=32, stride=32)


@pytest.mark.parametrize("method", ["dino", "dinov2"])
def test_pretraining_runs_resumes_and_feeds_extraction(fields, tmp_path, method):
    from momil.imaging.backbone import make_backbone

    settings = PretrainSettings(method=method, **SMALL)
    whole = pretrain(fields, tmp_path / "whole", FIELD, settings, show_progress=False)
    assert whole["epochs_done"] == 2 and np.isfinite([whole["first_loss"], whole["last_loss"]]).all()
    # stopped after its first epoch, then started again: the same weights as the uninterrupted run
    first = pretrain(fields, tmp_path / "split", FIELD, settings, show_progress=False, max_seconds=0)
    assert first["epochs_done"] == 1
    pretrain(fields, tmp_path / "split", FIELD, settings, show_progress=False)
    a = torch.load(tmp_path / "whole" / "backbone.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "split" / "backbone.pt", weights_only=False)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the teacher backbone loads into the extraction backbone at the tile size
    model = make_backbone("vit-tiny", 5, 32, tmp_path / "whole" / "backbone.pt")
    assert model(torch.rand(1, 5, 32, 32)).shape == (1, 192)


def test_a_short_dinov2_run_lowers_its_loss(tmp_path):
    """Six epochs of DINOv2 (Sinkhorn-Knopp targets, iBOT, KoLeo) on rendered fields dense with cells: the
    epoch loss falls (about 11.9 -> 11.2 here; README "Pretraining" gives what 5 CPU minutes reach)."""
    screen = render_screen(tmp_path / "screen", n_compounds=12, image_size=128, instances=64, sites=2)
    settings = PretrainSettings(
        method="dinov2",
        backbone="vit-tiny",
        global_size=64,
        local_size=32,
        local_crops=2,
        out_dim=256,
        epochs=6,
        batch_fields=8,
        lr=0.016,
        warmup_epochs=1,
        teacher_temp_epochs=0,
        device="cpu",
    )
    summary = pretrain(
        screen / "load_data.parquet", tmp_path / "fm", FieldSettings(size=128), settings, show_progress=False
    )
    history = pd.read_csv(tmp_path / "fm" / "history.csv")
    assert len(history) == 6 and summary["last_loss"] < summary["first_loss"] - 0.3, history
    assert history["loss"].iloc[3:].max() < history["loss"].iloc[0]


def test_pretraining_on_the_real_fields_lowers_its_loss(tmp_path):
    """The Phenix (540 px crop, 6 channels) and Bray (260 x 348 crop, 5 channels) fields of tests/data/images, one
    LoadData table: 8 epochs of DINOv2 at 256 px, one field per step; the loss falls by more than 0.2."""
    from test_fields import BRAY, PHENIX, bray_load_data, phenix_load_data

    def common(table, mapping):  # both layouts under the same LoadData columns
        out = table[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].copy()
        for model in ("DNA", "ER", "RNA", "AGP", "Mito"):
            source = next(c for c in mapping if c.endswith(model))
            out[f"FileName_Orig{model}"] = table[f"FileName_{source}"]
            out[f"PathName_Orig{model}"] = table[f"PathName_{source}"]
        return out

    index = pd.concat([common(phenix_load_data(), PHENIX), common(bray_load_data(), BRAY)], ignore_index=True)
    index.to_parquet(tmp_path / "load_data.parquet")
    settings = PretrainSettings(
        method="dinov2",
        backbone="vit-tiny",
        global_size=128,
        local_size=48,
        local_crops=2,
        out_dim=256,
        epochs=8,
        batch_fields=1,
        lr=0.016,
        warmup_epochs=1,
        teacher_temp_epochs=0,
        device="cpu",
    )
    summary = pretrain(
        tmp_path / "load_data.parquet", tmp_path / "fm", FieldSettings(size=256), settings, show_progress=False
    )
    history = pd.read_csv(tmp_path / "fm" / "history.csv")
    assert summary["fields"] == 2 and summary["last_loss"] < summary["first_loss"] - 0.2, history
    assert (history["loss"].iloc[4:] < history["loss"].iloc[0]).all()


@pytest.mark.parametrize(
    "bad, message",
    [({"centering": "median"}, "centering must be"), ({"sinkhorn_iterations": 0}, "--sinkhorn-iterations must be")],
)
def test_bad_pretraining_settings_are_refused(fields, tmp_path, bad, message):
    from momil.errors import MomilError

    with pytest.raises(MomilError, match=message):
        pretrain(fields, tmp_path / "fm", FIELD, PretrainSettings(**{**SMALL, **bad}), show_progress=False)
    assert not (tmp_path / "fm").exists()


def test_pretrain_then_extract_from_the_shell(fields, tmp_path, capsys):
    from momil.cli import main
    from momil.io.store import InstanceStore

    code = main(
        [
            "pretrain",
            "--load-data",
            str(fields),
            "--out",
            str(tmp_path / "fm"),
            "--method",
            "dino",
            "--backbone",
            "vit-tiny",
            "--size",
            "64",
            "--global-size",
            "32",
            "--local-size",
            "16",
            "--local-crops",
            "1",
            "--out-dim",
            "32",
            "--epochs",
            "1",
            "--batch-fields",
            "4",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0 and "backbone.pt" in capsys.readouterr().out
    code = main(
        [
            "extract",
            "--load-data",
            str(fields),
            "--wells",
            str(fields.parent / "wells.parquet"),
            "--out",
            str(tmp_path / "store"),
            "--backbone",
            "vit-tiny",
            "--weights",
            str(tmp_path / "fm" / "backbone.pt"),
            "--size",
            "64",
            "--tile",
            "32",
            "--stride",
            "32",
            "--no-drop-background",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    store = InstanceStore(tmp_path / "store")
    assert store.n_instances == 4 * store.n_wells and np.isfinite(store.features).all()
    assert "weights" in str(store.manifest["history"][-1])
