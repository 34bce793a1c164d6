"""Checkpoint files: the training state (resume) and the model file `momil predict` reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from momil.errors import MomilError
from momil.io.atomic import atomic_path
from momil.io.readers import load_torch
from momil.model.base import MILModel
from momil.model.registry import model_from_hparams

_ARRAY_KEYS = ("task_weights", "running_loss")  # numpy arrays in the training state (AMTL)


def state_for_checkpoint(state: dict) -> dict:
    """The training state with its numpy arrays as tensors, so the checkpoint loads with weights_only=True."""
    return {k: torch.from_numpy(v) if k in _ARRAY_KEYS and isinstance(v, np.ndarray) else v for k, v in state.items()}


def state_from_checkpoint(state: dict) -> dict:
    return {k: v.numpy() if k in _ARRAY_KEYS and isinstance(v, torch.Tensor) else v for k, v in state.items()}


def save_training_checkpoint(
    path: Path, model, optimizer, lazy, rng, state, signature, device, scheduler, rank_rngs=None
) -> None:
    """The training state; under torchrun (written by rank 0) with every rank's torch RNG (``rank_rngs``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "lazy": lazy.state_dict() if lazy is not None else None,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        "state": state_for_checkpoint(state),
        "signature": signature,
        "rank_torch_rng": rank_rngs if rank_rngs is not None and len(rank_rngs) > 1 else None,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_model(path, model: MILModel, extra: dict | None = None) -> Path:
    """A checkpoint `momil predict` can load: hyperparameters, weights, and what made it."""
    payload = {
        "format": "momil-model",
        "hparams": model.hparams,
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model(path, device="cpu") -> tuple[MILModel, dict]:
    path = Path(path)
    payload = load_torch(path, "model file", map_location=device)
    if not isinstance(payload, dict) or payload.get("format") != "momil-model":
        raise MomilError(f"{path}: not a momil model file (train one with `momil train` or `momil cv`)")
    try:
        model = model_from_hparams(payload["hparams"])
    except MomilError as err:
        raise MomilError(f"{path}: {err}") from err
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model.to(device), payload.get("extra", {})
