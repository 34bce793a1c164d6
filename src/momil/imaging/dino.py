"""DINO / DINOv2 parts: the projection heads, a student or teacher branch, the losses, and one step's loss.

See :mod:`momil.imaging.pretrain` for the method and the training loop that uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from momil import distributed
from momil.errors import MomilError
from momil.imaging.backbone import NAMES

if TYPE_CHECKING:  # the settings belong to the training loop, which imports this module
    from momil.imaging.pretrain import PretrainSettings


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
    # under torchrun the batch is every rank's samples (as DINOv2 does it): the prototypes' mass and the number
    # of samples are summed over the ranks; a one-process run reduces nothing
    top = scores.max() if scores.numel() else torch.tensor(-torch.inf, device=scores.device)
    top = distributed.all_reduce_(top.detach().clone(), "max")
    q = torch.exp(scores - top)  # (samples, K)
    q = q / distributed.all_reduce_(q.sum()).clamp(min=1e-30)
    samples = int(distributed.all_reduce_(torch.tensor(float(len(q)), device=q.device)).item())
    prototypes = q.shape[1]
    for _ in range(iterations):
        column = distributed.all_reduce_(q.sum(dim=0, keepdim=True))
        q = q / column.clamp(min=1e-30) / prototypes  # each prototype: mass 1 / K
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
        if chosen.any() or distributed.context().active:  # every rank joins the reduction, masked tokens or none
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


def step_loss(student: Branch, teacher: Branch, g_views, l_views, center, patch_center, settings, teacher_temp, rng):
    """The DINO (+ iBOT + KoLeo) loss of one step; returns (loss, parts, teacher CLS logits, teacher patch logits).
    ``rng``: one generator per field of the batch (its iBOT masks)."""
    ibot = settings.method == "dinov2"
    with torch.no_grad():
        t_tokens = [teacher.tokens(v) for v in g_views]
        t_cls = [teacher.dino_head(t[:, 0]) for t in t_tokens]
        prefix = teacher.backbone.num_prefix_tokens
        t_patch = [teacher.ibot_head(t[:, prefix:]) for t in t_tokens] if ibot else None
    masks = None
    if ibot:  # each field's masks from its own generator (``rng``: one per field), whichever rank holds it
        n_patches = t_tokens[0].shape[1] - prefix
        masks = []
        for v in g_views:
            drawn = np.stack([r.random(n_patches) for r in rng]) < settings.mask_ratio
            masks.append(torch.from_numpy(drawn).to(v.device))
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
