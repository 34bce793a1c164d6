"""The foundation model F_omega: a timm ViT made by name for any channel count and tile size.

Names: ``vit-b16`` (ViT-B/16, the paper's), ``vit-s16`` (ViT-S/16) and ``vit-tiny`` (ViT-Ti/16, for CPU runs),
or any timm model name. Weights come only from a local file the user names: a momil pretraining checkpoint, a
DINO / DINOv2 checkpoint (``teacher`` / ``student`` / ``model`` / ``state_dict`` entries and ``module.`` /
``backbone.`` prefixes are understood) or a plain state dict. Position embeddings are resampled to the tile
size when the checkpoint was trained on another. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from momil.errors import MomilError
from momil.io.readers import load_torch

NAMES = {"vit-b16": "vit_base_patch16_224", "vit-s16": "vit_small_patch16_224", "vit-tiny": "vit_tiny_patch16_224"}


def make_backbone(name: str = "vit-b16", in_chans: int = 5, img_size: int = 480, weights=None) -> torch.nn.Module:
    """A ViT returning one embedding per tile (its CLS token), ``num_features`` wide."""
    import timm

    model_name = NAMES.get(name, name)
    try:
        model = timm.create_model(model_name, pretrained=False, in_chans=in_chans, img_size=img_size, num_classes=0)
    except Exception as err:  # noqa: BLE001 - timm raises RuntimeError / TypeError / KeyError by model
        raise MomilError(
            f"cannot make backbone {name!r} ({err}) -- use vit-b16, vit-s16, vit-tiny or a timm ViT name"
        ) from err
    if weights:
        load_weights(model, weights)
    return model


def _unwrap(payload) -> dict:
    if isinstance(payload, dict) and payload.get("format") == "momil-backbone":
        return payload["state_dict"]
    for key in ("teacher", "model", "state_dict", "student"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            return _unwrap(payload[key])
    if not isinstance(payload, dict):
        raise MomilError("the weights file holds no state dict")
    return payload


def load_weights(model: torch.nn.Module, path) -> None:
    """Load a local checkpoint into ``model`` (see module doc); raises MomilError naming what does not fit."""
    from timm.layers import resample_abs_pos_embed

    path = Path(path)
    if not path.exists():
        raise MomilError(f"{path}: weights file not found (momil never downloads weights; name a local file)")
    payload = load_torch(path, "backbone weights file")
    state = {}
    for key, value in _unwrap(payload).items():
        for prefix in ("module.", "backbone.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        prefix = getattr(model, "num_prefix_tokens", 1)
        grid = model.patch_embed.grid_size
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid), num_prefix_tokens=prefix)
    if (
        "patch_embed.proj.weight" in state
        and state["patch_embed.proj.weight"].shape != own["patch_embed.proj.weight"].shape
    ):
        raise MomilError(
            f"{path}: its patch embedding expects {state['patch_embed.proj.weight'].shape[1]} "
            f"channels, the images have {own['patch_embed.proj.weight'].shape[1]} -- map the "
            "channels the checkpoint was trained on with --channels"
        )
    heads = {k for k in state if k.startswith(("head.", "dino_head", "ibot_head"))}
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in heads}, strict=False)
    if missing:
        raise MomilError(
            f"{path}: {len(missing)} backbone weights are missing (e.g. {missing[0]}) -- is it a "
            f"checkpoint of the same architecture?"
        )
    if unexpected:
        raise MomilError(f"{path}: {len(unexpected)} weights do not belong to this backbone (e.g. {unexpected[0]})")


def save_backbone(path, model: torch.nn.Module, extra: dict | None = None) -> Path:
    from momil.io.atomic import atomic_path

    payload = {"format": "momil-backbone", "state_dict": model.state_dict(), "extra": extra or {}}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)
