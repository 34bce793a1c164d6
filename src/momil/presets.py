"""Named sets of settings for `momil train`, `cv`, `select`, `impute` and `benchmark` (``--preset``).

A preset fills settings per stage table (``train``, ``cv``, ``select``, ``impute``); a TOML file given with
``--config`` and the command's own flags override it (defaults < preset < TOML < flags).

* ``paper``: the paper's settings (section 3): DSMIL heads, F_phi {64, 128} x F_psi {32, 64, 128}, learning rates
  {1e-4, 5e-5, 1e-5}, 100 epochs with a 20-epoch warm-up, AdamW (weight decay 5e-4), cosine annealing, early
  stopping with patience 10 on the validation well-level mean ROC-AUC over the primary assays.
* ``quick``: the settings for a laptop or 2 CPU cores (the README's benchmark and the quality panel): one grid
  point per size (F_phi 64, heads 32), gated-attention (ABMIL) heads, learning rates {1e-2, 3e-3}, 25 epochs with a
  3-epoch warm-up, the model at the end of the schedule, the mean stream and the shared readout, 2 imputation
  rounds. These are the library's defaults (except the imputation rounds: 1 by default).
"""

from __future__ import annotations

from momil.errors import MomilError

PRESETS: dict[str, dict[str, dict]] = {
    "paper": {
        "train": {
            "head": "dsmil",
            "projector_dim": 128,
            "head_dim": 64,
            "dropout": 0.5,
            "lr": 1e-4,
            "weight_decay": 5e-4,
            "epochs": 100,
            "warmup_epochs": 20,
            "patience": 10,
            "select_epoch": "best",
            "mean_stream": False,
            "shared_attention": False,
            "shared_readout": False,
            "linear_floor": False,
            "calibrate": False,
        },
        "cv": {"projector_dims": "64,128", "head_dims": "32,64,128", "lrs": "1e-4,5e-5,1e-5"},
        "impute": {"rounds": 1},
        "select": {"stl_lr": 1e-4, "stl_head_dim": 64},
    },
    "quick": {
        "train": {
            "head": "abmil",
            "projector_dim": 64,
            "head_dim": 32,
            "lr": 1e-2,
            "epochs": 25,
            "warmup_epochs": 3,
            "patience": 6,
            "batch_wells": 32,
            "select_epoch": "last",
            "mean_stream": True,
            "shared_readout": True,
            "linear_floor": False,
            "calibrate": True,
        },
        "cv": {"projector_dims": "64", "head_dims": "32", "lrs": "1e-2,3e-3"},
        "impute": {"rounds": 2},
        "select": {"stl_lr": 3e-3, "stl_head_dim": 32},
    },
}


def preset_values(name: str | None, section: str) -> dict:
    """The settings preset ``name`` gives the stage table ``section`` ({} without a preset)."""
    if not name:
        return {}
    if name not in PRESETS:
        raise MomilError(f"--preset must be one of {sorted(PRESETS)}, not {name!r}")
    return dict(PRESETS[name].get(section, {}))
