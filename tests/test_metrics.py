"""Metrics on hand-computed cases (reference section 2)."""

from __future__ import annotations

import math

import pytest
import torch

from hdmnet_core.metrics import BaseLearnerMeter, SegmentationMeter, aggregate_seeds


def t(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def test_ignore_pixels_are_excluded_from_prediction_and_target() -> None:
    target = t([[1, 1, 255], [0, 0, 0]])[None]
    pred = t([[1, 0, 1], [1, 0, 0]])[None]  # predicts foreground on the ignore pixel
    meter = SegmentationMeter([7])
    meter.update(pred, target, [7])
    # foreground: pred {(0,0),(1,0)}, target {(0,0),(0,1)} -> I = 1, U = 3 (not 4)
    assert meter.per_class_iou() == {7: pytest.approx(1 / 3)}
    # background: pred {(0,1),(1,1),(1,2)}, target {(1,0),(1,1),(1,2)} -> I = 2, U = 4
    summary = meter.summary()
    assert summary["background_iou"] == pytest.approx(2 / 4)
    assert meter.fbiou() == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_empty_prediction_has_zero_iou_with_union_from_label() -> None:
    target = t([[1, 1, 0], [1, 0, 0]])[None]
    pred = torch.zeros_like(target)
    meter = SegmentationMeter([3])
    meter.update(pred, target, torch.tensor([3]))
    assert meter.miou() == 0.0
    assert meter.class_union.tolist() == [3]
    # background: I = 3 (all true background), U = 6 -> 0.5; FB-IoU = (0.5 + 0) / 2
    assert meter.fbiou() == pytest.approx(0.25)


def test_classwise_miou_sums_over_episodes_not_mean_of_episode_ious() -> None:
    big = torch.ones(1, 10, 10, dtype=torch.int64)  # 100 foreground pixels, predicted perfectly
    small = torch.zeros(1, 10, 10, dtype=torch.int64)
    small[0, 0, 0] = 1  # 1 foreground pixel, missed
    meter = SegmentationMeter([1])
    meter.update(big.clone(), big, [1])
    meter.update(torch.zeros_like(small), small, [1])
    per_episode_mean = (1.0 + 0.0) / 2
    assert meter.miou() == pytest.approx(100 / 101)
    assert abs(meter.miou() - per_episode_mean) > 0.4


def test_miou_is_mean_over_classes_and_fbiou_over_all_episodes() -> None:
    # Two episodes of two classes in one batch.
    target = torch.stack([t([[1, 1], [0, 0]]), t([[1, 0], [0, 0]])])
    pred = torch.stack([t([[1, 0], [0, 0]]), t([[1, 1], [1, 0]])])
    meter = SegmentationMeter([4, 9])
    meter.update(pred, target, [9, 4])
    # class 9: I = 1, U = 2; class 4: I = 1, U = 3
    assert meter.per_class_iou() == {4: pytest.approx(1 / 3), 9: pytest.approx(1 / 2)}
    assert meter.miou() == pytest.approx((1 / 3 + 1 / 2) / 2)
    # FB: fg I = 2, U = 5; bg: ep1 I = 2, U = 3; ep2 I = 1, U = 3 -> 3 / 6
    assert meter.fbiou() == pytest.approx((2 / 5 + 3 / 6) / 2)


def test_unseen_classes_zero_by_default_or_skipped() -> None:
    target = t([[1, 0]])[None]
    official = SegmentationMeter([1, 2])
    skipping = SegmentationMeter([1, 2], unseen_classes="skip")
    for meter in (official, skipping):
        meter.update(target.clone(), target, [1])
    assert official.miou() == pytest.approx(0.5)
    assert skipping.miou() == pytest.approx(1.0)


def test_logits_are_reduced_by_argmax() -> None:
    target = t([[1, 0], [0, 1]])[None]
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 5.0  # foreground only at (0,0)
    meter = SegmentationMeter([1])
    meter.update(logits, target, [1])
    assert meter.per_class_iou()[1] == pytest.approx(1 / 2)


def test_merge_and_state_tensor_equal_a_single_meter() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 2, (6, 5, 5), generator=gen)
    target[:, 0, 0] = 255
    pred = torch.randint(0, 2, (6, 5, 5), generator=gen)
    classes = torch.tensor([1, 2, 3, 1, 2, 3])
    whole, first, second = (SegmentationMeter([1, 2, 3]) for _ in range(3))
    whole.update(pred, target, classes)
    first.update(pred[:4], target[:4], classes[:4])
    second.update(pred[4:], target[4:], classes[4:])
    first.merge(second)
    assert torch.equal(first.state_tensor(), whole.state_tensor())
    restored = SegmentationMeter([1, 2, 3])
    restored.load_state_tensor(whole.state_tensor().double())  # e.g. after an all-reduce
    assert restored.summary() == whole.summary()
    whole.all_reduce()  # not distributed: no-op
    assert restored.summary() == whole.summary()


def test_bad_inputs_raise_clear_errors() -> None:
    meter = SegmentationMeter([1, 2])
    target = t([[1, 0]])[None]
    with pytest.raises(ValueError, match="not among"):
        meter.update(target, target, [5])
    with pytest.raises(ValueError, match="outside"):
        meter.update(target, t([[3, 0]])[None], [1])
    with pytest.raises(ValueError, match="logits_to_label_geometry"):
        meter.update(torch.zeros(1, 2, 4, 4), target, [1])
    with pytest.raises(ValueError, match="0..1"):
        meter.update(t([[2, 0]])[None], target, [1])
    with pytest.raises(ValueError, match="merge"):
        meter.merge(SegmentationMeter([1, 3]))


def test_base_learner_meter_averages_over_labels_present_in_targets() -> None:
    target = t([[1, 1, 0, 255], [2, 2, 0, 0]])[None]
    pred = t([[1, 2, 0, 3], [2, 2, 3, 0]])[None]
    meter = BaseLearnerMeter(num_classes=4)
    meter.update(pred, target)
    # label 1: I = 1, U = 2; label 2: I = 2, U = 3; label 3 has no target pixels -> left out
    assert meter.per_class_iou() == {1: pytest.approx(1 / 2), 2: pytest.approx(2 / 3)}
    assert meter.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)
    other = BaseLearnerMeter(num_classes=4)
    other.merge(meter)
    assert torch.equal(other.state_tensor(), meter.state_tensor())


def test_aggregate_seeds_mean_std_best() -> None:
    runs = [{"miou": 0.5, "fbiou": 0.8}, {"miou": 0.7, "fbiou": 0.6}, {"miou": 0.6, "fbiou": 0.7}]
    stats = aggregate_seeds(runs)
    assert stats["miou"].mean == pytest.approx(0.6)
    assert stats["miou"].std == pytest.approx(0.1)  # sample std (ddof = 1)
    assert (stats["miou"].best, stats["miou"].best_index) == (0.7, 1)
    assert (stats["fbiou"].best, stats["fbiou"].best_index) == (0.8, 0)
    single = aggregate_seeds([{"miou": 0.4, "per_class_iou": {1: 0.4}}])
    assert set(single) == {"miou"} and single["miou"].std == 0.0
    assert not math.isnan(single["miou"].mean)
    with pytest.raises(ValueError, match="missing"):
        aggregate_seeds([{"miou": 0.1}, {"fbiou": 0.2}])
