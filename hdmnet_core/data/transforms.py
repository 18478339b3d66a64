"""Joint image + mask transforms (reference sections 2 and 4.6), on torchvision v2.

One image and any number of masks (the episode mask, the base-learner label) go through
the *same* geometry: images are interpolated bilinearly, masks with nearest neighbour, so
no new label values appear.

Training (official ``train_transform`` of HDMNet ``train.py``, same order):

1. random scale ``s ~ U[scale_min, scale_max]`` (official ``RandScale``);
2. with p = 0.5, rotation by ``a ~ U[-degrees, degrees]`` about the centre, image padded
   with the ImageNet mean (0..255 units), masks padded with 255 (official ``RandRotate``);
3. with p = 0.5, Gaussian blur of the image, kernel 5 (official ``RandomGaussianBlur``;
   cv2 with sigma 0 derives sigma = 0.3 * ((5 - 1) / 2 - 1) + 0.8 = 1.1);
4. with p = 0.5, horizontal flip;
5. direct resize to ``size`` x ``size`` (aspect ratio not kept; official ``Resize``);
6. float tensor, normalised with ImageNet mean/std on 0..255 values.

Evaluation (official ``resized_val: True``): query and supports are resized directly to
``size`` x ``size``; the original-size label is kept for scoring, see
:func:`logits_to_label_geometry`.

Randomness: the parameters are drawn from the ``numpy.random.Generator`` passed in (the
episode's own generator), and the deterministic functional API is applied, so the
global torch RNG is never used and an episode is the same on any DataLoader worker.

Bilinear resizes use ``antialias=False`` to match cv2's ``INTER_LINEAR`` of the official
code (half-pixel centres, no low-pass when shrinking). Mask resizes use torch's
``"nearest"``, which maps like cv2's ``INTER_NEAREST`` (source index = floor(dst * scale)):
as in the official code, a mask can sit up to half a source pixel off the bilinear image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IGNORE_INDEX = 255
OFFICIAL_LOGIT_PAD = 255.0
"""Official ``map_to_square`` fills the padded logits with 255 (any value works: the padded
target is 255 = ignore there)."""


class JointTransform(Protocol):
    """``(image (H,W,3) uint8, masks [(H,W) uint8], rng) -> (image (3,S,S) float32, masks
    [(S,S) int64])``."""

    def __call__(
        self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[Tensor, list[Tensor]]: ...


# ----------------------------------------------------------------------- helpers
def to_tv_tensors(
    image: np.ndarray, masks: Sequence[np.ndarray]
) -> tuple[tv_tensors.Image, list[tv_tensors.Mask]]:
    """numpy ``(H,W,3)`` uint8 + ``(H,W)`` masks -> float32 ``Image`` (3,H,W) in 0..255 and
    uint8 ``Mask`` (H,W). The official code also works on float32 images."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    for k, mask in enumerate(masks):
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {k} has shape {mask.shape}, image has {image.shape[:2]}")
    image_t = tv_tensors.Image(
        torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    )
    masks_t = [
        tv_tensors.Mask(torch.from_numpy(np.asarray(m, dtype=np.uint8).copy())) for m in masks
    ]
    return image_t, masks_t


def normalize(image: Tensor) -> Tensor:
    """``(3,H,W)`` 0..255 -> ImageNet-normalised float32 (official ``Normalize``)."""
    mean = torch.tensor(IMAGENET_MEAN_255, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, dtype=torch.float32).view(3, 1, 1)
    return (image.float() - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Inverse of :func:`normalize`, back to 0..255 (for figures); works on ``(...,3,H,W)``."""
    mean = torch.tensor(IMAGENET_MEAN_255, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return image * std + mean


def resize_pair(
    image: Tensor, masks: Sequence[Tensor], size: tuple[int, int]
) -> tuple[Tensor, list[Tensor]]:
    """Image bilinear (no antialias, as cv2), masks nearest, to ``size = (h, w)``."""
    image = F.resize(image, list(size), interpolation=F.InterpolationMode.BILINEAR, antialias=False)
    masks = [F.resize(m, list(size), interpolation=F.InterpolationMode.NEAREST) for m in masks]
    return image, masks


def _finish(image: Tensor, masks: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Plain tensors: normalised float32 image ``(3,S,S)``, int64 masks ``(S,S)``."""
    return normalize(image.as_subclass(Tensor)), [
        m.as_subclass(Tensor).to(torch.int64) for m in masks
    ]


# ----------------------------------------------------------------------- training
@dataclass(frozen=True)
class AugmentationParams:
    """The random draws of one training transform (``None`` / ``False`` = step skipped)."""

    scale: float
    angle: float | None
    blur: bool
    flip: bool


@dataclass(frozen=True)
class TrainTransform:
    """Official training augmentation, image and masks jointly (reference 4.6)."""

    size: int
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotate_degrees: float = 10.0
    rotate_p: float = 0.5
    blur_kernel: int = 5
    blur_p: float = 0.5
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range={self.scale_range}: needs 0 < min <= max")
        if self.size < 1:
            raise ValueError(f"size={self.size}: must be positive")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel={self.blur_kernel}: must be a positive odd number")

    def draw(self, rng: np.random.Generator) -> AugmentationParams:
        """Draw every random parameter from ``rng`` (always the same number of draws)."""
        lo, hi = self.scale_range
        scale = float(rng.uniform(lo, hi))
        rotate = bool(rng.random() < self.rotate_p)
        angle = float(rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        blur = bool(rng.random() < self.blur_p)
        flip = bool(rng.random() < self.flip_p)
        return AugmentationParams(scale, angle if rotate else None, blur, flip)

    def apply(
        self, image: Tensor, masks: Sequence[Tensor], params: AugmentationParams
    ) -> tuple[Tensor, list[Tensor]]:
        """Apply fixed ``params`` to tv_tensors (image float 0..255, masks uint8)."""
        image, masks = self.augment(image, masks, params)
        return resize_pair(image, masks, (self.size, self.size))

    def augment(
        self, image: Tensor, masks: Sequence[Tensor], params: AugmentationParams
    ) -> tuple[Tensor, list[Tensor]]:
        """Steps 1-4 (scale, rotation, blur, flip) without the final resize."""
        h, w = image.shape[-2:]
        scaled = (max(1, round(h * params.scale)), max(1, round(w * params.scale)))
        image, masks = resize_pair(image, masks, scaled)
        if params.angle is not None:
            # cv2.getRotationMatrix2D((w/2, h/2), ...) turns about pixel index (w/2, h/2);
            # torchvision's ``center`` is that index + 0.5.
            h, w = image.shape[-2:]
            center = [w * 0.5 + 0.5, h * 0.5 + 0.5]
            bilinear, nearest = F.InterpolationMode.BILINEAR, F.InterpolationMode.NEAREST
            image = F.rotate(
                image, params.angle, bilinear, center=center, fill=list(IMAGENET_MEAN_255)
            )
            mask_fill = [float(IGNORE_INDEX)]
            masks = [
                F.rotate(m, params.angle, nearest, center=center, fill=mask_fill) for m in masks
            ]
        if params.blur:
            sigma = 0.3 * ((self.blur_kernel - 1) * 0.5 - 1) + 0.8  # cv2's sigma for sigma=0
            h, w = image.shape[-2:]
            kernel = [
                blur_kernel_within(self.blur_kernel, w),
                blur_kernel_within(self.blur_kernel, h),
            ]
            image = F.gaussian_blur(image, kernel, [sigma, sigma])  # kernel and sigma: (x, y)
        if params.flip:
            image = F.horizontal_flip(image)
            masks = [F.horizontal_flip(m) for m in masks]
        return image, list(masks)

    def __call__(
        self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[Tensor, list[Tensor]]:
        image_t, masks_t = to_tv_tensors(image, masks)
        image_out, masks_out = self.apply(image_t, masks_t, self.draw(rng))
        return _finish(image_out, masks_out)


def blur_kernel_within(kernel: int, side: int) -> int:
    """The blur kernel along a side of ``side`` pixels: ``kernel``, or the largest odd size
    whose reflect padding fits (``2 * side - 1``) on images smaller than the kernel, where a
    full kernel would fail (found by the property tests: a 1- or 2-pixel side after scaling)."""
    return min(kernel, 2 * side - 1)


# ------------------------------------------------------------- base learner (stage 1)
@dataclass(frozen=True)
class CropTrainTransform:
    """Stage-1 augmentation of BAM ``train_base.py`` (semseg): scale, rotation, blur, flip as
    :class:`TrainTransform`, then a random ``size`` x ``size`` crop instead of a resize.

    An image smaller than the crop is first padded evenly on both sides, with the ImageNet
    mean for the image and 255 for the masks (official ``Crop(..., crop_type="rand")``).
    """

    size: int
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_degrees: float = 10.0

    def __call__(
        self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[Tensor, list[Tensor]]:
        augment = TrainTransform(self.size, self.scale_range, self.rotate_degrees)
        params = augment.draw(rng)
        corner = (float(rng.random()), float(rng.random()))  # crop origin as fractions
        image_t, masks_t = to_tv_tensors(image, masks)
        image_a, masks_a = augment.augment(image_t, masks_t, params)
        image_c, masks_c = random_crop(image_a, masks_a, self.size, corner)
        return _finish(image_c, masks_c)


def random_crop(
    image: Tensor, masks: Sequence[Tensor], size: int, corner: tuple[float, float]
) -> tuple[Tensor, list[Tensor]]:
    """Pad to at least ``size`` (mean / 255, evenly), then crop ``size`` x ``size`` at
    ``corner`` (fractions in [0, 1) of the free range): ``(3,H,W) -> (3,size,size)``."""
    h, w = image.shape[-2:]
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if pad_h or pad_w:
        border = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2]  # l, t, r, b
        image = F.pad(image, border, fill=list(IMAGENET_MEAN_255))
        masks = [F.pad(m, border, fill=IGNORE_INDEX) for m in masks]
        h, w = image.shape[-2:]
    top = int(corner[0] * (h - size + 1))
    left = int(corner[1] * (w - size + 1))
    image = F.crop(image, top, left, size, size)
    return image, [F.crop(m, top, left, size, size) for m in masks]


# --------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class EvalTransform:
    """Direct resize to ``size`` x ``size`` (official ``resized_val``); no randomness."""

    size: int

    def __call__(
        self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        image_t, masks_t = to_tv_tensors(image, masks)
        image_out, masks_out = resize_pair(image_t, masks_t, (self.size, self.size))
        return _finish(image_out, masks_out)


def logits_to_label_geometry(
    logits: Tensor, original_mask: Tensor, pad_to_square: bool = True
) -> tuple[Tensor, Tensor]:
    """Bring network logits to the geometry the official ``validate`` scores on.

    Official (HDMNet ``test.py`` with ``ori_resize: True``): the logits ``(B,C,h,w)`` at
    input size are bilinearly upsampled (``align_corners=True``) to the original label
    size ``(H,W)``; then both the logits and the label are padded at the bottom/right to
    ``L x L`` with ``L = max(H, W)`` (``map_to_square``; label pad = 255 = ignore, logit
    pad = 255). Because the logits are first resized to ``(H,W)`` and only then padded,
    prediction and label stay aligned for non-square images, and the padding never
    changes a metric. ``pad_to_square=False`` skips the padding (same metrics, less
    memory).

    Args:
        logits: ``(B,C,h,w)`` or ``(C,h,w)``.
        original_mask: ``(H,W)`` or ``(B,H,W)`` original-size label (0/1/255).
    Returns:
        ``(logits (B,C,L,L), target (B,L,L) int64)`` (``L x L`` -> ``H x W`` without padding).
    """
    if logits.dim() == 3:
        logits = logits.unsqueeze(0)
    if original_mask.dim() == 2:
        original_mask = original_mask.unsqueeze(0)
    if logits.dim() != 4 or original_mask.dim() != 3 or logits.shape[0] != original_mask.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} and original mask "
                         f"{tuple(original_mask.shape)} need batch sizes that match")  # fmt: skip
    height, width = original_mask.shape[-2:]
    logits = nnf.interpolate(
        logits.float(), size=(height, width), mode="bilinear", align_corners=True
    )
    target = original_mask.to(device=logits.device, dtype=torch.int64)
    if not pad_to_square:
        return logits, target
    side = max(height, width)
    pad = (0, side - width, 0, side - height)  # (left, right, top, bottom)
    logits = nnf.pad(logits, pad, value=OFFICIAL_LOGIT_PAD)  # (B,C,L,L)
    target = nnf.pad(target, pad, value=IGNORE_INDEX)  # (B,L,L)
    return logits, target
