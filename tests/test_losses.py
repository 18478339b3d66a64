"""Tests of the losses: cross-entropy with ignore, correlation distillation (Eqs. 7-9)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hdmnet_core.model.losses import (
    correlation_distillation_loss,
    distillation_kl,
    episode_losses,
    ground_truth_teacher,
    segmentation_loss,
    spatial_distribution,
)


def square_mask() -> torch.Tensor:
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[0, 8:24, 4:20] = 1
    mask[1, 0:16, 16:32] = 1
    mask[1, 30:, :] = 255  # ignore counts as "not foreground" for the teacher
    return mask


def test_ground_truth_teacher_is_uniform_over_foreground() -> None:
    mask = square_mask()
    teacher = ground_truth_teacher(mask)
    torch.testing.assert_close(teacher[mask == 1], torch.ones(int((mask == 1).sum())))
    assert bool((teacher[mask != 1] == -1e9).all())
    small = F.interpolate(teacher[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    distribution = spatial_distribution(small, 1.0)  # (B, 64)
    for b in range(2):
        support = distribution[b] > 1e-6
        values = distribution[b][support]
        torch.testing.assert_close(values, torch.full_like(values, 1.0 / int(support.sum())))
        # the support of the distribution is inside the (resized) foreground
        assert bool((small[b].flatten()[support] == 1).all())


def test_distillation_zero_when_student_equals_teacher() -> None:
    mask = square_mask()
    coarse = F.interpolate(ground_truth_teacher(mask)[:, None], size=(8, 8), mode="bilinear")[:, 0]
    finer = F.interpolate(coarse[:, None], size=(16, 16), mode="bilinear")[:, 0]
    loss = correlation_distillation_loss([coarse, finer], mask)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss_other = correlation_distillation_loss([coarse, torch.zeros(2, 16, 16)], mask)
    assert loss_other.item() > 0.1


def test_distillation_kl_matches_definition_and_is_mean_over_stages() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    t = teacher.flatten(1).softmax(1)
    expected = F.kl_div(student.flatten(1).log_softmax(1), t, reduction="batchmean")
    torch.testing.assert_close(
        distillation_kl(teacher, student, 1.0), expected, atol=1e-5, rtol=1e-5
    )
    mask = square_mask()[:, :16, :16]
    maps = [torch.randn(2, 4, 4), torch.randn(2, 8, 8)]
    first = distillation_kl(ground_truth_teacher(mask), maps[0], 1.0)
    second = distillation_kl(maps[0], maps[1], 1.0)
    total = correlation_distillation_loss(maps, mask)
    torch.testing.assert_close(total, (first + second) / 2)


def test_distillation_teacher_is_detached() -> None:
    torch.manual_seed(0)
    mask = square_mask()
    maps = [torch.randn(2, 4, 4, requires_grad=True), torch.randn(2, 8, 8, requires_grad=True)]
    correlation_distillation_loss(maps, mask).backward()
    coarse_only = torch.tensor(maps[0].detach().numpy(), requires_grad=True)
    (distillation_kl(ground_truth_teacher(mask), coarse_only, 1.0) / 2).backward()
    assert maps[0].grad is not None and coarse_only.grad is not None
    torch.testing.assert_close(maps[0].grad, coarse_only.grad)


def test_distill_temperature_changes_loss() -> None:
    torch.manual_seed(0)
    maps = [torch.randn(2, 4, 4), torch.randn(2, 8, 8)]
    mask = square_mask()
    at_one = correlation_distillation_loss(maps, mask, 1.0)
    at_four = correlation_distillation_loss(maps, mask, 4.0)
    assert not torch.isclose(at_one, at_four)


def test_segmentation_loss_ignores_255() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    with_ignore = target.clone()
    with_ignore[0, 0] = 255
    kept = with_ignore != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[kept], target[kept])
    torch.testing.assert_close(segmentation_loss(logits, with_ignore), expected)


def test_episode_losses_flags() -> None:
    torch.manual_seed(0)
    mask = square_mask()
    final, meta = torch.randn(2, 2, 32, 32), torch.randn(2, 2, 32, 32)
    base = torch.randn(2, 16, 32, 32)
    maps = [torch.randn(2, 4, 4, requires_grad=True), torch.randn(2, 8, 8, requires_grad=True)]
    base_label = torch.randint(0, 16, (2, 32, 32))
    full = episode_losses(final, meta, base, maps, mask, base_label)
    assert set(full) == {"final_ce", "meta_ce", "distill", "base_ce", "total"}
    torch.testing.assert_close(full["total"], full["final_ce"] + full["meta_ce"] + full["distill"])
    no_distill = episode_losses(final, meta, base, maps, mask, distillation=False)
    assert "base_ce" not in no_distill
    assert not no_distill["distill"].requires_grad
    torch.testing.assert_close(no_distill["total"], full["final_ce"] + full["meta_ce"])
    no_ensemble = episode_losses(meta, meta, base, maps, mask, ensemble=False)
    torch.testing.assert_close(no_ensemble["total"], full["meta_ce"] + full["distill"])


def test_empty_distill_maps_raise() -> None:
    with pytest.raises(ValueError, match="distill_maps is empty"):
        correlation_distillation_loss([], square_mask())
