"""Few-shot segmentation metrics: class-wise mIoU and FB-IoU (reference section 2).

Both metrics *sum* intersections and unions over all episodes before dividing, exactly
as the official ``validate`` does (BAM/HDMNet ``test.py``):

- **class-wise mIoU**: for every novel class ``c``, ``IoU_c = sum I_fg / sum U_fg`` over
  the episodes whose class is ``c``; ``mIoU = mean_c IoU_c`` over the fold's classes.
  This is *not* the mean of per-episode IoUs (a large object weighs more than a small one).
- **FB-IoU**: foreground and background IoU, each summed over all episodes regardless of
  class, then averaged over the two.

Pixels labelled 255 (ignore) are excluded from both prediction and target. An empty
prediction still has a union (the target's foreground), so its IoU is 0, not undefined.

A fold class that no episode ever drew has ``I = U = 0``. The official code divides by
``U + 1e-10``, so such a class scores 0 and still counts in the mean over the fold's
classes; that is the default here (``unseen_classes="zero"``). ``"skip"`` leaves it out of
the mean instead (useful for short smoke runs that cannot visit every class).

Counts are kept as int64 tensors (exact for any realistic number of pixels), so meters
from several processes can be summed: ``merge(other)`` in one process, or
``all_reduce()`` under ``torch.distributed``.

Values are fractions in [0, 1]; multiply by 100 for the paper's percentages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor

IGNORE_INDEX = 255
UnseenClasses = Literal["zero", "skip"]


# ----------------------------------------------------------------------------- inputs
def _as_labels(pred: Tensor, target: Tensor, num_classes: int, what: str) -> Tensor:
    """Integer predictions ``(B,H,W)`` from labels ``(B,H,W)`` or logits ``(B,C,H,W)``."""
    if pred.dim() == 4:
        if pred.shape[1] != num_classes:
            raise ValueError(
                f"{what}: logits have {pred.shape[1]} channels, expected {num_classes}"
            )
        if pred.shape[0] != target.shape[0] or pred.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"{what}: logits {tuple(pred.shape)} do not match target {tuple(target.shape)}; "
                "bring them to the label geometry first (transforms.logits_to_label_geometry)"
            )
        if num_classes == 2:  # argmax's choice, ties to channel 0, without the reduction
            return (pred[:, 1] > pred[:, 0]).to(torch.int64)  # (B,2,H,W) -> (B,H,W)
        return pred.argmax(dim=1)  # (B,C,H,W) -> (B,H,W)
    if pred.dim() != 3 or pred.shape != target.shape:
        raise ValueError(
            f"{what}: prediction {tuple(pred.shape)} must be labels shaped like the target "
            f"{tuple(target.shape)} or logits (B, C, H, W)"
        )
    if pred.is_floating_point():
        raise ValueError(f"{what}: a 3-d prediction must hold integer labels, got {pred.dtype}")
    if bool(((pred < 0) | (pred >= num_classes)).any()):
        raise ValueError(f"{what}: predicted labels must lie in 0..{num_classes - 1}")
    return pred


def _check_target(target: Tensor, num_classes: int, what: str) -> None:
    if target.dim() != 3 or target.is_floating_point():
        raise ValueError(f"{what}: target must be an integer (B,H,W) tensor, got "
                         f"{target.dtype} {tuple(target.shape)}")  # fmt: skip
    outside = (target != IGNORE_INDEX) & ((target < 0) | (target >= num_classes))
    if bool(outside.any()):
        bad = sorted(set(target[outside].unique().tolist()))
        raise ValueError(f"{what}: target values {bad} are outside 0..{num_classes - 1} and 255")


def _binary_counts(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample pixel counts of a binary episode, each ``(B,)`` int64: background
    intersection and union, foreground intersection and union.

    ``pred`` in {0, 1}, ``target`` in {0, 1, 255}; ignore pixels of the target are
    excluded from both. On the valid pixels V, background is the complement of
    foreground, so ``I_bg = |V| - U_fg`` and ``U_bg = |V| - I_fg``: one pass for both labels.
    """
    valid = target != IGNORE_INDEX
    pred_fg = (pred == 1) & valid
    target_fg = target == 1
    fg_i = (pred_fg & target_fg).flatten(1).sum(1)
    fg_u = (pred_fg | target_fg).flatten(1).sum(1)
    pixels = valid.flatten(1).sum(1)
    return pixels - fg_u, pixels - fg_i, fg_i, fg_u


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` as float64, 0 where the denominator is 0 (official +1e-10)."""
    num, den = numerator.to(torch.float64), denominator.to(torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


# ------------------------------------------------------------------- episode meter
class SegmentationMeter:
    """Accumulates class-wise mIoU and FB-IoU over binary few-shot episodes.

    Use one meter per scored output (final, meta); see :class:`BaseLearnerMeter` for
    the base learner's multi-class output.

    Args:
        class_ids: the fold's evaluation classes (dataset ids), e.g. ``[1, 2, 3, 4, 5]``.
        unseen_classes: how a class with no episode enters the mean: ``"zero"``
            (official: IoU 0, still averaged) or ``"skip"`` (left out of the mean).
    """

    def __init__(self, class_ids: Sequence[int], unseen_classes: UnseenClasses = "zero") -> None:
        if len(class_ids) == 0 or len(set(class_ids)) != len(class_ids):
            raise ValueError(f"class_ids must be non-empty and distinct, got {list(class_ids)}")
        if unseen_classes not in ("zero", "skip"):
            raise ValueError(f"unseen_classes={unseen_classes!r}: use 'zero' or 'skip'")
        self.class_ids = [int(c) for c in class_ids]
        self.unseen_classes: UnseenClasses = unseen_classes
        self._slot = {c: i for i, c in enumerate(self.class_ids)}
        n = len(self.class_ids)
        self.class_intersection = torch.zeros(n, dtype=torch.int64)  # foreground I per class
        self.class_union = torch.zeros(n, dtype=torch.int64)  # foreground U per class
        self.class_episodes = torch.zeros(n, dtype=torch.int64)
        self.fb_intersection = torch.zeros(2, dtype=torch.int64)  # [background, foreground]
        self.fb_union = torch.zeros(2, dtype=torch.int64)

    # ---------------------------------------------------------------- updating
    def update(self, pred: Tensor, target: Tensor, class_id: Tensor | Sequence[int]) -> None:
        """Add a batch of episodes.

        Args:
            pred: labels ``(B,H,W)`` in {0,1} or logits ``(B,2,H,W)`` (argmax taken).
            target: ``(B,H,W)`` with 1 = episode class, 0 = rest, 255 = ignore.
            class_id: ``(B,)`` dataset class id of each episode.
        """
        target = target.detach()
        _check_target(target, 2, "SegmentationMeter.update")
        labels = _as_labels(pred.detach(), target, 2, "SegmentationMeter.update")
        ids = torch.as_tensor(class_id).flatten().tolist()
        if len(ids) != target.shape[0]:
            raise ValueError(f"class_id has {len(ids)} entries for a batch of {target.shape[0]}")
        unknown = sorted({int(c) for c in ids} - set(self._slot))
        if unknown:
            raise ValueError(f"class ids {unknown} are not among this meter's {self.class_ids}")
        slots = torch.tensor([self._slot[int(c)] for c in ids], dtype=torch.int64)

        bg_i, bg_u, fg_i, fg_u = (c.cpu() for c in _binary_counts(labels, target))  # (B,)
        self.class_intersection.index_add_(0, slots, fg_i)
        self.class_union.index_add_(0, slots, fg_u)
        self.class_episodes.index_add_(0, slots, torch.ones_like(slots))
        self.fb_intersection += torch.stack([bg_i.sum(), fg_i.sum()])
        self.fb_union += torch.stack([bg_u.sum(), fg_u.sum()])

    def reset(self) -> None:
        for t in self._state():
            t.zero_()

    # ---------------------------------------------------------------- results
    def per_class_iou(self) -> dict[int, float]:
        """``{class_id: IoU}``; an unseen class reads 0.0 (see :meth:`miou` for the mean)."""
        ious = _ratio(self.class_intersection, self.class_union)
        return {c: float(v) for c, v in zip(self.class_ids, ious.tolist(), strict=True)}

    def miou(self) -> float:
        """Class-wise mIoU over the fold's classes (unseen ones per ``unseen_classes``)."""
        ious = _ratio(self.class_intersection, self.class_union)
        if self.unseen_classes == "skip":
            ious = ious[self.class_episodes > 0]
            if ious.numel() == 0:
                return float("nan")
        return float(ious.mean())

    def fbiou(self) -> float:
        """Mean of background IoU and foreground IoU, each summed over all episodes."""
        return float(_ratio(self.fb_intersection, self.fb_union).mean())

    def summary(self) -> dict[str, float | int | dict[int, float]]:
        return {
            "miou": self.miou(),
            "fbiou": self.fbiou(),
            "foreground_iou": float(_ratio(self.fb_intersection[1], self.fb_union[1])),
            "background_iou": float(_ratio(self.fb_intersection[0], self.fb_union[0])),
            "episodes": int(self.class_episodes.sum()),
            "per_class_iou": self.per_class_iou(),
        }

    # ---------------------------------------------------------------- merging
    def _state(self) -> list[Tensor]:
        return [self.class_intersection, self.class_union, self.class_episodes,
                self.fb_intersection, self.fb_union]  # fmt: skip

    def state_tensor(self) -> Tensor:
        """All counts in one int64 vector ``(3*C + 4,)``: sum these across processes."""
        return torch.cat(self._state())

    def load_state_tensor(self, state: Tensor) -> None:
        expected = 3 * len(self.class_ids) + 4
        if state.shape != (expected,):
            raise ValueError(f"state tensor has shape {tuple(state.shape)}, expected ({expected},)")
        offset = 0
        for t in self._state():
            t.copy_(state[offset : offset + t.numel()].to(torch.int64).cpu())
            offset += t.numel()

    def merge(self, other: SegmentationMeter) -> None:
        """Add another meter's counts (same classes) into this one."""
        if other.class_ids != self.class_ids:
            raise ValueError(
                f"cannot merge meters of classes {other.class_ids} into {self.class_ids}"
            )
        self.load_state_tensor(self.state_tensor() + other.state_tensor())

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum counts over all ``torch.distributed`` processes (no-op when not initialised).

        ``device``: where the collective runs (``"cuda"`` for NCCL); default CPU.
        """
        _all_reduce_state(self, device)


# -------------------------------------------------------------- base-learner meter
class BaseLearnerMeter:
    """mIoU of the base learner's multi-class output (official ``mIoU_b``).

    The official ``validate`` scores the base output against the base-learner label
    (base classes renumbered ``1..num_classes-1``, novel classes = 0) and averages the
    IoU over the foreground labels whose target area is non-zero ("filter the results
    with GT mIoU=0"). Intersections/unions are summed over all episodes.

    Args:
        num_classes: base-learner channels including background (PASCAL 16, COCO 61).
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: needs background plus >= 1 class")
        self.num_classes = num_classes
        self.intersection = torch.zeros(num_classes, dtype=torch.int64)
        self.union = torch.zeros(num_classes, dtype=torch.int64)
        self.target_area = torch.zeros(num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: labels ``(B,H,W)`` or logits ``(B,num_classes,H,W)``; target ``(B,H,W)``."""
        target = target.detach()
        _check_target(target, self.num_classes, "BaseLearnerMeter.update")
        labels = _as_labels(pred.detach(), target, self.num_classes, "BaseLearnerMeter.update")
        # one confusion matrix (target x prediction) over the non-ignored pixels: the same
        # integer counts as one intersection/union pass per label, in one bincount
        n = self.num_classes
        codes = target.to(torch.int64) * n + labels.to(torch.int64)
        codes = torch.where(target != IGNORE_INDEX, codes, n * n)  # ignore -> one spare bin
        confusion = torch.bincount(codes.flatten().cpu(), minlength=n * n + 1)[: n * n]
        confusion = confusion.reshape(n, n)
        hits = confusion.diagonal()
        predicted = confusion.sum(dim=0)  # (n,) prediction counts on valid pixels
        actual = confusion.sum(dim=1)  # (n,) target counts
        self.intersection += hits
        self.union += predicted + actual - hits
        self.target_area += actual

    def reset(self) -> None:
        for t in self._state():
            t.zero_()

    def per_class_iou(self) -> dict[int, float]:
        """``{base label: IoU}`` for labels ``1..num_classes-1`` present in some target."""
        ious = _ratio(self.intersection, self.union).tolist()
        present = self.target_area > 0
        return {k: ious[k] for k in range(1, self.num_classes) if bool(present[k])}

    def miou(self) -> float:
        """Mean IoU over foreground labels with target pixels; NaN if there are none."""
        ious = list(self.per_class_iou().values())
        return sum(ious) / len(ious) if ious else float("nan")

    def summary(self) -> dict[str, float | dict[int, float]]:
        return {"miou": self.miou(), "per_class_iou": self.per_class_iou()}

    def _state(self) -> list[Tensor]:
        return [self.intersection, self.union, self.target_area]

    def state_tensor(self) -> Tensor:
        """All counts in one int64 vector ``(3*num_classes,)``."""
        return torch.cat(self._state())

    def load_state_tensor(self, state: Tensor) -> None:
        if state.shape != (3 * self.num_classes,):
            raise ValueError(f"state tensor has shape {tuple(state.shape)}, "
                             f"expected ({3 * self.num_classes},)")  # fmt: skip
        for k, t in enumerate(self._state()):
            n = self.num_classes
            t.copy_(state[k * n : (k + 1) * n].to(torch.int64).cpu())

    def merge(self, other: BaseLearnerMeter) -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a {other.num_classes}-class meter into {self.num_classes}"
            )
        self.load_state_tensor(self.state_tensor() + other.state_tensor())

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum counts over all ``torch.distributed`` processes (no-op when not initialised)."""
        _all_reduce_state(self, device)


def _all_reduce_state(
    meter: SegmentationMeter | BaseLearnerMeter, device: torch.device | str | None
) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        return
    state = meter.state_tensor().to(device or "cpu")
    dist.all_reduce(state, op=dist.ReduceOp.SUM)
    meter.load_state_tensor(state)


# -------------------------------------------------------------- several seeds
@dataclass(frozen=True)
class SeedStatistics:
    """One metric over several evaluation seeds.

    ``std`` is the sample standard deviation (ddof = 1; 0.0 for a single seed).
    ``best`` is the maximum, taken for each metric on its own as the official
    ``test.py`` prints it (the best mIoU and the best FB-IoU may come from different
    seeds); ``best_index`` says which run gave it.
    """

    mean: float
    std: float
    best: float
    best_index: int
    values: tuple[float, ...]


def aggregate_seeds(results: Sequence[Mapping[str, Any]]) -> dict[str, SeedStatistics]:
    """Mean ± std and best of every numeric key shared by all runs.

    ``results``: one mapping per seed, e.g. ``[{"miou": 0.61, "fbiou": 0.74}, ...]``.
    Non-numeric values (e.g. ``per_class_iou`` dicts) are skipped, so
    ``aggregate_seeds([meter.summary() for meter in meters])`` works.
    """
    if not results:
        raise ValueError("aggregate_seeds needs at least one run's results")
    keys = [
        k for k, v in results[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    missing = [k for k in keys if any(k not in r for r in results)]
    if missing:
        raise ValueError(f"metrics {missing} are missing from some runs")
    stats = {}
    for key in keys:
        values = tuple(float(r[key]) for r in results)
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        best_index = max(range(len(values)), key=lambda i: values[i])
        stats[key] = SeedStatistics(mean, math.sqrt(var), values[best_index], best_index, values)
    return stats
