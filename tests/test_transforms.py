"""Joint transforms keep image and masks aligned (reference sections 2 and 4.6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf

from hdmnet_core.data.transforms import (
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    AugmentationParams,
    EvalTransform,
    TrainTransform,
    denormalize,
    logits_to_label_geometry,
    normalize,
    to_tv_tensors,
)


def square_scene(h: int = 64, w: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """A white off-centre square on black, with its mask (1) and an ignore strip (255)."""
    image = np.zeros((h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    image[4:36, 4:36] = 255
    mask[4:36, 4:36] = 1
    mask[-2:, :] = 255
    return image, mask


def bright(image: torch.Tensor) -> torch.Tensor:
    """Pixels of a normalised image brighter than mid-grey, ``(H,W)`` bool."""
    return denormalize(image).mean(0) > 127.5


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


@pytest.mark.parametrize(
    "params",
    [
        AugmentationParams(scale=1.1, angle=None, blur=False, flip=False),
        AugmentationParams(scale=1.0, angle=9.0, blur=False, flip=False),
        AugmentationParams(scale=1.0, angle=None, blur=True, flip=False),
        AugmentationParams(scale=1.0, angle=None, blur=False, flip=True),
        AugmentationParams(scale=0.9, angle=-10.0, blur=True, flip=True),
    ],
)
def test_square_keeps_its_mask_under_every_step(params: AugmentationParams) -> None:
    image, mask = square_scene()
    transform = TrainTransform(size=64)
    image_t, masks_t = to_tv_tensors(image, [mask, mask])
    out_image, (out_mask, out_other) = transform.apply(image_t, masks_t, params)
    out_image = normalize(out_image)
    assert iou(bright(out_image), out_mask == 1) > 0.85
    assert torch.equal(out_mask, out_other)  # every mask gets the same geometry
    if params.flip:  # the square moved to the right half
        assert bool((out_mask[:, 40:] == 1).any()) and not bool((out_mask[:, :20] == 1).any())


def test_random_training_transform_keeps_alignment() -> None:
    image, mask = square_scene()
    transform = TrainTransform(size=64)
    for seed in range(12):
        out_image, (out_mask,) = transform(image, [mask], np.random.default_rng(seed))
        assert iou(bright(out_image), out_mask == 1) > 0.85, seed


def test_rotation_pads_mask_with_255_and_image_with_mean() -> None:
    image = np.full((40, 40, 3), 255, dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=np.uint8)
    transform = TrainTransform(size=40)
    params = AugmentationParams(scale=1.0, angle=10.0, blur=False, flip=False)
    image_t, masks_t = to_tv_tensors(image, [mask])
    out_image, (out_mask,) = transform.apply(image_t, masks_t, params)
    assert out_mask[0, 0] == 255 and out_mask[20, 20] == 0
    assert torch.allclose(out_image[:, 0, 0], torch.tensor(IMAGENET_MEAN_255), atol=1e-3)
    assert torch.allclose(normalize(out_image)[:, 0, 0], torch.zeros(3), atol=1e-5)
    assert torch.all(out_image[:, 20, 20] == 255)
    padded = out_mask == 255
    assert int(padded.sum()) > 40 and bool((out_image[:, padded] < 255).all())  # same corners


def test_masks_use_nearest_interpolation() -> None:
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 1, 7, 255], dtype=np.uint8), size=(37, 53))
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    for seed in range(6):
        _, (out,) = TrainTransform(size=32)(image, [mask], np.random.default_rng(seed))
        assert set(out.unique().tolist()) <= {0, 1, 7, 255}
    _, (out,) = EvalTransform(size=32)(image, [mask])
    assert set(out.unique().tolist()) <= {0, 1, 7, 255}


def test_transform_is_deterministic_per_rng_and_leaves_global_rngs_alone() -> None:
    image, mask = square_scene()
    transform = TrainTransform(size=40)
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()  # noqa: NPY002 (the legacy global state must stay put)
    a = transform(image, [mask], np.random.default_rng(3))
    b = transform(image, [mask], np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0])
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    numpy_after = np.random.get_state()  # noqa: NPY002
    assert numpy_after[1].tolist() == numpy_state[1].tolist()  # type: ignore[index]
    draws = {transform.draw(np.random.default_rng(s)) for s in range(20)}
    assert len(draws) == 20
    assert {d.flip for d in draws} == {True, False} and {d.angle is None for d in draws} == {
        True,
        False,
    }
    assert all(0.9 <= d.scale <= 1.1 for d in draws)
    assert all(abs(d.angle) <= 10 for d in draws if d.angle is not None)


def test_output_dtypes_shapes_and_normalisation() -> None:
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    image[:, :, 0] = 255
    image[:, :, 1] = round(IMAGENET_MEAN_255[1])
    mask = np.zeros((30, 50), dtype=np.uint8)
    out_image, (out_mask,) = EvalTransform(size=40)(image, [mask])
    assert out_image.shape == (3, 40, 40) and out_image.dtype == torch.float32
    assert out_mask.shape == (40, 40) and out_mask.dtype == torch.int64
    assert type(out_image) is torch.Tensor and type(out_mask) is torch.Tensor
    expected_red = (255 - IMAGENET_MEAN_255[0]) / IMAGENET_STD_255[0]
    assert torch.allclose(out_image[0], torch.full((40, 40), expected_red), atol=1e-5)
    assert out_image[1].abs().max() < 0.01  # green = mean -> about 0
    assert torch.allclose(
        out_image[2], torch.full((40, 40), -IMAGENET_MEAN_255[2] / IMAGENET_STD_255[2])
    )
    out_train, (train_mask,) = TrainTransform(size=32)(image, [mask], np.random.default_rng(0))
    assert out_train.shape == (3, 32, 32) and train_mask.dtype == torch.int64


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="mask 0 has shape"):
        EvalTransform(8)(np.zeros((4, 4, 3), np.uint8), [np.zeros((4, 5), np.uint8)])
    with pytest.raises(ValueError, match="scale_range"):
        TrainTransform(8, scale_range=(1.2, 1.0))


def test_logits_to_label_geometry_official() -> None:
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 1, :, :2] = 1.0  # foreground on the left half
    logits[0, 0] = 1.0 - logits[0, 1]
    original = torch.zeros(6, 8, dtype=torch.int64)
    original[:, :4] = 1
    out, target = logits_to_label_geometry(logits, original)
    assert out.shape == (1, 2, 8, 8) and target.shape == (1, 8, 8)
    assert torch.all(target[0, 6:] == 255) and torch.equal(target[0, :6], original)
    upsampled = nnf.interpolate(logits, size=(6, 8), mode="bilinear", align_corners=True)
    assert torch.equal(out[..., :6, :8], upsampled)
    assert torch.equal(out[0, :, 0, 0], logits[0, :, 0, 0])  # align_corners keeps the corners
    prediction = out.argmax(1)[0, :6]
    assert torch.equal(prediction, original)  # aligned for a non-square label
    plain, plain_target = logits_to_label_geometry(logits[0], original, pad_to_square=False)
    assert plain.shape == (1, 2, 6, 8) and torch.equal(plain_target[0], original)
    with pytest.raises(ValueError, match="batch sizes"):
        logits_to_label_geometry(torch.zeros(2, 2, 4, 4), original)
