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
warm-up. A checkpoint is written after every epoch and a run started again resumes from it with the same numbers.
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

from momil.config import Settings, check_device_name, setting
from momil.errors import MomilError
from momil.faults import fault_point
from momil.imaging.backbone import NAMES, save_backbone
from momil.imaging.fields import FieldSettings, channel_map, read_field
from momil.io.atomic import atomic_path, write_json_atomic
from momil.io.contract import read_load_data
from momil.io.provenance import provenance
from momil.io.readers import load_torch
from momil.progress import progress


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


# ---------------------------------------------------------------------------------------------------- heads
class ProjectionHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2 normalise -> weight-normalised linear to the prototypes."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512, bottleneck: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last.parametrizations.weight.original0.data.fill_(1.0)

    def forward(self, x):
        return self.last(nn.functional.normalize(self.mlp(x), dim=-1))


class Branch(nn.Module):
    """A ViT backbone with its DINO head (CLS) and, for dinov2, an iBOT head (patch tokens) and mask token."""

    def __init__(self, backbone: nn.Module, out_dim: int, ibot: bool):
        super().__init__()
        self.backbone = backbone
        width = backbone.num_features
        self.dino_head = ProjectionHead(width, out_dim)
        self.ibot_head = ProjectionHead(width, out_dim) if ibot else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width)) if ibot else None

    def tokens(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """All output tokens (B, prefix + patches, width); ``mask`` (B, patches) replaces masked patch tokens."""
        vit = self.backbone
        x = vit.patch_embed(images)
        if mask is not None:
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
            flat = torch.where(mask.unsqueeze(-1), self.mask_token.to(flat.dtype), flat)
            x = flat.reshape(x.shape)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        return vit.norm(x)


def make_branch(settings: PretrainSettings, in_chans: int) -> Branch:
    import timm

    backbone = timm.create_model(
        NAMES.get(settings.backbone, settings.backbone),
        pretrained=False,
        in_chans=in_chans,
        img_size=settings.global_size,
        num_classes=0,
        dynamic_img_size=True,
    )
    return Branch(backbone, settings.out_dim, settings.method == "dinov2")


# --------------------------------------------------------------------------------------------------- losses
def teacher_targets(
    logits: torch.Tensor, center: torch.Tensor, temp: float, centering: str = "center", iterations: int = 3
) -> torch.Tensor:
    """The teacher's target distributions for logits (..., K).

    ``"center"`` (DINO): softmax((logits - center) / temp), with ``center`` an EMA of the teacher's mean output.
    ``"sinkhorn"`` (DINOv2, after SwAV): the soft assignment of the batch's samples (all leading axes together) to
    the K prototypes that Sinkhorn-Knopp makes close to equipartitioned: rows and columns of exp(logits / temp)
    are normalised in turn, so every prototype receives about the same mass over the batch. No prototype can
    take the whole batch (a teacher whose outputs do not differ between samples still gives near-uniform
    targets); ``center`` is not used."""
    if centering == "center":
        return torch.softmax((logits - center) / temp, dim=-1)
    if centering != "sinkhorn":
        raise MomilError(f"centering must be 'sinkhorn' or 'center', not {centering!r}")
    shape = logits.shape
    scores = logits.reshape(-1, shape[-1]).float() / temp
    q = torch.exp(scores - scores.max())  # (samples, K)
    q = q / q.sum()
    samples, prototypes = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=0, keepdim=True).clamp(min=1e-30) / prototypes  # each prototype: mass 1 / K
        q = q / q.sum(dim=1, keepdim=True).clamp(min=1e-30) / samples  # each sample: mass 1 / samples
    return (q * samples).reshape(shape)


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    centering: str = "center",
    iterations: int = 3,
) -> torch.Tensor:
    """Cross-entropy of teacher (global views) against student (all views), pairs of different views only."""
    targets = [teacher_targets(t, center, teacher_temp, centering, iterations) for t in teacher]
    total, pairs = 0.0, 0
    for i, target in enumerate(targets):
        for j, s in enumerate(student):
            if i == j:
                continue
            total = total + torch.sum(-target * torch.log_softmax(s / student_temp, dim=-1), dim=-1).mean()
            pairs += 1
    return total / pairs


def ibot_loss(
    student_patches: torch.Tensor,
    teacher_patches: torch.Tensor,
    mask: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    centering: str = "center",
    iterations: int = 3,
) -> torch.Tensor:
    """Masked-token loss: at masked positions the student predicts the teacher's patch distribution (with
    ``"sinkhorn"`` the assignment is made over the masked tokens of the batch)."""
    if centering == "sinkhorn":
        chosen = mask.bool()
        target = torch.zeros_like(teacher_patches)
        if chosen.any():
            target[chosen] = teacher_targets(teacher_patches[chosen], center, teacher_temp, centering, iterations)
    else:
        target = teacher_targets(teacher_patches, center, teacher_temp, centering)
    loss = torch.sum(-target * torch.log_softmax(student_patches / student_temp, dim=-1), dim=-1)  # (B, N)
    per_image = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_image.mean()


def koleo_loss(embeddings: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate: -mean log distance of each L2-normalised embedding to its nearest
    neighbour in the batch (spreads the embeddings); zero for a batch of one, which has no neighbour."""
    if embeddings.shape[0] < 2:
        return embeddings.sum() * 0.0
    x = nn.functional.normalize(embeddings, dim=-1)
    distances = torch.cdist(x, x)
    distances = distances + torch.eye(len(x), device=x.device) * 1e6
    return -torch.log(distances.min(dim=1).values + eps).mean()


# ----------------------------------------------------------------------------------------------------- crops
def nuclei_centres(nuclei: np.ndarray, rng: np.random.Generator, count: int, half: int) -> list[tuple[int, int]]:
    """Crop centres drawn in proportion to the nuclei channel's brightness above its 90th percentile (uniform
    where a field has no bright area), kept so that the crop fits."""
    h, w = nuclei.shape
    inner = nuclei[half : h - half or None, half : w - half or None] if h > 2 * half and w > 2 * half else None
    if inner is None or inner.size == 0:
        return [(h // 2, w // 2)] * count
    weights = np.clip(inner - np.percentile(inner, 90), 0, None).ravel()
    if weights.sum() <= 0:
        flat = rng.integers(0, inner.size, count)
    else:
        flat = rng.choice(inner.size, size=count, p=weights / weights.sum())
    ys, xs = np.unravel_index(flat, inner.shape)
    return [(int(y) + half, int(x) + half) for y, x in zip(ys, xs)]


def augment(crop: torch.Tensor, rng: np.random.Generator, blur: bool) -> torch.Tensor:
    """Flips, 90-degree rotations, Gaussian blur and per-channel intensity jitter, for any channel count."""
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    if rng.random() < 0.5:
        crop = crop.flip(-2)
    crop = torch.rot90(crop, int(rng.integers(0, 4)), dims=(-2, -1))
    if blur and rng.random() < 0.5:
        from torchvision.transforms.v2 import functional as F

        sigma = float(rng.uniform(0.1, 2.0))
        kernel = max(3, int(2 * math.ceil(2 * sigma) + 1))
        crop = F.gaussian_blur(crop, kernel_size=[kernel, kernel], sigma=[sigma, sigma])
    gain = torch.from_numpy(rng.uniform(0.8, 1.2, (crop.shape[0], 1, 1)).astype(np.float32))
    shift = torch.from_numpy(rng.uniform(-0.1, 0.1, (crop.shape[0], 1, 1)).astype(np.float32))
    return (crop * gain + shift).clamp(0.0, 1.0)


def crop_views(
    field: np.ndarray, settings: PretrainSettings, rng: np.random.Generator, nuclei: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two global and ``local_crops`` local crops of one field (C, H, W)."""
    tensor = torch.from_numpy(field)
    views = []
    for size, count in ((settings.global_size, 2), (settings.local_size, settings.local_crops)):
        size = min(size, field.shape[1], field.shape[2])
        half = size // 2
        for cy, cx in nuclei_centres(field[nuclei], rng, count, half):
            y0 = min(max(cy - half, 0), field.shape[1] - size)
            x0 = min(max(cx - half, 0), field.shape[2] - size)
            views.append(augment(tensor[:, y0 : y0 + size, x0 : x0 + size], rng, blur=size == settings.global_size))
    return views[:2], views[2:]


# -------------------------------------------------------------------------------------------------- training
def cosine(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_start: float = 0.0) -> float:
    if step < warmup:
        return warmup_start + (start - warmup_start) * step / max(1, warmup)
    progress_ = (step - warmup) / max(1, total - warmup)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(1.0, progress_)))


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
    from momil.device import resolve_device

    field = field or FieldSettings()
    settings = settings or PretrainSettings()
    field.check()
    if settings.method not in ("dino", "dinov2"):
        raise MomilError(f"method must be 'dino' or 'dinov2', not {settings.method!r}")
    if settings.centering not in ("sinkhorn", "center"):
        raise MomilError(f"centering must be 'sinkhorn' or 'center', not {settings.centering!r}")
    if settings.sinkhorn_iterations < 1:
        raise MomilError(f"sinkhorn_iterations must be at least 1, not {settings.sinkhorn_iterations}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table, available = read_load_data(load_data)
    channels = channel_map(field, available)
    names = [m for m, _ in channels]
    nuclei = names.index(field.nuclei_channel) if field.nuclei_channel in names else 0
    root = Path(root) if root else Path(load_data).parent
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    student = make_branch(settings, len(channels)).to(device)
    teacher = copy.deepcopy(student).to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr)
    center = torch.zeros(1, settings.out_dim, device=device)
    patch_center = torch.zeros(1, 1, settings.out_dim, device=device)
    rng = np.random.default_rng(settings.seed)
    state = {"epoch": 0, "step": 0, "history": []}
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():
        saved = load_torch(checkpoint, "pretraining checkpoint", map_location=device)
        if saved.get("settings") != dataclasses.asdict(settings) or saved.get("channels") != channels:
            raise MomilError(f"{checkpoint}: was written with other settings -- use another --out or delete it")
        student.load_state_dict(saved["student"])
        teacher.load_state_dict(saved["teacher"])
        optimizer.load_state_dict(saved["optimizer"])
        center, patch_center = saved["center"].to(device), saved["patch_center"].to(device)
        rng.bit_generator.state = saved["numpy_rng"]
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    fields = FieldCache(table, channels, field, root, settings.cache_fields)
    n_fields = len(table)
    steps_per_epoch = math.ceil(n_fields / settings.batch_fields)
    total = steps_per_epoch * settings.epochs
    warmup = steps_per_epoch * min(settings.warmup_epochs, settings.epochs)
    peak_lr = settings.lr * settings.batch_fields / 256
    started = time.perf_counter()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    epochs_now = 0
    with progress(
        total=settings.epochs,
        desc=f"pretrain {settings.method}",
        unit="epoch",
        enabled=show_progress,
        initial=state["epoch"],
    ) as bar:
        while state["epoch"] < settings.epochs:
            student.train()
            order = rng.permutation(n_fields)
            losses = []
            for start in range(0, n_fields, settings.batch_fields):
                batch = order[start : start + settings.batch_fields]
                step = state["step"]
                lr = cosine(step, total, peak_lr, settings.min_lr, warmup)
                wd = cosine(step, total, settings.weight_decay, settings.weight_decay_end)
                optimizer.param_groups[0].update(lr=lr, weight_decay=wd)
                optimizer.param_groups[1].update(lr=lr)
                teacher_temp = (
                    settings.teacher_temp
                    if state["epoch"] >= settings.teacher_temp_epochs
                    else (
                        settings.warmup_teacher_temp
                        + (settings.teacher_temp - settings.warmup_teacher_temp)
                        * state["epoch"]
                        / max(1, settings.teacher_temp_epochs)
                    )
                )
                globals_, locals_ = [[], []], [[] for _ in range(settings.local_crops)]
                for i in batch:
                    views_g, views_l = crop_views(fields[int(i)], settings, rng, nuclei)
                    for k in range(2):
                        globals_[k].append(views_g[k])
                    for k in range(len(views_l)):
                        locals_[k].append(views_l[k])
                g_views = [torch.stack(v).to(device) for v in globals_]
                l_views = [torch.stack(v).to(device) for v in locals_ if v]
                with autocast:
                    loss, parts, teacher_cls, teacher_patch = _step_loss(
                        student, teacher, g_views, l_views, center, patch_center, settings, teacher_temp, rng
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(student.parameters(), 3.0)
                optimizer.step()
                momentum = cosine(step, total, settings.momentum, 1.0)
                with torch.no_grad():
                    for ps, pt in zip(student.parameters(), teacher.parameters()):
                        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
                    center = center * settings.center_momentum + teacher_cls.mean(0, keepdim=True) * (
                        1 - settings.center_momentum
                    )
                    if teacher_patch is not None:
                        patch_center = patch_center * settings.center_momentum + teacher_patch.mean(
                            (0, 1), keepdim=True
                        ) * (1 - settings.center_momentum)
                losses.append(float(loss.detach()))
                state["step"] += 1
            entry = {
                "epoch": state["epoch"],
                "loss": float(np.mean(losses)),
                "lr": lr,
                "seconds": round(time.perf_counter() - started, 2),
                **parts,
            }
            state["history"].append(entry)
            state["epoch"] += 1
            payload = {
                "student": student.state_dict(),
                "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(),
                "center": center,
                "patch_center": patch_center,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "state": state,
                "settings": dataclasses.asdict(settings),
                "channels": channels,
            }
            with atomic_path(checkpoint) as tmp:
                torch.save(payload, tmp)
            fault_point("pretrain.epoch")
            bar.update(1)
            epochs_now += 1
            bar.set_postfix(
                loss=f"{entry['loss']:.4f}",
                fields_per_s=f"{n_fields * epochs_now / max(1e-9, time.perf_counter() - started):.1f}",
            )
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
    save_backbone(
        out / "backbone.pt",
        teacher.backbone,
        {
            "method": settings.method,
            "channels": channels,
            "epochs_done": state["epoch"],
            "global_size": settings.global_size,
        },
    )
    history = pd.DataFrame(state["history"])
    with atomic_path(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    summary = {
        "epochs_done": state["epoch"],
        "fields": n_fields,
        "first_loss": float(history["loss"].iloc[0]),
        "last_loss": float(history["loss"].iloc[-1]),
        "seconds": round(time.perf_counter() - started, 1),
    }
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


def _step_loss(student: Branch, teacher: Branch, g_views, l_views, center, patch_center, settings, teacher_temp, rng):
    """The DINO (+ iBOT + KoLeo) loss of one step; returns (loss, parts, teacher CLS logits, teacher patch logits)."""
    ibot = settings.method == "dinov2"
    with torch.no_grad():
        t_tokens = [teacher.tokens(v) for v in g_views]
        t_cls = [teacher.dino_head(t[:, 0]) for t in t_tokens]
        prefix = teacher.backbone.num_prefix_tokens
        t_patch = [teacher.ibot_head(t[:, prefix:]) for t in t_tokens] if ibot else None
    masks = None
    if ibot:
        n_patches = t_tokens[0].shape[1] - prefix
        masks = []
        for v in g_views:
            m = torch.from_numpy(rng.random((v.shape[0], n_patches)) < settings.mask_ratio).to(v.device)
            masks.append(m)
    s_tokens = [student.tokens(v, masks[k] if masks else None) for k, v in enumerate(g_views)]
    s_cls = [student.dino_head(t[:, 0]) for t in s_tokens]
    s_cls += [student.dino_head(student.tokens(v)[:, 0]) for v in l_views]
    loss = dino_loss(
        [s.float() for s in s_cls],
        [t.float() for t in t_cls],
        center,
        settings.student_temp,
        teacher_temp,
        settings.centering,
        settings.sinkhorn_iterations,
    )
    parts = {"dino": float(loss.detach())}
    if ibot:
        ib = (
            sum(
                ibot_loss(
                    student.ibot_head(s[:, prefix:]).float(),
                    t.float(),
                    m.float(),
                    patch_center,
                    settings.student_temp,
                    teacher_temp,
                    settings.centering,
                    settings.sinkhorn_iterations,
                )
                for s, t, m in zip(s_tokens, t_patch, masks)
            )
            / 2
        )
        ko = koleo_loss(s_tokens[0][:, 0].float())
        loss = loss + settings.ibot_weight * ib + settings.koleo_weight * ko
        parts.update(ibot=float(ib.detach()), koleo=float(ko.detach()))
    teacher_cls = torch.cat(t_cls).float()
    teacher_patch = torch.cat(t_patch).float() if ibot else None
    return loss, parts, teacher_cls, teacher_patch
