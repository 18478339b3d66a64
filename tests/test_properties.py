"""Property-based tests (hypothesis): readers, the episode sampler, joint transforms, metrics.

Random sizes and values, empty, tiny and full masks, ignore-only masks. Small sizes and a
derandomized, fixed number of examples keep the run fast and the same every time.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from hdmnet_core.data.episodes import FoldIndex, build_fold_index, draw_episode, episode_rng
from hdmnet_core.data.prepared import read_png_values, read_rgb
from hdmnet_core.data.transforms import (
    AugmentationParams,
    CropTrainTransform,
    EvalTransform,
    TrainTransform,
    to_tv_tensors,
)
from hdmnet_core.metrics import BaseLearnerMeter, SegmentationMeter

FAST = settings(max_examples=40, deadline=None, derandomize=True)
IGNORE = 255
sides = st.integers(1, 20)


def class_masks(num_classes: int = 5) -> st.SearchStrategy[np.ndarray]:
    """``(H, W)`` uint8 masks with values in ``{0, 1..num_classes, 255}`` (any mix)."""
    values = st.sampled_from([0, *range(1, num_classes + 1), IGNORE])
    return st.tuples(sides, sides).flatmap(
        lambda shape: hnp.arrays(np.uint8, shape, elements=values)
    )


def binary_masks() -> st.SearchStrategy[np.ndarray]:
    """``(H, W)`` episode masks in ``{0, 1, 255}``: includes empty, full and ignore-only."""
    values = st.sampled_from([0, 1, IGNORE])
    uniform = st.tuples(sides, sides, values).map(lambda t: np.full(t[:2], t[2], np.uint8))
    mixed = st.tuples(sides, sides).flatmap(lambda s: hnp.arrays(np.uint8, s, elements=values))
    return st.one_of(uniform, mixed)


# ------------------------------------------------------------------------- readers
def png_bytes(array: np.ndarray, palette: bool) -> io.BytesIO:
    image = Image.fromarray(array, mode="L")
    if palette:
        image = image.convert("P")  # identity palette: index == grey value
        image.putpalette([v for i in range(256) for v in (i, i, i)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return buffer


@FAST
@given(mask=class_masks(20), palette=st.booleans())
def test_png_masks_read_back_exactly(mask: np.ndarray, palette: bool) -> None:
    values = read_png_values(png_bytes(mask, palette), "mask.png")
    assert values.dtype == np.uint8 and values.shape == mask.shape
    assert np.array_equal(values, mask)


@FAST
@given(height=sides, width=sides, seed=st.integers(0, 2**16))
def test_jpegs_read_as_rgb_of_their_size(height: int, width: int, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    buffer.seek(0)
    image = read_rgb(buffer, "image.jpg")
    assert image.dtype == np.uint8 and image.shape == (height, width, 3)


# ------------------------------------------------------------------ episode sampler
class AreasSource:
    """A source of class areas only (what the fold index reads)."""

    name, dataset = "areas/train", "synthetic"

    def __init__(self, areas: list[dict[int, int]]) -> None:
        self.areas = areas

    def __len__(self) -> int:
        return len(self.areas)

    def class_areas(self, index: int) -> dict[int, int]:
        return self.areas[index]


image_areas = st.dictionaries(st.integers(1, 8), st.integers(1, 50), max_size=4)


@FAST
@given(
    areas=st.lists(image_areas, min_size=2, max_size=25),
    fold=st.sets(st.integers(1, 8), min_size=1, max_size=4),
    shots=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    min_area=st.integers(1, 30),
)
def test_episodes_keep_their_rules(
    areas: list[dict[int, int]], fold: set[int], shots: int, seed: int, min_area: int
) -> None:
    index: FoldIndex = build_fold_index(AreasSource(areas), sorted(fold), min_area)  # type: ignore[arg-type]
    assert set(index.classes) == fold
    for position, query in enumerate(index.images):
        class_id_pool = index.present[query]
        assume(all(len(index.class_images[c]) > shots for c in class_id_pool))
        spec = draw_episode(index, query, shots, episode_rng(seed, 0, position))
        assert spec.class_id in fold and areas[query].get(spec.class_id, 0) > 0
        assert len(spec.supports) == shots == len(set(spec.supports))
        assert query not in spec.supports
        assert all(areas[s][spec.class_id] >= min_area for s in spec.supports)
        again = draw_episode(index, query, shots, episode_rng(seed, 0, position))
        assert again == spec  # the same (seed, epoch, episode): the same episode


# -------------------------------------------------------------- joint transforms
def image_for(mask: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image of ``mask``'s size."""
    rng = np.random.default_rng(mask.size)
    return rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)


def values_of(mask: torch.Tensor) -> set[int]:
    return {int(v) for v in mask.unique()}


@FAST
@given(mask=class_masks(), size=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_train_transform_keeps_masks_in_their_value_set(
    mask: np.ndarray, size: int, seed: int
) -> None:
    binary = (mask == 1).astype(np.uint8)
    binary[mask == IGNORE] = IGNORE
    image, (class_out, binary_out) = TrainTransform(size)(
        image_for(mask), [mask, binary], np.random.default_rng(seed)
    )
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert class_out.shape == binary_out.shape == (size, size)
    assert values_of(class_out) <= {int(v) for v in np.unique(mask)} | {IGNORE}  # fill: 255
    assert values_of(binary_out) <= {0, 1, IGNORE}


@FAST
@given(mask=class_masks(), size=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_crop_transform_keeps_masks_in_their_value_set(
    mask: np.ndarray, size: int, seed: int
) -> None:
    image, (out,) = CropTrainTransform(size)(image_for(mask), [mask], np.random.default_rng(seed))
    assert image.shape == (3, size, size) and out.shape == (size, size)
    assert values_of(out) <= {int(v) for v in np.unique(mask)} | {IGNORE}  # pad: 255


@FAST
@given(mask=class_masks(), size=st.integers(1, 24))
def test_eval_transform_only_resizes_masks(mask: np.ndarray, size: int) -> None:
    image, (out,) = EvalTransform(size)(image_for(mask), [mask])
    assert image.shape == (3, size, size) and out.shape == (size, size)
    assert values_of(out) <= {int(v) for v in np.unique(mask)}  # nearest: no new values
    if mask.shape == (size, size):
        assert np.array_equal(out.numpy(), mask)


@FAST
@given(mask=class_masks(), size=st.integers(1, 24))
def test_the_flip_step_mirrors_image_and_masks_together(mask: np.ndarray, size: int) -> None:
    """Before the final resize (nearest resizing is not mirror-symmetric at odd ratios)."""
    transform = TrainTransform(size)
    image_t, masks_t = to_tv_tensors(image_for(mask), [mask])
    for blur in (False, True):
        plain = transform.augment(image_t, masks_t, AugmentationParams(1.0, None, blur, False))
        flipped = transform.augment(image_t, masks_t, AugmentationParams(1.0, None, blur, True))
        torch.testing.assert_close(flipped[0], plain[0].flip(-1), rtol=0, atol=1e-4)
        assert torch.equal(flipped[1][0], plain[1][0].flip(-1))


# ------------------------------------------------------------------------- metrics
def scored(pred: torch.Tensor, target: torch.Tensor) -> SegmentationMeter:
    meter = SegmentationMeter([1])
    meter.update(pred[None], target[None], [1])
    return meter


@FAST
@given(target=binary_masks(), data=st.data())
def test_iou_lies_in_0_1_and_flips_commute_with_the_metric(
    target: np.ndarray, data: st.DataObject
) -> None:
    pred = data.draw(hnp.arrays(np.int64, target.shape, elements=st.integers(0, 1)))
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target.astype(np.int64))
    meter = scored(pred_t, target_t)
    ious = [meter.miou(), meter.fbiou(), *meter.per_class_iou().values()]
    assert all(0.0 <= v <= 1.0 for v in ious)
    for dims in ((-1,), (-2,), (-2, -1)):
        mirrored = scored(pred_t.flip(dims), target_t.flip(dims))
        assert torch.equal(mirrored.state_tensor(), meter.state_tensor())


@FAST
@given(target=binary_masks())
def test_a_perfect_prediction_scores_one_on_what_it_contains(target: np.ndarray) -> None:
    target_t = torch.from_numpy(target.astype(np.int64))
    pred = torch.where(target_t == IGNORE, 0, target_t)
    meter = scored(pred, target_t)
    has_fg, has_bg = bool((target_t == 1).any()), bool((target_t == 0).any())
    assert meter.per_class_iou()[1] == (1.0 if has_fg else 0.0)
    assert meter.fbiou() == ((1.0 if has_fg else 0.0) + (1.0 if has_bg else 0.0)) / 2


@FAST
@given(shape=st.tuples(sides, sides), data=st.data())
def test_ignore_only_masks_count_nothing(shape: tuple[int, int], data: st.DataObject) -> None:
    pred = torch.from_numpy(data.draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 1))))
    meter = scored(pred, torch.full(shape, IGNORE, dtype=torch.int64))
    assert int(meter.fb_union.sum()) == 0 and int(meter.class_union.sum()) == 0
    assert meter.miou() == 0.0 and meter.fbiou() == 0.0


def per_label_counts(pred: np.ndarray, target: np.ndarray, label: int) -> tuple[int, int]:
    """The definition: intersection and union of ``label`` over the non-ignored pixels."""
    valid = target != IGNORE
    pred_is, target_is = (pred == label) & valid, target == label
    return int((pred_is & target_is).sum()), int((pred_is | target_is).sum())


@FAST
@given(target=binary_masks(), data=st.data())
def test_episode_counts_equal_the_per_label_definition(
    target: np.ndarray, data: st.DataObject
) -> None:
    # few distinct logit values, so that ties (argmax: the first channel) are common
    values = st.sampled_from([-1.0, 0.0, 0.5])
    logits = data.draw(hnp.arrays(np.float32, (2, *target.shape), elements=values))
    meter = SegmentationMeter([1])
    meter.update(
        torch.from_numpy(logits)[None], torch.from_numpy(target.astype(np.int64))[None], [1]
    )
    pred = logits.argmax(axis=0)
    for label in (0, 1):
        want = per_label_counts(pred, target, label)
        assert (int(meter.fb_intersection[label]), int(meter.fb_union[label])) == want


@FAST
@given(shape=st.tuples(sides, sides), data=st.data())
def test_base_learner_counts_equal_the_per_label_definition(
    shape: tuple[int, int], data: st.DataObject
) -> None:
    labels = st.sampled_from([0, 1, 2, 3, IGNORE])
    target = data.draw(hnp.arrays(np.int64, shape, elements=labels))
    logits = data.draw(hnp.arrays(np.float32, (4, *shape), elements=st.sampled_from([0.0, 1.0])))
    meter = BaseLearnerMeter(4)
    meter.update(torch.from_numpy(logits)[None], torch.from_numpy(target)[None])
    pred = logits.argmax(axis=0)
    for label in range(4):
        want = per_label_counts(pred, target, label)
        assert (int(meter.intersection[label]), int(meter.union[label])) == want
        assert int(meter.target_area[label]) == int((target == label).sum())
