"""Training settings: one dataclass for every fit (MoMIL and the baselines)."""

from __future__ import annotations

import dataclasses

from momil.config import Settings, check_device_name, setting
from momil.model.registry import MODELS


@dataclasses.dataclass
class TrainSettings(Settings):
    model: str = setting(
        "momil",
        '"momil" or a baseline: "mean-mlp", "multilabel-mil", "instance-count" (cv only)',
        choices=MODELS,
    )
    head: str = setting(
        "dsmil",
        '"dsmil" (the paper\'s), "abmil" (gated attention) or "mean" (mean pooling, no attention)',
        choices=["dsmil", "abmil", "mean"],
    )
    projector_dim: int = setting(128, "F_phi output size d (grid: 64, 128)", low=1)
    head_dim: int = setting(64, "F_gamma size inside each head (grid: 32, 64, 128)", low=1)
    dropout: float = setting(0.5, low=0, high=1, high_open=True)
    lr: float = setting(1e-4, "(grid: 1e-4, 5e-5, 1e-5)", low=0, high=1, low_open=True)
    weight_decay: float = setting(5e-4, low=0)
    epochs: int = setting(100, low=1)
    warmup_epochs: int = setting(20, "linear warm-up, then cosine annealing to 0 at the last epoch", low=0)
    patience: int = setting(10, "epochs without a better validation score before stopping", low=1)
    batch_wells: int = setting(32, "wells per step", low=1)
    shared_projector: bool = setting(True, "False: heads read the instance features directly (single-assay models)")
    lazy_heads: bool = setting(
        True, "AdamW moves a head only in steps where it has labelled pairs (cost ~ labels, not assays)"
    )
    balancing: str = setting(
        "none",
        '"none" (mean BCE over pairs) or "amtl" (achievement-based task balancing; cv computes potentials)',
        choices=["none", "amtl"],
    )
    amtl_gamma: float = setting(2.0, "AMTL focusing: weight = (1 - achievement) ** gamma", low=0)
    device: str = setting("auto", '"auto" (CUDA when present), "cpu" or "cuda"')
    seed: int = setting(0, low=0)

    def check(self) -> None:
        check_device_name(self.device)
