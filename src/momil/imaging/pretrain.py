"""`momil pretrain`: self-supervised ViT pretraining on the screen's own fields (paper section 3, "FM training").

DINO (Caron et al. 2021): a student ViT and an EMA teacher, each with a projection head (MLP -> L2-normalised
bottleneck -> weight-normalised prototypes). The teacher sees the global crops, the student every crop; the loss
is the cross-entropy between the teacher's sharpened target distribution and the student's, over pairs of
different views. Targets are made by Sinkhorn-Knopp over the batch (``centering="sinkhorn"``, DINOv2's choice,
the default) or by DINO's centring with an EMA of the teacher's outputs (``centering="center"``).
``method="dinov2"`` adds, as DINOv2 does, the iBOT masked-token loss (the student sees global crops with a random
share of patch tokens replaced by a learned mask token and predicts the teacher's patch-token distributions there,
with targets made the same way over the masked tokens) and the KoLeo regulariser that spreads the student's CLS
embeddings within a batch.

Crops are drawn around high-intensity nuclei areas (centres sampled in proportion to the nuclei channel's
brightness above its 90th percentile), augmented with flips, 90-degree rotations, Gaussian blur and per-channel
intensity jitter, all of which work for any channel count. Schedules as in DINO: linear warm-up then cosine for
the learning rate, cosine for weight decay (0.04 -> 0.4) and teacher momentum (0.996 -> 1), teacher temperature
warm-up. A checkpoint is written after every epoch (and, on SIGTERM, after the step in progress) and a run started
again resumes from it with the same numbers.
The output ``backbone.pt`` (the teacher's backbone) is what `momil extract --weights` reads.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from momil import distributed, preemption
from momil.config import Settings, check_device_name, setting
from momil.errors import MomilError
from momil.faults import fault_point
from momil.imaging.backbone import save_backbone
from momil.imaging.crops import augment, crop_views, nuclei_centres  # noqa: F401 (re-exported)
from momil.imaging.dino import (  # noqa: F401 (re-exported)
    Branch,
    ProjectionHead,
    dino_loss,
    ibot_loss,
    koleo_loss,
    make_branch,
    step_loss,
    teacher_targets,
)
from momil.imaging.fields import FieldSettings, channel_map, read_field
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.contract import read_load_data
from momil.io.provenance import provenance
from momil.io.readers import load_torch
from momil.preemption import Preempted
from momil.progress import progress
from momil.training.optim import resume_schedule, warmup_cosine


@dataclasses.dataclass
class PretrainSettings(Settings):
    method: str = setting(
        "dinov2", '"dino" or "dinov2" (DINO + iBOT masked-token loss + KoLeo)', choices=["dino", "dinov2"]
    )
    backbone: str = setting("vit-b16", "vit-b16, vit-s16, vit-tiny or a timm ViT name")
    global_size: int = setting(480, "global crop edge (the paper: 480)", low=16)
    local_size: int = setting(128, "local crop edge (the paper: 128)", low=16)
    local_crops: int = setting(6, "local crops per field and step", low=0)
    out_dim: int = setting(4096, "prototypes of the projection head", low=1)
    epochs: int = setting(400, "the paper's schedule; any shorter run works", low=1)
    batch_fields: int = setting(16, "fields per step", low=1)
    lr: float = setting(
        5e-4, "peak learning rate per 256 fields (scaled by batch_fields / 256)", low=0, high=1, low_open=True
    )
    min_lr: float = setting(1e-6, low=0)
    warmup_epochs: int = setting(10, low=0)
    weight_decay: float = setting(0.04, "cosine to weight_decay_end", low=0)
    weight_decay_end: float = setting(0.4, low=0)
    momentum: float = setting(0.996, "teacher EMA momentum, cosine to 1", low=0, high=1)
    teacher_temp: float = setting(0.04, "after warm-up from warmup_teacher_temp", low=0, low_open=True)
    warmup_teacher_temp: float = setting(0.04, low=0, low_open=True)
    teacher_temp_epochs: int = setting(30, low=0)
    student_temp: float = setting(0.1, low=0, low_open=True)
    center_momentum: float = setting(0.9, low=0, high=1)
    centering: str = setting(
        "sinkhorn",
        'teacher targets: "sinkhorn" (Sinkhorn-Knopp, as DINOv2) or "center" (DINO\'s EMA centre)',
        choices=["sinkhorn", "center"],
    )
    sinkhorn_iterations: int = setting(3, low=1)
    ibot_weight: float = setting(1.0, "dinov2: weight of the masked-token loss", low=0)
    mask_ratio: float = setting(
        0.3, "dinov2: share of patch tokens masked in the student's global crops", low=0, high=1, high_open=True
    )
    koleo_weight: float = setting(0.1, "dinov2: weight of the KoLeo regulariser", low=0)
    cache_fields: int = setting(256, "normalised fields kept in memory", low=0)
    device: str = setting("auto", "auto (CUDA when present), cpu or cuda")
    seed: int = setting(0, low=0)

    def check(self) -> None:
        check_device_name(self.device)


# -------------------------------------------------------------------------------------------------- training
def cosine(step: int, total: int, start: float, end: float) -> float:
    """DINO's cosine from ``start`` at step 0 to ``end`` at ``total``, for the weight decay and the teacher
    momentum (torch's schedulers drive learning rates only; the learning rate uses
    :func:`momil.training.optim.warmup_cosine`)."""
    progress_ = min(1.0, step / max(1, total))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress_))


class FieldCache:
    """Normalised fields read on demand, the most recent ``size`` kept in memory."""

    def __init__(self, table: pd.DataFrame, channels, field: FieldSettings, root, size: int):
        self.table, self.channels, self.field, self.root, self.size = table, channels, field, root, size
        self.items: dict[int, np.ndarray] = {}

    def __getitem__(self, i: int) -> np.ndarray:
        if i not in self.items:
            if len(self.items) >= self.size:
                self.items.pop(next(iter(self.items)))
            self.items[i] = read_field(self.table.iloc[i], self.channels, self.field, self.root)
        return self.items[i]


@dataclasses.dataclass
class DinoRun:
    """What a pretraining run holds between steps (and its checkpoint saves): the student and its EMA teacher,
    the optimiser and its schedule, the DINO / iBOT centres, the crop RNG and the epoch / step / history state."""

    settings: PretrainSettings
    channels: list
    student: Branch
    teacher: Branch
    optimizer: torch.optim.AdamW
    scheduler: object
    total_steps: int
    center: torch.Tensor
    patch_center: torch.Tensor
    rng: np.random.Generator
    state: dict

    @classmethod
    def start(cls, settings: PretrainSettings, channels: list, steps_per_epoch: int, device) -> DinoRun:
        """``steps_per_epoch`` of the global batch: ``batch_fields`` per rank x torchrun's ranks."""
        torch.manual_seed(settings.seed)
        student = make_branch(settings, len(channels)).to(device)
        if distributed.context().active:  # one student on every rank
            import torch.distributed as dist

            for tensor in student.state_dict().values():
                dist.broadcast(tensor, src=0)
        teacher = copy.deepcopy(student).to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        params = [p for p in student.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1]}, {"params": [p for p in params if p.ndim <= 1]}]
        groups[1]["weight_decay"] = 0.0
        global_batch = settings.batch_fields * distributed.context().world
        optimizer = torch.optim.AdamW(groups, lr=settings.lr * global_batch / 256)  # the peak rate
        total = steps_per_epoch * settings.epochs
        warmup = steps_per_epoch * min(settings.warmup_epochs, settings.epochs)
        return cls(
            settings,
            channels,
            student,
            teacher,
            optimizer,
            warmup_cosine(optimizer, warmup, total, eta_min=settings.min_lr),
            total,
            torch.zeros(1, settings.out_dim, device=device),
            torch.zeros(1, 1, settings.out_dim, device=device),
            np.random.default_rng(settings.seed),
            {"epoch": 0, "step": 0, "history": [], "partial": None},
        )

    def resume(self, checkpoint: Path, device) -> None:
        """Continue from ``checkpoint``; refused when it was written with other settings or channels."""
        saved = load_torch(checkpoint, "pretraining checkpoint", map_location=device)
        if saved.get("settings") != dataclasses.asdict(self.settings) or saved.get("channels") != self.channels:
            raise MomilError(f"{checkpoint}: was written with other settings -- use another --out or delete it")
        world = distributed.context().world
        if saved.get("world", 1) != world:
            raise MomilError(
                f"{checkpoint}: was written by a run on {saved.get('world', 1)} process(es); this run has {world} -- "
                f"resume it with the same torchrun --nproc-per-node x --nnodes ({saved.get('world', 1)}), or delete it"
            )
        self.student.load_state_dict(saved["student"])
        self.teacher.load_state_dict(saved["teacher"])
        self.optimizer.load_state_dict(saved["optimizer"])
        resume_schedule(self.scheduler, saved.get("scheduler"), saved["state"]["step"])
        self.center, self.patch_center = saved["center"].to(device), saved["patch_center"].to(device)
        self.rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        self.state = saved["state"]

    def save(self, checkpoint: Path) -> None:
        payload = {
            "student": self.student.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "center": self.center,
            "patch_center": self.patch_center,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "state": self.state,
            "settings": dataclasses.asdict(self.settings),
            "channels": self.channels,
            "world": distributed.context().world,
        }
        with atomic_path(checkpoint) as tmp:
            torch.save(payload, tmp)

    def teacher_temp(self) -> float:
        """The teacher temperature of the current epoch: linear warm-up, then constant."""
        s, epoch = self.settings, self.state["epoch"]
        if epoch >= s.teacher_temp_epochs:
            return s.teacher_temp
        return s.warmup_teacher_temp + (s.teacher_temp - s.warmup_teacher_temp) * epoch / max(1, s.teacher_temp_epochs)

    def field_rngs(self, batch: np.ndarray) -> list[np.random.Generator]:
        """One generator per field of the step, from (seed, step, field): a field's crops and masks are the same
        whichever rank draws them, so a run on any number of ranks draws what one process draws."""
        step = self.state["step"]
        return [np.random.default_rng([self.settings.seed, step, int(i)]) for i in batch]

    def views(self, fields: FieldCache, batch: np.ndarray, nuclei: int, device, rngs=None) -> tuple[list, list]:
        """The batch's two global views and its local views, each stacked over the batch's fields."""
        globals_, locals_ = [[], []], [[] for _ in range(self.settings.local_crops)]
        rngs = rngs if rngs is not None else self.field_rngs(batch)
        for i, rng in zip(batch, rngs):
            views_g, views_l = crop_views(fields[int(i)], self.settings, rng, nuclei)
            for k in range(2):
                globals_[k].append(views_g[k])
            for k in range(len(views_l)):
                locals_[k].append(views_l[k])
        return [torch.stack(v).to(device) for v in globals_], [torch.stack(v).to(device) for v in locals_ if v]

    def step(self, g_views: list, l_views: list, autocast, rngs: list, share: float = 1.0) -> tuple[float, float, dict]:
        """One optimisation step of the student, then the teacher's EMA and the centres; (loss, lr, parts).

        ``rngs``: the fields' generators (their iBOT masks). Under torchrun ``share`` is this rank's fields over
        the step's: the rank's loss, a mean over its fields, is weighted by it and the gradients summed, which is
        the one-process gradient of the mean over all fields (KoLeo, as in DINOv2, is taken within each rank's
        fields)."""
        s, step = self.settings, self.state["step"]
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.param_groups[0]["weight_decay"] = cosine(
            step, self.total_steps, s.weight_decay, s.weight_decay_end
        )
        with autocast:
            loss, parts, teacher_cls, teacher_patch = step_loss(
                self.student,
                self.teacher,
                g_views,
                l_views,
                self.center,
                self.patch_center,
                s,
                self.teacher_temp(),
                rngs,
            )
        self.optimizer.zero_grad(set_to_none=True)
        (loss * share).backward()
        names = sorted(parts)
        reported = torch.tensor([float(loss.detach()), *(parts[k] for k in names)]) * share
        if distributed.context().active:
            *_, reported = distributed.sum_gradients(list(self.student.parameters()), [reported])
            parts = dict(zip(names, reported[1:].tolist()))
        nn.utils.clip_grad_norm_(self.student.parameters(), 3.0)
        self.optimizer.step()
        self.scheduler.step()
        self._update_teacher(cosine(step, self.total_steps, s.momentum, 1.0), teacher_cls, teacher_patch)
        self.state["step"] += 1
        return float(reported[0]), lr, parts

    @torch.no_grad()
    def _update_teacher(self, momentum: float, teacher_cls: torch.Tensor, teacher_patch: torch.Tensor | None) -> None:
        for ps, pt in zip(self.student.parameters(), self.teacher.parameters()):
            pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
        keep = self.settings.center_momentum
        self.center = self.center * keep + _mean_over_ranks(teacher_cls, (0,)) * (1 - keep)
        if teacher_patch is not None:
            self.patch_center = self.patch_center * keep + _mean_over_ranks(teacher_patch, (0, 1)) * (1 - keep)


def _mean_over_ranks(values: torch.Tensor, dims: tuple) -> torch.Tensor:
    """The mean of ``values`` over ``dims`` (kept) and over every rank's values (DINO's centre statistics)."""
    total = distributed.all_reduce_(values.sum(dims, keepdim=True))
    count = distributed.all_reduce_(torch.tensor(float(np.prod([values.shape[d] for d in dims]))))
    return total / count.to(total.device)


def _check(settings: PretrainSettings, field: FieldSettings) -> None:
    field.check()
    if settings.method not in ("dino", "dinov2"):
        raise MomilError(f"method must be 'dino' or 'dinov2', not {settings.method!r}")
    if settings.centering not in ("sinkhorn", "center"):
        raise MomilError(f"centering must be 'sinkhorn' or 'center', not {settings.centering!r}")
    if settings.sinkhorn_iterations < 1:
        raise MomilError(f"sinkhorn_iterations must be at least 1, not {settings.sinkhorn_iterations}")


def pretrain(
    load_data,
    out,
    field: FieldSettings | None = None,
    settings: PretrainSettings | None = None,
    root=None,
    show_progress: bool = True,
    max_seconds: float | None = None,
) -> dict:
    """Pretrain on every field of ``load_data``; writes ``out``/backbone.pt, checkpoint.pt, history.csv,
    pretrain.json. ``max_seconds`` stops after the epoch in which the time runs out (the checkpoint stays, so
    running again continues)."""
    from momil.device import autocast_for, resolve_device

    field = field or FieldSettings()
    settings = settings or PretrainSettings()
    _check(settings, field)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table, available = read_load_data(load_data)
    channels = channel_map(field, available)
    names = [m for m, _ in channels]
    nuclei = names.index(field.nuclei_channel) if field.nuclei_channel in names else 0
    root = Path(root) if root else Path(load_data).parent
    ctx = distributed.context()
    device = distributed.rank_device(resolve_device(settings.device))
    show_progress = show_progress and ctx.is_main
    n_fields = len(table)
    step_fields = settings.batch_fields * ctx.world  # the global batch: batch_fields on each rank
    if ctx.active and n_fields < step_fields:
        raise MomilError(
            f"{load_data}: {n_fields} fields are fewer than one step of {ctx.world} ranks x --batch-fields "
            f"{settings.batch_fields} -- lower --batch-fields or use fewer ranks"
        )
    run = DinoRun.start(settings, channels, _steps(n_fields, step_fields, ctx.world), device)
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        run.resume(checkpoint, device)
    fields = FieldCache(table, channels, field, root, settings.cache_fields)
    started = time.perf_counter()
    autocast = autocast_for(device)
    epochs_now = 0
    bar = progress(
        total=settings.epochs,
        desc=f"pretrain {settings.method}",
        unit="epoch",
        enabled=show_progress,
        initial=run.state["epoch"],
    )
    with bar, preemption.deferred():  # SIGTERM: a checkpoint of the step in progress, then exit
        while run.state["epoch"] < settings.epochs:
            run.student.train()
            partial, run.state["partial"] = run.state.get("partial"), None
            if partial is not None:  # an epoch SIGTERM stopped: the same order, from the step after its checkpoint
                run.rng.bit_generator.state = partial["order_rng"]
            order_rng = run.rng.bit_generator.state
            order = run.rng.permutation(n_fields)
            losses = list(partial["losses"]) if partial is not None else []
            n_steps = _steps(n_fields, step_fields, ctx.world)
            for step in range(len(losses), n_steps):
                whole = order[step * step_fields : (step + 1) * step_fields]
                mine = distributed.shard(whole)
                rngs = run.field_rngs(mine)
                g_views, l_views = run.views(fields, mine, nuclei, device, rngs)
                loss, lr, parts = run.step(g_views, l_views, autocast, rngs, len(mine) / len(whole))
                losses.append(loss)
                fault_point("pretrain.step")
                if step + 1 < n_steps and preemption.requested_on_any_rank(device):
                    run.state["partial"] = {"order_rng": order_rng, "losses": losses}
                    _save(run, checkpoint)
                    raise Preempted(
                        f"stopped by SIGTERM in epoch {run.state['epoch']} after step {step + 1} of {n_steps}; the "
                        f"checkpoint {checkpoint} holds that step -- run the same command again to resume from it"
                    )
            entry = {"epoch": run.state["epoch"], "loss": float(np.mean(losses)), "lr": lr}
            entry.update(seconds=round(time.perf_counter() - started, 2), **parts)
            run.state["history"].append(entry)
            run.state["epoch"] += 1
            _save(run, checkpoint)
            fault_point("pretrain.epoch")
            bar.update(1)
            epochs_now += 1
            rate = n_fields * epochs_now / max(1e-9, time.perf_counter() - started)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", fields_per_s=f"{rate:.1f}")
            out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
            if distributed.broadcast_object(out_of_time):  # rank 0's clock decides for every rank
                break
            if preemption.requested_on_any_rank(device):
                raise Preempted(
                    f"stopped by SIGTERM after epoch {run.state['epoch']}; its checkpoint is {checkpoint} -- run the "
                    "same command again to resume from it"
                )
    return _write_outputs(out, run, settings, field, load_data, channels, n_fields, started)


def _save(run: DinoRun, checkpoint: Path) -> None:
    if distributed.context().is_main:
        run.save(checkpoint)
    distributed.barrier()


def _steps(n_fields: int, step_fields: int, world: int) -> int:
    """Steps per epoch: one per ``step_fields``; under torchrun a last step too small to give every rank a
    field is left out (it comes again in the next epoch's order)."""
    full, rest = divmod(n_fields, step_fields)
    return full + (1 if rest >= world else 0)


def _write_outputs(out: Path, run: DinoRun, settings, field, load_data, channels, n_fields: int, started) -> dict:
    """backbone.pt (the teacher's backbone), history.csv and pretrain.json; returns the summary (every rank;
    rank 0 writes)."""
    history = pd.DataFrame(run.state["history"])
    summary = {
        "epochs_done": run.state["epoch"],
        "fields": n_fields,
        "first_loss": float(history["loss"].iloc[0]),
        "last_loss": float(history["loss"].iloc[-1]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if not distributed.context().is_main:
        return summary
    save_backbone(
        out / "backbone.pt",
        run.teacher.backbone,
        {
            "method": settings.method,
            "channels": channels,
            "epochs_done": run.state["epoch"],
            "global_size": settings.global_size,
        },
    )
    with atomic_path(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    write_json_atomic(
        provenance(
            "pretrain",
            {"pretrain": dataclasses.asdict(settings), "field": dataclasses.asdict(field)},
            inputs={"load_data": load_data},
            channels=channels,
            summary=summary,
        ),
        out / "pretrain.json",
    )
    return summary
