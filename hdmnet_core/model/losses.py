"""Training losses: cross-entropies and correlation distillation (paper Eqs. 7-9, reference §4.5).

    total = CE(final) + CE(meta) + distill                     (ignore label 255)

``distill`` is the mean over the stages of KL(teacher || student) between spatial
distributions of the per-stage distillation maps (Eq. 7, see
:func:`hdmnet_core.model.matching.foreground_mean_scores`). Stages go coarse -> fine;
each stage is the student of the previous (coarser) one, whose map is detached,
bilinearly resized (as logits) and turned into a distribution with the same
temperature T (Eq. 8, Eq. 9). The coarsest stage has no predecessor: its teacher is
the ground truth, a full-resolution map with 1 on the foreground and -1e9 elsewhere,
bilinearly resized to the stage, so its softmax is uniform over the foreground.

The official code divides the KL sum by the constant 3 (its number of stages); here it
is divided by the number of stages, which is the same for the official model.
``CE(base)`` (the frozen base learner against the base-class labels) is returned for
logging only: the official code adds it to the logged total, where it is a constant
with no gradient, so the gradients are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
TEACHER_BACKGROUND = -1e9
"""Official value of non-foreground positions in the ground-truth teacher map."""

LOG_EPS = 1e-12
"""Official: ``t * log(t + 1e-12) - t * log(s + 1e-12)``."""


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, C, H, W) logits against (B, H, W) labels, 255 ignored."""
    return F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE_INDEX)


def ground_truth_teacher(query_mask: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels -> (B, H, W) teacher logits: 1 on foreground, -1e9 elsewhere
    (background and ignore alike, as official)."""
    foreground = query_mask == 1
    return torch.where(foreground, 1.0, TEACHER_BACKGROUND).float()


def spatial_distribution(logit_map: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 8: (B, h, w) -> (B, h*w), softmax over all positions of ``map / T``."""
    return (logit_map.flatten(1).float() / temperature).softmax(dim=1)


def distillation_kl(
    teacher: torch.Tensor, student: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Eq. 9: KL(teacher || student) summed over positions, mean over the batch.

    ``teacher`` (B, h', w') is bilinearly resized (``align_corners=False``, official) to
    the student's (B, h, w) first. Scalar result.
    """
    # fp32 even under autocast: the ground-truth teacher holds -1e9, which is -inf in
    # fp16, and resizing -inf next to 1 gives NaN
    with torch.autocast(device_type=student.device.type, enabled=False):
        teacher, student = teacher.float(), student.float()
        if teacher.shape[-2:] != student.shape[-2:]:
            teacher = F.interpolate(
                teacher[:, None], size=student.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
        t = spatial_distribution(teacher, temperature)
        s = spatial_distribution(student, temperature)
        kl = t * (torch.log(t + LOG_EPS) - torch.log(s + LOG_EPS))
        return kl.sum(dim=1).mean()


def correlation_distillation_loss(
    distill_maps: list[torch.Tensor], query_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Eqs. 7-9 over all stages. ``distill_maps``: coarse -> fine, each (B, h_l, w_l);
    ``query_mask`` (B, H, W) with 1 = foreground. Returns the mean KL over stages."""
    if not distill_maps:
        raise ValueError("distill_maps is empty: need at least one stage")
    teacher = ground_truth_teacher(query_mask)
    total = distill_maps[0].new_zeros((), dtype=torch.float32)
    for student in distill_maps:
        total = total + distillation_kl(teacher, student, temperature)
        teacher = student.detach()
    return total / len(distill_maps)


def episode_losses(
    final_logits: torch.Tensor,
    meta_logits: torch.Tensor,
    base_logits: torch.Tensor,
    distill_maps: list[torch.Tensor],
    query_mask: torch.Tensor,
    query_base_label: torch.Tensor | None = None,
    *,
    distillation: bool = True,
    ensemble: bool = True,
    distill_temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Named loss terms of one batch; logits at the label size.

    Keys: ``final_ce``, ``meta_ce``, ``distill``, ``base_ce`` (only with
    ``query_base_label``; logging), ``total``. With ``ensemble=False`` the final output
    *is* the meta output, so ``total`` counts its cross-entropy once. With
    ``distillation=False`` the ``distill`` term is still reported (detached) but not
    added to ``total``.
    """
    losses: dict[str, torch.Tensor] = {
        "final_ce": segmentation_loss(final_logits, query_mask),
        "meta_ce": segmentation_loss(meta_logits, query_mask),
    }
    distill = correlation_distillation_loss(distill_maps, query_mask, distill_temperature)
    losses["distill"] = distill if distillation else distill.detach()
    if query_base_label is not None:
        losses["base_ce"] = segmentation_loss(base_logits, query_base_label).detach()
    total = losses["meta_ce"]
    if ensemble:
        total = total + losses["final_ce"]
    if distillation:
        total = total + distill
    losses["total"] = total
    return losses
