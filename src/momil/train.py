"""`momil train`: fit a MoMIL model on the training wells, early-stopped and selected on validation wells.

AdamW (weight decay 5e-4; lazily per head, see :class:`LazyHeadAdamW`), linear warm-up then cosine annealing
(per step), dropout 0.5, early stopping on the mean well-level ROC-AUC over primary assays on validation
(patience 10), the best epoch's weights kept (equal AUCs, common on small validation sets, are decided by the
lower validation BCE).
A checkpoint is written after every epoch (atomically); a run killed at any point and started again with the
same settings and checkpoint folder resumes from the last checkpoint and ends with the same numbers as an
uninterrupted run: the checkpoint holds the model, optimiser, schedule, the shuffling generator and torch's RNG.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from momil.config import Settings, check_device_name, setting
from momil.data import WellPairs, load_bags
from momil.errors import MomilError
from momil.faults import fault_point
from momil.io.readers import load_torch
from momil.io.store import InstanceStore
from momil.model.heads import PairPlan
from momil.model.momil import MoMIL
from momil.progress import progress
from momil.provenance import atomic_path

MODELS = ("momil", "mean-mlp", "multilabel-mil", "instance-count")


@dataclasses.dataclass
class TrainSettings(Settings):
    model: str = setting(
        "momil",
        '"momil" or a baseline: "mean-mlp", "multilabel-mil", "instance-count" (cv only)',
        choices=["momil", "mean-mlp", "multilabel-mil", "instance-count"],
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


def model_from_hparams(hp: dict) -> torch.nn.Module:
    """MoMIL or a baseline of the same interface from its hyperparameters (``model.hparams``)."""
    from momil.model.baselines import BASELINES

    kind = hp.get("model", "momil")
    if kind == "momil":
        return MoMIL(
            hp["in_dim"],
            hp["assays"],
            hp["head"],
            hp["projector_dim"],
            hp["head_dim"],
            hp["dropout"],
            hp["shared_projector"],
        )
    if kind in BASELINES:
        return BASELINES[kind](hp["in_dim"], hp["assays"], hp["projector_dim"], hp["head_dim"], hp["dropout"])
    if kind == "instance-count":
        raise MomilError("the instance-count baseline is a logistic regression, not a network: run it with `momil cv`")
    raise MomilError(f"model must be one of {MODELS}, not {kind!r}")


def build_model(in_dim: int, assays: list[str], settings: TrainSettings) -> torch.nn.Module:
    """MoMIL or a baseline of the same interface, by ``settings.model``."""
    return model_from_hparams(
        {
            "model": settings.model,
            "in_dim": in_dim,
            "assays": list(assays),
            "head": settings.head,
            "projector_dim": settings.projector_dim,
            "head_dim": settings.head_dim,
            "dropout": settings.dropout,
            "shared_projector": settings.shared_projector,
        }
    )


def resolve_device(name: str) -> torch.device:
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MomilError("device cuda was asked for but torch sees no GPU -- use --device cpu or auto")
    return torch.device(name)


def keep_freed_memory() -> bool:
    """Lets glibc's malloc keep freed blocks of up to 32 MiB for reuse (mmap threshold 32 MiB, trim threshold
    256 MiB) instead of handing them back to the kernel after each step. A training step allocates and frees
    tensors of a few MiB; with the default dynamic thresholds each step page-faults thousands of times, a
    fifth of a CPU step's time. Process-wide, idempotent; a no-op (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 256 * 2**20))
    except (OSError, AttributeError):
        return False


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to 1, then cosine annealing to 0."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress_ = min(1.0, (step - warmup_steps) / remaining)
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC, NaN when ``y`` holds one class (undefined, never 0.5)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if len(y) == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, score))


class LazyHeadAdamW:
    """AdamW for the stacked head parameters that updates only the heads (rows) used in a step.

    Like TensorFlow's LazyAdam: a head's weights, moments and bias-correction step count change only in steps
    where it has labelled pairs, so a step costs the same with 200 or 2,000 assays. When every head has pairs in
    every step it is exactly AdamW (decoupled weight decay, bias correction), which ``tests/test_train.py``
    checks. ``lazy_heads=False`` trains the heads with plain AdamW instead.

    Each used row is handed to torch's fused AdamW kernel as a tensor of its own, with its own step count, so
    the update is one pass over the used rows, in place, with no gather or scatter (about 5x faster than the
    vectorised form on CPU). Where the kernel is missing (torch < 2.4 on CPU) the vectorised form is used.
    """

    def __init__(
        self,
        params: dict[str, torch.nn.Parameter],
        weight_decay: float,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ):
        self.params = params
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.float32, device=first.device)
        self.fused = _has_fused_adamw(first.device) if fused is None else fused
        # row views, made once: the kernel updates them, and so the tables, in place
        self._rows = {
            n: (p.detach().unbind(0), self.exp_avg[n].unbind(0), self.exp_avg_sq[n].unbind(0))
            for n, p in params.items()
        }
        self._step_rows = self.steps.unbind(0)

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: dict[str, torch.Tensor], lr: float) -> None:
        """``rows``: the used heads, unique, in any order; ``grads[name]``: their gradients, row i for rows[i]."""
        if self.fused:
            self._step_fused(rows, grads, lr)
        else:
            self._step_vectorised(rows, grads, lr)

    def _step_fused(self, rows: torch.Tensor, grads: dict[str, torch.Tensor], lr: float) -> None:
        beta1, beta2 = self.betas
        self.steps.index_add_(0, rows, torch.ones(len(rows), dtype=self.steps.dtype, device=self.steps.device))
        used = rows.tolist()
        params, gs, ms, vs, steps = [], [], [], [], []
        for name, (p_rows, m_rows, v_rows) in self._rows.items():
            params += [p_rows[i] for i in used]
            ms += [m_rows[i] for i in used]
            vs += [v_rows[i] for i in used]
            gs += list(grads[name].unbind(0))
            steps += [self._step_rows[i] for i in used]
        torch._fused_adamw_(
            params,
            gs,
            ms,
            vs,
            [],
            steps,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            weight_decay=self.weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )

    def _step_vectorised(self, rows: torch.Tensor, grads: dict[str, torch.Tensor], lr: float) -> None:
        beta1, beta2 = self.betas
        self.steps[rows] += 1
        count = self.steps[rows].to(torch.float64)
        correction1 = (1 - beta1**count).float()
        correction2 = (1 - beta2**count).float()
        for name, param in self.params.items():
            grad = grads[name]
            shape = (-1,) + (1,) * (param.dim() - 1)
            value = param.index_select(0, rows) * (1 - lr * self.weight_decay)
            m = self.exp_avg[name].index_select(0, rows).lerp_(grad, 1 - beta1)
            v = self.exp_avg_sq[name].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v / correction2.view(shape)).sqrt_().add_(self.eps)
            value.addcdiv_(m / correction1.view(shape), denom, value=-lr)
            param.index_copy_(0, rows, value)
            self.exp_avg[name].index_copy_(0, rows, m)
            self.exp_avg_sq[name].index_copy_(0, rows, v)

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        for name in self.params:
            self.exp_avg[name].copy_(state["exp_avg"][name])
            self.exp_avg_sq[name].copy_(state["exp_avg_sq"][name])
        self.steps.copy_(state["steps"])


def _has_fused_adamw(device: torch.device) -> bool:
    """Whether torch's fused AdamW kernel runs on ``device`` (CPU from torch 2.4, CUDA earlier)."""
    if not hasattr(torch, "_fused_adamw_"):
        return False
    try:
        p, g = torch.zeros(2, device=device), torch.ones(2, device=device)
        torch._fused_adamw_(
            [p],
            [g],
            [torch.zeros_like(p)],
            [torch.zeros_like(p)],
            [],
            [torch.ones((), device=device)],
            lr=1e-3,
            beta1=0.9,
            beta2=0.999,
            weight_decay=0.0,
            eps=1e-8,
            amsgrad=False,
            maximize=False,
        )
    except (RuntimeError, NotImplementedError):
        return False
    return True


def make_optimizers(
    model: torch.nn.Module, lr: float, weight_decay: float, lazy_heads: bool, device
) -> tuple[torch.optim.AdamW, LazyHeadAdamW | None]:
    """AdamW for the dense parameters (torch's fused kernel where it runs) and, with ``lazy_heads`` on a MoMIL
    model, :class:`LazyHeadAdamW` for the head table (else None: the heads are dense parameters too)."""
    device = torch.device(device)
    if lazy_heads and isinstance(model, MoMIL):
        lazy = LazyHeadAdamW(dict(model.heads.named_parameters()), weight_decay)
        dense_params = list(model.projector.parameters())
    else:
        lazy, dense_params = None, list(model.parameters())
    if not dense_params:  # lazy heads without a shared projector: a placeholder keeps the schedule's bookkeeping
        dense_params = [torch.nn.Parameter(torch.zeros(0, device=device))]
    fused = _has_fused_adamw(device) and all(p.dtype in (torch.float32, torch.float64) for p in dense_params)
    return torch.optim.AdamW(dense_params, lr=lr, weight_decay=weight_decay, fused=fused or None), lazy


def balanced_loss(pair_loss: torch.Tensor, task: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """AMTL's weighted geometric mean of the task losses present in a step: sum_t w_t log L_t / sum_t w_t, where
    L_t is the mean loss of task t's pairs; ``task`` (P,) indexes ``weights`` (tasks in the step)."""
    n = weights.shape[0]
    sums = pair_loss.new_zeros(n).index_add(0, task, pair_loss)
    counts = pair_loss.new_zeros(n).index_add(0, task, torch.ones_like(pair_loss))
    present = counts > 0
    mean = sums[present] / counts[present]
    w = weights[present].to(mean.dtype)
    return (w * torch.log(mean + 1e-8)).sum() / w.sum().clamp(min=1e-8)


def smoothed_balanced_loss(
    pair_loss: torch.Tensor,
    task: torch.Tensor,
    weights: torch.Tensor,
    running: np.ndarray,
    task_ids: np.ndarray,
    momentum: float = 0.9,
) -> torch.Tensor:
    """AMTL's weighted geometric mean for sparse labels: its gradient, sum_t w_t grad(L_t) / L_t, with L_t in the
    denominator replaced by the task's running loss (an EMA over steps, ``running`` (T,), updated in place; NaN =
    not seen yet). A task with one or two labelled pairs in a step otherwise divides by a near-zero loss and its
    easiest pairs dominate the step. ``task`` (P,) indexes ``weights`` / ``task_ids`` (global task numbers)."""
    n = weights.shape[0]
    sums = pair_loss.new_zeros(n).index_add(0, task, pair_loss)
    counts = pair_loss.new_zeros(n).index_add(0, task, torch.ones_like(pair_loss))
    present = counts > 0
    mean = sums[present] / counts[present]
    ids = task_ids[present.cpu().numpy()]
    observed = mean.detach().float().cpu().numpy().astype(np.float64)
    previous = running[ids]
    running[ids] = np.where(np.isnan(previous), observed, momentum * previous + (1 - momentum) * observed)
    scale = torch.as_tensor(np.maximum(running[ids], 1e-3), dtype=mean.dtype, device=mean.device)
    w = weights[present].to(mean.dtype)
    return (w * mean / scale).sum() / w.sum().clamp(min=1e-8)


def training_step(
    model: MoMIL,
    bags,
    mask,
    rows,
    assay,
    label,
    optimizer,
    lazy: LazyHeadAdamW | None,
    lr: float,
    device,
    task_weights: torch.Tensor | None = None,
    running_loss: np.ndarray | None = None,
) -> float:
    """One optimisation step over the labelled pairs; returns the summed loss.

    The objective is the mean BCE over pairs, or with ``task_weights`` (T,) AMTL's weighted geometric mean of
    the per-task losses (:func:`balanced_loss`; with ``running_loss`` its smoothed form,
    :func:`smoothed_balanced_loss`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    rows_t, target = torch.from_numpy(rows).to(device), torch.from_numpy(label).to(device)
    with _autocast(device):
        if lazy is None:
            task, ids = torch.from_numpy(assay).to(device), np.arange(len(model.assays))
            out = model(bags, mask, rows_t, task)
        else:  # the rows of the heads in use, in the plan's order: updated by the lazy optimizer
            plan = PairPlan.build(assay, device)
            tables = {
                name: param.detach().index_select(0, plan.assays).requires_grad_(True)
                for name, param in lazy.params.items()
            }
            out = model.forward_planned(bags, mask, plan.permute(rows_t), plan, tables["flat"])
            target = plan.permute(target)
            task, ids = plan.pair_head, plan.assays.cpu().numpy()
        pair_loss = model.pair_loss(out, target)
        loss_sum = pair_loss.sum()
        if task_weights is None:
            objective = loss_sum / len(rows)
        else:
            weights = task_weights.to(pair_loss.device)[torch.from_numpy(ids).to(pair_loss.device)]
            objective = (
                balanced_loss(pair_loss, task, weights)
                if running_loss is None
                else smoothed_balanced_loss(pair_loss, task, weights, running_loss, ids)
            )
    objective.backward()
    if optimizer.param_groups[0]["params"]:
        optimizer.step()
    if lazy is not None:
        lazy.step(plan.assays, {name: table.grad for name, table in tables.items()}, lr)
    return float(loss_sum.detach())


@dataclasses.dataclass
class FitResult:
    model: MoMIL
    best_epoch: int
    best_score: float
    history: list[dict]
    seconds: float


def _signature(settings: TrainSettings, pairs: WellPairs, train_wells: np.ndarray, val_wells: np.ndarray) -> str:
    digest = hashlib.sha1()
    digest.update(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    digest.update("\x1f".join(pairs.assays).encode())
    digest.update(pairs.digest().encode())
    digest.update(np.asarray(train_wells, np.int64).tobytes())
    digest.update(np.asarray(val_wells, np.int64).tobytes())
    return digest.hexdigest()


@torch.no_grad()
def predict_pairs(
    model: MoMIL, store: InstanceStore, wells: np.ndarray, pairs: WellPairs, device, batch_wells: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities for the labelled pairs of ``wells``: (well, assay, label, probability) arrays."""
    model.eval()
    out_w, out_a, out_y, out_p = [], [], [], []
    for start in range(0, len(wells), batch_wells):
        batch = wells[start : start + batch_wells]
        rows, assay, label = pairs.pairs(batch)
        if len(rows) == 0:
            continue
        bags, mask = load_bags(store, batch, device)
        with _autocast(device):
            out = model(bags, mask, torch.from_numpy(rows).to(device), torch.from_numpy(assay).to(device))
        out_w.append(batch[rows])
        out_a.append(assay)
        out_y.append(label)
        out_p.append(model.probability(out).float().cpu().numpy())
    if not out_w:
        empty = np.zeros(0)
        return empty.astype(np.int64), empty.astype(np.int64), empty, empty
    return np.concatenate(out_w), np.concatenate(out_a), np.concatenate(out_y), np.concatenate(out_p)


def validation_score(assay: np.ndarray, label: np.ndarray, prob: np.ndarray, primary: np.ndarray) -> tuple[float, dict]:
    """Mean well-level ROC-AUC over primary assays with both classes (all assays if no primary has them)."""
    per_assay = {}
    for t in np.unique(assay):
        mine = assay == t
        per_assay[int(t)] = roc_auc(label[mine], prob[mine])
    chosen = [v for t, v in per_assay.items() if primary[t] and not math.isnan(v)]
    if not chosen:
        chosen = [v for v in per_assay.values() if not math.isnan(v)]
    return (float(np.mean(chosen)) if chosen else float("nan")), per_assay


def amtl_weights(per_assay: dict[int, float], potentials: np.ndarray, gamma: float) -> np.ndarray:
    """(1 - achievement) ** gamma per task, achievement = validation AUC / single-task AUC in [0, 1]."""
    weights = np.full(len(potentials), np.nan)
    for t, auc in per_assay.items():
        potential = potentials[t]
        if not (math.isnan(auc) or math.isnan(potential) or potential <= 0):
            weights[t] = (1.0 - min(1.0, max(0.0, auc / potential))) ** gamma
    fill = np.nanmean(weights) if np.isfinite(weights).any() else 1.0
    weights = np.where(np.isnan(weights), fill, weights)
    return np.maximum(weights, 1e-3)  # a task at its potential keeps a small weight


def _bce(label: np.ndarray, prob: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities (NaN without pairs)."""
    if len(label) == 0:
        return float("nan")
    p = np.clip(prob.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def fit(
    store: InstanceStore,
    pairs: WellPairs,
    train_wells: np.ndarray,
    val_wells: np.ndarray,
    primary: np.ndarray,
    settings: TrainSettings | None = None,
    checkpoint_dir=None,
    show_progress: bool = True,
    on_epoch_end: Callable[[int], None] | None = None,
    potentials: np.ndarray | None = None,
) -> FitResult:
    """Train on ``train_wells`` (store rows), select on ``val_wells``. ``primary`` (T,) bool marks the
    assays whose validation AUC selects the model. ``on_epoch_end`` is called after each checkpoint.

    With ``settings.balancing == "amtl"``, ``potentials`` (T,) are the single-task validation AUCs: after each
    epoch a task's achievement is its validation AUC / potential (clipped to [0, 1]) and its weight
    (1 - achievement) ** amtl_gamma (tasks without an AUC or a potential get the mean weight); the next epoch
    minimises the weighted geometric mean of the task losses, in the smoothed form of
    :func:`smoothed_balanced_loss` (labels are sparse: a task has few pairs per step). All weights start at 1."""
    settings = settings or TrainSettings()
    started = time.perf_counter()
    device = resolve_device(settings.device)
    if device.type == "cpu":
        keep_freed_memory()
    train_wells = pairs.labelled_wells(np.asarray(train_wells, np.int64))
    val_wells = pairs.labelled_wells(np.asarray(val_wells, np.int64))
    if len(train_wells) == 0:
        raise MomilError("no training well carries a label for the model's assays")
    torch.manual_seed(settings.seed)
    model = build_model(store.dim, pairs.assays, settings).to(device)
    optimizer, lazy = make_optimizers(model, settings.lr, settings.weight_decay, settings.lazy_heads, device)
    steps_per_epoch = math.ceil(len(train_wells) / settings.batch_wells)
    total_steps = steps_per_epoch * settings.epochs
    warmup_steps = steps_per_epoch * min(settings.warmup_epochs, settings.epochs)
    rng = np.random.default_rng(settings.seed)
    state = {
        "epoch": 0,
        "step": 0,
        "best_score": -math.inf,
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
        "best_state": None,
    }
    if settings.balancing not in ("none", "amtl"):
        raise MomilError(f"balancing must be 'none' or 'amtl', not {settings.balancing!r}")
    amtl = settings.balancing == "amtl"
    if amtl and (potentials is None or len(potentials) != len(pairs.assays)):
        raise MomilError(
            "AMTL balancing needs each assay's single-task validation AUC (its potential); `momil cv` computes them"
        )
    state["task_weights"] = np.ones(len(pairs.assays)) if amtl else None
    state["running_loss"] = np.full(len(pairs.assays), np.nan) if amtl else None
    signature = _signature(settings, pairs, train_wells, val_wells)
    if amtl:
        signature += hashlib.sha1(np.nan_to_num(np.asarray(potentials, np.float64), nan=-1).tobytes()).hexdigest()[:8]

    checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if checkpoint is not None and checkpoint.exists():
        saved = load_torch(checkpoint, "training checkpoint", map_location=device)
        if saved.get("signature") != signature:
            raise MomilError(
                f"{checkpoint}: was written by a run with other settings or data -- use another "
                "checkpoint folder or delete it to start again"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if lazy is not None:
            lazy.load_state_dict(saved["lazy"])
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"])
        state = _tensors_as_arrays(saved["state"])

    bar = progress(total=settings.epochs, desc="train", unit="epoch", enabled=show_progress, initial=state["epoch"])
    with bar:
        while state["epoch"] < settings.epochs and state["bad_epochs"] < settings.patience:
            model.train()
            order = rng.permutation(train_wells)
            total_loss, total_pairs = 0.0, 0
            for start in range(0, len(order), settings.batch_wells):
                batch = order[start : start + settings.batch_wells]
                rows, assay, label = pairs.pairs(batch)
                bags, mask = load_bags(store, batch, device)
                lr = settings.lr * lr_factor(state["step"], total_steps, warmup_steps)
                weights = torch.as_tensor(state["task_weights"], dtype=torch.float32) if amtl else None
                step_loss = training_step(
                    model,
                    bags,
                    mask,
                    rows,
                    assay,
                    label,
                    optimizer,
                    lazy,
                    lr,
                    device,
                    weights,
                    state["running_loss"] if amtl else None,
                )
                if not math.isfinite(step_loss):
                    raise MomilError(
                        f"training diverged: the loss became {step_loss} in epoch {state['epoch']}, "
                        f"step {state['step']} (learning rate {lr:g}) -- lower --lr (now "
                        f"{settings.lr:g}); no model was written"
                    )
                total_loss += step_loss
                total_pairs += len(rows)
                state["step"] += 1
            _, v_assay, v_label, v_prob = predict_pairs(model, store, val_wells, pairs, device)
            score, per_assay = validation_score(v_assay, v_label, v_prob, primary)
            if amtl:
                state["task_weights"] = amtl_weights(per_assay, np.asarray(potentials, np.float64), settings.amtl_gamma)
            val_loss = _bce(v_label, v_prob)
            epoch = state["epoch"]
            state["history"].append(
                {
                    "epoch": epoch,
                    "train_loss": total_loss / max(1, total_pairs),
                    "val_auc": score,
                    "val_loss": val_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
            comparable = score if not math.isnan(score) else -total_loss / max(1, total_pairs)
            # validation AUCs tie often on small validation sets: the lower validation loss breaks the tie
            better = comparable > state["best_score"] + 1e-12 or (
                abs(comparable - state["best_score"]) <= 1e-12 and val_loss < state.get("best_val_loss", math.inf)
            )
            if better:
                state.update(
                    best_score=comparable,
                    best_epoch=epoch,
                    bad_epochs=0,
                    best_val_loss=val_loss,
                    best_state={k: v.detach().clone().cpu() for k, v in model.state_dict().items()},
                )
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            bar.update(1)
            bar.set_postfix(
                loss=f"{total_loss / max(1, total_pairs):.4f}",
                val_auc=f"{score:.3f}",
                best=f"{state['best_score']:.3f}",
            )
            if checkpoint is not None:
                _save_checkpoint(checkpoint, model, optimizer, lazy, rng, state, signature, device)
                fault_point("train.epoch")
            if on_epoch_end is not None:
                on_epoch_end(epoch)
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    return FitResult(model, state["best_epoch"], state["best_score"], state["history"], time.perf_counter() - started)


_ARRAY_KEYS = ("task_weights", "running_loss")  # numpy arrays in the training state (AMTL)


def _arrays_as_tensors(state: dict) -> dict:
    """The training state with its numpy arrays as tensors, so the checkpoint loads with weights_only=True."""
    return {k: torch.from_numpy(v) if k in _ARRAY_KEYS and isinstance(v, np.ndarray) else v for k, v in state.items()}


def _tensors_as_arrays(state: dict) -> dict:
    return {k: v.numpy() if k in _ARRAY_KEYS and isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _save_checkpoint(path: Path, model, optimizer, lazy, rng, state, signature, device) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lazy": lazy.state_dict() if lazy is not None else None,
        "numpy_rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
        "state": _arrays_as_tensors(state),
        "signature": signature,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_model(path, model: MoMIL, extra: dict | None = None) -> Path:
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


def load_model(path, device="cpu") -> tuple[MoMIL, dict]:
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
