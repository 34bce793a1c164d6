"""Training one model: the step, the epoch loop with early stopping, checkpoints and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from momil import distributed, preemption
from momil.data.bags import bag_batches
from momil.data.pairs import WellPairs
from momil.device import autocast_for, keep_freed_memory, resolve_device
from momil.errors import MomilError
from momil.faults import fault_point
from momil.io.readers import load_torch
from momil.io.store import InstanceStore
from momil.model.base import MILModel
from momil.model.linear import well_means
from momil.model.ops import PairPlan
from momil.model.registry import build_model
from momil.preemption import Preempted
from momil.progress import progress
from momil.training.calibration import calibrate, label_levels
from momil.training.checkpoints import save_training_checkpoint, state_from_checkpoint
from momil.training.floor import blend_floor
from momil.training.inference import predict_pairs
from momil.training.losses import amtl_weights, balanced_loss, mean_bce, smoothed_balanced_loss
from momil.training.metrics import validation_score
from momil.training.optim import LazyHeadAdamW, make_optimizers, resume_schedule, warmup_cosine
from momil.training.settings import TrainSettings


def training_step(
    model: MILModel,
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
    total_pairs: int | None = None,
) -> float:
    """One optimisation step over the labelled pairs; returns the summed loss.

    The objective is the mean BCE over pairs, or with ``task_weights`` (T,) AMTL's weighted geometric mean of
    the per-task losses (:func:`balanced_loss`; with ``running_loss`` its smoothed form,
    :func:`smoothed_balanced_loss`). Under torchrun each rank holds its share of the step's wells and
    ``total_pairs`` is the pairs of the whole step: the gradients, summed over the ranks
    (:func:`reduce_gradients`), are the one-process step's."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    active = distributed.context().active
    loss_sum, used, tables = torch.zeros(()), torch.zeros(0, dtype=torch.long, device=device), {}
    if len(rows):  # under torchrun a rank's share of a step can be empty; it still joins the reduction
        rows_t, target = torch.from_numpy(rows).to(device), torch.from_numpy(label).to(device)
        with autocast_for(device):
            if lazy is None:
                task, ids = torch.from_numpy(assay).to(device), np.arange(len(model.assays))
                out = model(bags, mask, rows_t, task)
            else:  # the rows of the heads in use, in the plan's order: updated by the lazy optimizer
                plan = PairPlan.build(assay, device)
                used = plan.assays
                tables = {
                    name: param.detach().index_select(0, used).requires_grad_(True)
                    for name, param in lazy.params.items()
                }
                out = model.forward_planned(bags, mask, plan.permute(rows_t), plan, tables["flat"])
                target = plan.permute(target)
                task, ids = plan.pair_head, used.cpu().numpy()
            pair_loss = model.pair_loss(out, target)
            loss_sum = pair_loss.sum()
            if task_weights is None:
                objective = loss_sum / (total_pairs if active else len(rows))
            else:
                weights = task_weights.to(pair_loss.device)[torch.from_numpy(ids).to(pair_loss.device)]
                objective = (
                    balanced_loss(pair_loss, task, weights)
                    if running_loss is None
                    else smoothed_balanced_loss(pair_loss, task, weights, running_loss, ids)
                )
        objective.backward()
    if active:
        used, grads = reduce_gradients(
            [p for group in optimizer.param_groups for p in group["params"]], lazy, used, tables, device
        )
    else:
        grads = {name: table.grad for name, table in tables.items()}
    if optimizer.param_groups[0]["params"]:
        optimizer.step()
    if lazy is not None and len(used):
        lazy.step(used, grads, lr)
    return float(loss_sum.detach())


def reduce_gradients(params: list, lazy: LazyHeadAdamW | None, used: torch.Tensor, tables: dict, device):
    """Sum the gradients over torchrun's ranks (:func:`momil.distributed.sum_gradients`, one all-reduce) so
    every rank takes the same step: the dense parameters' and, with lazy heads, the head rows of every rank
    scattered into whole (assays x K) tables, with a mask of the rows any rank used. The lazy optimiser then
    steps that union (each rank stepping only its own rows would let the replicas drift apart). Returns (the
    union's rows, their summed gradients)."""
    if lazy is None:
        distributed.sum_gradients(params)
        return torch.zeros(0, dtype=torch.long), {}
    names = list(lazy.params)
    full = {name: torch.zeros_like(lazy.params[name], dtype=torch.float32) for name in names}
    mask = torch.zeros(next(iter(full.values())).shape[0], device=device)
    if len(used):
        for name in names:
            full[name].index_add_(0, used, tables[name].grad.float())
        mask[used] = 1.0
    *heads, mask = distributed.sum_gradients(params, [*full.values(), mask])
    union = torch.nonzero(mask > 0).flatten()
    return union, {name: g.index_select(0, union).to(lazy.params[name].dtype) for name, g in zip(names, heads)}


@dataclasses.dataclass
class FitResult:
    model: MILModel
    best_epoch: int
    best_score: float
    history: list[dict]
    seconds: float
    floor_share: float = 0.0  # with a linear floor: its share of the blend, chosen on the validation wells


def fit_signature(settings: TrainSettings, pairs: WellPairs, train_wells, val_wells, with_assays: bool = True) -> str:
    """What a finished fit is reused by: its settings, pairs and wells (and the assays' names, except in the
    single-assay models of selection, whose cached files predate that and stay valid)."""
    digest = hashlib.sha1()
    fields = dataclasses.asdict(settings)
    for later in ("shared_attention", "shared_readout"):  # added later: fits without them keep their signatures
        if not fields.get(later):
            fields.pop(later, None)
    digest.update(json.dumps(fields, sort_keys=True).encode())
    if with_assays:
        digest.update("\x1f".join(pairs.assays).encode())
    digest.update(pairs.digest().encode())
    digest.update(np.asarray(train_wells, np.int64).tobytes())
    digest.update(np.asarray(val_wells, np.int64).tobytes())
    return digest.hexdigest()


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
    measured: WellPairs | None = None,
) -> FitResult:
    """Train on ``train_wells`` (store rows), select on ``val_wells``. ``primary`` (T,) bool marks the
    assays whose validation AUC selects the model. ``on_epoch_end`` is called after each checkpoint.
    ``measured`` (default ``pairs``) holds the measured labels alone, without imputed ones: they set the
    calibration's level, which must not move with what one rotation imputed.

    With ``settings.balancing == "amtl"``, ``potentials`` (T,) are the single-task validation AUCs: after each
    epoch a task's achievement is its validation AUC / potential (clipped to [0, 1]) and its weight
    (1 - achievement) ** amtl_gamma (tasks without an AUC or a potential get the mean weight); the next epoch
    minimises the weighted geometric mean of the task losses, in the smoothed form of
    :func:`smoothed_balanced_loss` (labels are sparse: a task has few pairs per step). All weights start at 1."""
    settings = settings or TrainSettings()
    started = time.perf_counter()
    ctx = distributed.context()
    device = distributed.rank_device(resolve_device(settings.device))
    show_progress = show_progress and ctx.is_main
    if ctx.active and settings.balancing == "amtl":
        raise MomilError(
            "AMTL balancing (--balancing amtl) weighs whole tasks' losses, which torchrun's ranks each see only a "
            "share of -- train it as one process"
        )
    if device.type == "cpu":
        keep_freed_memory()
    train_wells = pairs.labelled_wells(np.asarray(train_wells, np.int64))
    val_wells = pairs.labelled_wells(np.asarray(val_wells, np.int64))
    if len(train_wells) == 0:
        raise MomilError("no training well carries a label for the model's assays")
    _check_balancing(settings, pairs, potentials)
    run = _Run.start(store, pairs, settings, train_wells, device)
    signature = fit_signature(settings, pairs, train_wells, val_wells)
    if run.amtl:
        signature += hashlib.sha1(np.nan_to_num(np.asarray(potentials, np.float64), nan=-1).tobytes()).hexdigest()[:8]
    checkpoint = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if checkpoint is not None and checkpoint.exists():
        run.resume(checkpoint, signature)
    state = run.state
    bar = progress(total=settings.epochs, desc="train", unit="epoch", enabled=show_progress, initial=state["epoch"])
    # with a checkpoint, SIGTERM (preemption) stops at the next step after writing a checkpoint of it
    with bar, preemption.deferred() if checkpoint is not None else contextlib.nullcontext():
        best_epoch_wins = settings.select_epoch == "best"
        while state["epoch"] < settings.epochs and (not best_epoch_wins or state["bad_epochs"] < settings.patience):
            train_loss, lr = run.train_epoch(train_wells, checkpoint, signature)
            score = run.end_epoch(val_wells, primary, potentials, train_loss, lr, best_epoch_wins)
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", val_auc=f"{score:.3f}", best=f"{state['best_score']:.3f}")
            if checkpoint is not None:
                run.save(checkpoint, signature)
                fault_point("train.epoch")
            if on_epoch_end is not None:
                on_epoch_end(state["epoch"] - 1)
            if checkpoint is not None and run.stop_requested():
                raise Preempted(
                    f"stopped by SIGTERM after epoch {state['epoch']}; its checkpoint is {checkpoint} -- run the "
                    "same command again to resume from it"
                )
    model = run.model
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    model.eval()
    floor_share = 0.0
    if getattr(model, "floor", None) is not None:
        floor_share, blended = blend_floor(model, store, train_wells, val_wells, pairs, primary, device, settings.seed)
        if not math.isnan(blended):  # the blend kept is the model the grid point stands for
            state["best_score"] = blended
    if settings.calibrate:
        # each assay's level: its active rate over the whole label matrix, the same constant in every rotation of a
        # cross-validation (a level from the training labels runs against the test fold's own rate and scrambles
        # the ranking pooled over rotations); the slope is fitted with the training and validation labels' levels
        # (of the measured labels only: imputed ones differ between rotations and would move the level with them)
        measured = pairs if measured is None else measured
        known = label_levels(measured, np.concatenate([train_wells, val_wells]))
        calibrate(model, store, val_wells, pairs, device, level=label_levels(measured), fit_level=known)
    return FitResult(
        model, state["best_epoch"], state["best_score"], state["history"], time.perf_counter() - started, floor_share
    )


def _check_balancing(settings: TrainSettings, pairs: WellPairs, potentials: np.ndarray | None) -> None:
    if settings.balancing not in ("none", "amtl"):
        raise MomilError(f"balancing must be 'none' or 'amtl', not {settings.balancing!r}")
    if settings.balancing == "amtl" and (potentials is None or len(potentials) != len(pairs.assays)):
        raise MomilError(
            "AMTL balancing needs each assay's single-task validation AUC (its potential); `momil cv` computes them"
        )


@dataclasses.dataclass
class _Run:
    """One fit between epochs: the model, its optimisers and schedule, the shuffling RNG and the epoch state
    (step, best score and epoch, epochs without improvement, history, best weights, AMTL task weights)."""

    store: InstanceStore
    pairs: WellPairs
    settings: TrainSettings
    device: torch.device
    model: MILModel
    optimizer: torch.optim.AdamW
    lazy: LazyHeadAdamW | None
    scheduler: object
    rng: np.random.Generator
    state: dict

    @classmethod
    def start(cls, store, pairs: WellPairs, settings: TrainSettings, train_wells: np.ndarray, device) -> _Run:
        torch.manual_seed(settings.seed)
        model = build_model(store.dim, pairs.assays, settings).to(device)
        if hasattr(model, "standardise_inputs"):  # mean-mlp: its inputs standardised with the training wells
            model.standardise_inputs(well_means(store, train_wells))
        n_train = len(train_wells)
        ctx = distributed.context()
        if ctx.active:  # one set of weights on every rank; each rank's dropout draws its own masks
            import torch.distributed as dist

            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
            if ctx.rank:
                torch.manual_seed(settings.seed + 1_000_003 * ctx.rank)
        optimizer, lazy = make_optimizers(model, settings.lr, settings.weight_decay, settings.lazy_heads, device)
        steps_per_epoch = math.ceil(n_train / settings.batch_wells)
        warmup_steps = steps_per_epoch * min(settings.warmup_epochs, settings.epochs)
        scheduler = warmup_cosine(optimizer, warmup_steps, steps_per_epoch * settings.epochs)
        amtl = settings.balancing == "amtl"
        state = {
            "epoch": 0,
            "step": 0,
            "best_score": -math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
            "history": [],
            "best_state": None,
            "task_weights": np.ones(len(pairs.assays)) if amtl else None,
            "running_loss": np.full(len(pairs.assays), np.nan) if amtl else None,
            "partial": None,  # an epoch stopped by SIGTERM: its order's RNG state, steps done, loss so far
        }
        rng = np.random.default_rng(settings.seed)
        return cls(store, pairs, settings, device, model, optimizer, lazy, scheduler, rng, state)

    @property
    def amtl(self) -> bool:
        return self.settings.balancing == "amtl"

    def resume(self, checkpoint: Path, signature: str) -> None:
        saved = load_torch(checkpoint, "training checkpoint", map_location=self.device)
        if saved.get("signature") != signature:
            raise MomilError(
                f"{checkpoint}: was written by a run with other settings or data -- use another "
                "checkpoint folder or delete it to start again"
            )
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        resume_schedule(self.scheduler, saved.get("scheduler"), saved["state"]["step"])
        if self.lazy is not None:
            self.lazy.load_state_dict(saved["lazy"])
        self.rng.bit_generator.state = saved["numpy_rng"]
        ctx = distributed.context()
        rank_rngs = saved.get("rank_torch_rng") or [saved["torch_rng"]]
        if len(rank_rngs) != ctx.world:
            raise MomilError(
                f"{checkpoint}: was written by a run on {len(rank_rngs)} process(es); this run has {ctx.world} -- "
                f"resume it with the same torchrun --nproc-per-node x --nnodes ({len(rank_rngs)}), or delete it"
            )
        torch.set_rng_state(rank_rngs[ctx.rank])
        if self.device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"])
        self.state = state_from_checkpoint(saved["state"])

    def save(self, checkpoint: Path, signature: str) -> None:
        """The training checkpoint; under torchrun rank 0 writes it, with every rank's torch RNG."""
        rank_rngs = distributed.all_gather_object(torch.get_rng_state())
        if distributed.context().is_main:
            save_training_checkpoint(
                checkpoint, self.model, self.optimizer, self.lazy, self.rng, self.state, signature, self.device,
                self.scheduler, rank_rngs,
            )  # fmt: skip
        distributed.barrier()

    def stop_requested(self) -> bool:
        return preemption.requested_on_any_rank(self.device)

    def train_epoch(self, train_wells: np.ndarray, checkpoint: Path | None = None, signature: str = "") -> tuple:
        """One pass over the training wells in a new random order; (mean loss per pair, last learning rate).

        An epoch that SIGTERM stopped (``state["partial"]``) goes on from the step after its checkpoint, in the same
        order; with ``checkpoint``, SIGTERM stops the epoch after the current step, writing that checkpoint."""
        settings, state = self.settings, self.state
        self.model.train()
        ctx = distributed.context()
        partial, state["partial"] = state.get("partial"), None
        if partial is not None:
            self.rng.bit_generator.state = partial["order_rng"]
        order_rng = self.rng.bit_generator.state
        order = self.rng.permutation(train_wells)
        done = partial["steps"] if partial else 0
        total_loss = partial["loss"][ctx.rank] if partial else 0.0
        total_pairs = partial["pairs"][ctx.rank] if partial else 0
        n_steps = math.ceil(len(order) / settings.batch_wells)
        shard = (ctx.rank, ctx.world) if ctx.active else None
        size = settings.batch_wells
        batches = bag_batches(self.store, order[done * size :], size, self.device, shard)
        for step, (batch, bags, mask) in enumerate(batches, start=done):
            rows, assay, label = self.pairs.pairs(batch)
            start = step * settings.batch_wells
            step_pairs = int(self.pairs.count(order[start : start + settings.batch_wells]).sum())
            lr = self.optimizer.param_groups[0]["lr"]
            weights = torch.as_tensor(state["task_weights"], dtype=torch.float32) if self.amtl else None
            step_loss = training_step(
                self.model,
                bags,
                mask,
                rows,
                assay,
                label,
                self.optimizer,
                self.lazy,
                lr,
                self.device,
                weights,
                state["running_loss"] if self.amtl else None,
                step_pairs,
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
            self.scheduler.step()
            fault_point("train.step")
            if checkpoint is not None and step + 1 < n_steps and self.stop_requested():
                self._save_partial(checkpoint, signature, order_rng, step + 1, total_loss, total_pairs)
                raise Preempted(
                    f"stopped by SIGTERM in epoch {state['epoch']} after step {step + 1} of {n_steps}; the "
                    f"checkpoint {checkpoint} holds that step -- run the same command again to resume from it"
                )
        if ctx.active:
            total_loss = sum(distributed.all_gather_object(total_loss))
            total_pairs = len(self.pairs.pairs(order)[0])
        return total_loss / max(1, total_pairs), lr

    def _save_partial(self, checkpoint, signature, order_rng, steps, total_loss, total_pairs) -> None:
        sums = distributed.all_gather_object((total_loss, total_pairs))
        self.state["partial"] = {
            "order_rng": order_rng,
            "steps": steps,
            "loss": [loss for loss, _ in sums],
            "pairs": [pairs for _, pairs in sums],
        }
        self.save(checkpoint, signature)

    def end_epoch(self, val_wells, primary, potentials, train_loss: float, lr: float, best_epoch_wins: bool) -> float:
        """Score the epoch on the validation wells, keep the best model, count epochs without improvement;
        returns the validation score."""
        state = self.state
        _, v_assay, v_label, v_prob = _predict_shared(self.model, self.store, val_wells, self.pairs, self.device)
        score, per_assay = validation_score(v_assay, v_label, v_prob, primary)
        if self.amtl:
            state["task_weights"] = amtl_weights(
                per_assay, np.asarray(potentials, np.float64), self.settings.amtl_gamma
            )
        val_loss = mean_bce(v_label, v_prob)
        epoch = state["epoch"]
        state["history"].append(
            {"epoch": epoch, "train_loss": train_loss, "val_auc": score, "val_loss": val_loss, "lr": lr}
        )
        comparable = score if not math.isnan(score) else -train_loss
        # validation AUCs tie often on small validation sets: the lower validation loss breaks the tie
        better = comparable > state["best_score"] + 1e-12 or (
            abs(comparable - state["best_score"]) <= 1e-12 and val_loss < state.get("best_val_loss", math.inf)
        )
        if not best_epoch_wins:  # the model at the end is the fit; its last score ranks the grid point
            state.update(best_score=comparable, best_epoch=epoch, best_val_loss=val_loss)
        elif better:
            best_state = {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}
            state.update(best_score=comparable, best_epoch=epoch, bad_epochs=0, best_val_loss=val_loss)
            state["best_state"] = best_state
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        return score


def _predict_shared(model, store, wells, pairs, device):
    """:func:`predict_pairs` of ``wells``; under torchrun each rank predicts its share and every rank receives
    all of them (in rank order: the validation score and loss do not depend on the pairs' order)."""
    if not distributed.context().active:
        return predict_pairs(model, store, wells, pairs, device)
    parts = distributed.all_gather_object(predict_pairs(model, store, distributed.shard(wells), pairs, device))
    return tuple(np.concatenate([part[k] for part in parts]) for k in range(4))
