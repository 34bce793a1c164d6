"""The backbone factory: timm ViTs by name for any channel count and tile size, weights only from local files."""

from __future__ import annotations

import pytest
import torch

from momil.errors import MomilError
from momil.imaging.backbone import make_backbone, save_backbone


def test_vit_by_name_for_five_channels():
    model = make_backbone("vit-tiny", in_chans=5, img_size=32).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 5, 32, 32))
    assert out.shape == (3, model.num_features) == (3, 192)
    with pytest.raises(MomilError, match="cannot make backbone"):
        make_backbone("no-such-net", 5, 32)


def test_weights_round_trip_and_dino_style_checkpoints(tmp_path):
    torch.manual_seed(0)
    source = make_backbone("vit-tiny", 5, 32).eval()
    save_backbone(tmp_path / "ours.pt", source)
    x = torch.rand(2, 5, 32, 32)
    with torch.no_grad():
        expected = source(x)
        again = make_backbone("vit-tiny", 5, 32, tmp_path / "ours.pt").eval()
        assert torch.allclose(again(x), expected, atol=1e-6)
    # a DINO checkpoint: teacher weights under "backbone." plus a projection head that is ignored
    dino = {
        "teacher": {
            **{f"backbone.{k}": v for k, v in source.state_dict().items()},
            "head.mlp.0.weight": torch.zeros(4, 4),
        }
    }
    torch.save(dino, tmp_path / "dino.pth")
    with torch.no_grad():
        assert torch.allclose(make_backbone("vit-tiny", 5, 32, tmp_path / "dino.pth").eval()(x), expected, atol=1e-6)
    # trained on 32-pixel tiles, used on 64: position embeddings are resampled
    bigger = make_backbone("vit-tiny", 5, 64, tmp_path / "ours.pt")
    assert bigger.pos_embed.shape[1] == 1 + 16


def test_weights_that_do_not_fit_are_refused(tmp_path):
    save_backbone(tmp_path / "three.pt", make_backbone("vit-tiny", 3, 32))
    with pytest.raises(MomilError, match="expects 3 channels, the images have 5"):
        make_backbone("vit-tiny", 5, 32, tmp_path / "three.pt")
    save_backbone(tmp_path / "small.pt", make_backbone("vit-s16", 5, 32))
    with pytest.raises(MomilError):
        make_backbone("vit-tiny", 5, 32, tmp_path / "small.pt")
    with pytest.raises(MomilError, match="never downloads"):
        make_backbone("vit-tiny", 5, 32, tmp_path / "absent.pt")
