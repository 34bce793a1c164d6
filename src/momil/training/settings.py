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
        "abmil",
        '"abmil" (gated attention; the default: at 20-500 labels per assay DSMIL\'s critical-instance stream '
        'trails it, see the README\'s quality panel), "dsmil" (the paper\'s, --preset paper) or "mean" (mean '
        "pooling, no attention)",
        choices=["dsmil", "abmil", "mean"],
    )
    projector_dim: int = setting(64, "F_phi output size d (paper's grid: 64, 128)", low=1)
    head_dim: int = setting(32, "F_gamma size inside each head (paper's grid: 32, 64, 128)", low=1)
    dropout: float = setting(
        0.5, "the MIL models' dropout (on each instance's projected features)", low=0, high=1, high_open=True
    )
    mlp_dropout: float = setting(
        0.0,
        "mean-mlp's dropout (on the hidden layers of its one vector per well, where no instances average the masks "
        "out; 0.5 put it 0.04-0.05 below mean-lr on the quality panel)",
        low=0,
        high=1,
        high_open=True,
    )
    lr: float = setting(1e-2, "peak learning rate (paper's grid: 1e-4, 5e-5, 1e-5)", low=0, high=1, low_open=True)
    weight_decay: float = setting(5e-4, low=0)
    epochs: int = setting(25, "(paper: 100)", low=1)
    warmup_epochs: int = setting(3, "linear warm-up, then cosine annealing to 0 at the last epoch (paper: 20)", low=0)
    patience: int = setting(6, "epochs without a better validation score before stopping (--select-epoch best)", low=1)
    select_epoch: str = setting(
        "last",
        '"last": the model at the end of the schedule, its validation score ranks grid points (validation folds '
        'of 10-100 compounds per assay are too small to pick an epoch); "best": the epoch of the best validation '
        "score, stopping after --patience epochs without a better one (the paper's)",
        choices=["last", "best"],
    )
    batch_wells: int = setting(32, "wells per step", low=1)
    mean_stream: bool = setting(
        True,
        "MoMIL: each head adds a linear readout of the well's mean instance; mean-mlp: a linear readout of the "
        "standardised mean beside the MLP; both started at zero (off in the paper's form, --preset paper)",
    )
    shared_attention: bool = setting(
        False,
        "MoMIL: one gated attention over the shared projector's output, scored for every assay, to which each head "
        "adds its own scores (started at zero); off in the paper's form (--preset paper)",
    )
    shared_readout: bool = setting(
        True,
        "MoMIL: one gated attention (the shared attention's, with --shared-attention) pools the shared projector's "
        "output, and each head adds a linear readout of it to its logit (started at zero): multi-label MIL's form "
        "beside the per-assay heads, learning where to look from every assay's labels (+0.017 on average over the "
        "quality panel's seed 0); off in the paper's form (--preset paper)",
    )
    linear_floor: bool = setting(
        False,
        "after training, blend each assay's logit with a logistic regression on the well mean (the mean-lr baseline, "
        "fitted on the training compounds); the linear model's share (0, 1/4, ..., 1) is the one that ranks the "
        "primary assays' validation wells best (off by default: on the quality panel it moved MoMIL's pooled AUC by "
        "-0.010 to +0.015 per regime, +0.0005 on average, the validation folds being too small to choose the share)",
    )
    calibrate: bool = setting(
        True,
        "after training, standardise each assay's logits on the validation wells and fit one logistic map to the "
        "validation labels, so models of different rotations share a scale (off in the paper's form)",
    )
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
