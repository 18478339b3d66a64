"""Training-free few-shot baselines: what a trained HDMNet must beat.

Two ways to segment the query from K annotated supports without any training:

- **prior mask** (HDMNet's prior, reference section 4 "prior masks"): for every query
  pixel, the largest cosine similarity to any masked support pixel
  (``cos = q.s / (|q| |s| + 1e-7)``, support features multiplied by the support mask, so
  background support pixels are zero vectors with cosine 0); K shots: mean over
  shots; no min-max normalisation (HDMNet's choice; PFENet normalises);
- **prototype cosine**: cosine between every query pixel and the masked-average
  prototype of the supports (official ``Weighted_GAP``: ``sum(f * m) / (sum(m) + 5e-4)``;
  K shots: mean of the prototypes).

Either score map is upsampled to the label geometry and thresholded: foreground where
``score > threshold``. The threshold is chosen on *base* classes (grid search that
maximises their class-wise mIoU) and then applied unchanged to novel classes.

Features come from any ``feature_fn(images (B,3,H,W)) -> (B,C,h,w)``. The default,
:class:`FixedFeatures`, is a hand-made filter bank (colour + texture energy), so the
baselines need no training; a frozen trained backbone can be passed instead.

Differences from HDMNet's own prior, on purpose: the support *image* is not multiplied
by its mask before ``feature_fn`` (HDMNet does that before its backbone; for a fixed
filter bank the blacked-out area would only add false edges), and the default features
are standardised per image, so cosines can be negative (HDMNet's are post-ReLU, >= 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hdmnet_core.data.transforms import denormalize, logits_to_label_geometry
from hdmnet_core.metrics import IGNORE_INDEX, SegmentationMeter

FeatureFn = Callable[[Tensor], Tensor]
"""``images (B,3,H,W)`` ImageNet-normalised 0..255 -> ``features (B,C,h,w)``."""
ScoresFn = Callable[[Mapping[str, Any]], Tensor]
"""episode batch -> foreground scores ``(B,H,W)`` at the query image size."""
BaselineName = Literal["prior", "prototype"]

COSINE_EPS = 1e-7
"""Official ``cosine_eps`` of the prior mask."""
PROTOTYPE_AREA_EPS = 5e-4
"""Official ``Weighted_GAP`` adds this to the mask area."""
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.025 * i, 3) for i in range(41))
"""Thresholds 0, 0.025, ..., 1 (cosine scores lie in [-1, 1]; the prior is >= 0)."""


# ----------------------------------------------------------------------------- features
def _gaussian_kernel(sigma: float) -> Tensor:
    """1-d normalised Gaussian of radius ``ceil(3 sigma)`` -> (2r+1,)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of every channel, reflect padding: (B,C,H,W) -> (B,C,H,W)."""
    kernel = _gaussian_kernel(sigma).to(x)
    channels, radius = x.shape[1], kernel.numel() // 2
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), vertical, groups=channels)


def _gabor_bank(wavelength: float, orientations: int) -> Tensor:
    """Even and odd zero-mean Gabor filters of one wavelength -> (2 * orientations, 1, k, k).

    Gaussian envelope sigma = wavelength / 2, cut at radius = wavelength (2 sigma).
    """
    radius = math.ceil(wavelength)
    coords = torch.arange(-radius, radius + 1, dtype=torch.float32)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    envelope = torch.exp(-(x**2 + y**2) / (2 * (0.5 * wavelength) ** 2))
    filters = []
    for k in range(orientations):
        theta = math.pi * k / orientations
        along = x * math.cos(theta) + y * math.sin(theta)
        for phase in (torch.cos, torch.sin):
            g = envelope * phase(2 * math.pi * along / wavelength)
            g = g - envelope * (g.sum() / envelope.sum())  # zero mean: no response to flat areas
            filters.append(g / g.abs().sum())
    return torch.stack(filters).unsqueeze(1)


class FixedFeatures:
    """A non-learned feature extractor: colour plus multi-scale texture statistics.

    Channels, all computed from the RGB image in 0..1 (sigmas in input pixels):

    - opponent colour (intensity, red-green, blue-yellow) blurred with sigma 1 and 3 (6);
    - local colour contrast: the standard deviation of each opponent channel in a
      Gaussian window of sigma 2 (3) - a two-colour pattern has it, a flat area has not;
    - oriented texture energy: the magnitude of even/odd Gabor responses of the
      intensity at ``orientations`` angles for each wavelength, blurred with sigma
      wavelength / 2 (``orientations * len(wavelengths)``).

    The Gabor filters run at full resolution; everything is then average-pooled by
    ``stride`` and the blurs run on the pooled map (sigma / stride), which is cheap.
    Every channel is finally standardised over the image's positions (zero mean, unit
    variance), so cosine similarity compares deviations from the image's typical pixel.
    """

    def __init__(
        self,
        wavelengths: Sequence[float] = (4.0, 8.0),
        orientations: int = 4,
        stride: int = 2,
    ) -> None:
        if stride < 1 or orientations < 1 or not wavelengths:
            raise ValueError("FixedFeatures needs stride >= 1, orientations >= 1, a wavelength")
        self.wavelengths = tuple(wavelengths)
        self.orientations = orientations
        self.stride = stride
        self.gabor_banks = [_gabor_bank(w, orientations) for w in self.wavelengths]

    @property
    def channels(self) -> int:
        return 9 + self.orientations * len(self.wavelengths)

    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FixedFeatures: images must be (B,3,H,W), got {tuple(images.shape)}")
        rgb = denormalize(images.float()) / 255.0  # (B,3,H,W) in 0..1
        r, g, b = rgb.unbind(1)
        opponent = torch.stack([(r + g + b) / 3, r - g, 0.5 * (r + g) - b], dim=1)  # (B,3,H,W)
        energy = self._gabor_energy(opponent[:, :1])  # (B,O*W,H,W)
        s = self.stride
        pooled = F.avg_pool2d(torch.cat([opponent, opponent**2, energy], dim=1), s)  # (B,.,h,w)
        colour, squares, energy = pooled.split([3, 3, energy.shape[1]], dim=1)
        colour_fine, colour_coarse = gaussian_blur(colour, 1.0 / s), gaussian_blur(colour, 3.0 / s)
        local_mean = gaussian_blur(colour, 2.0 / s)
        contrast = (gaussian_blur(squares, 2.0 / s) - local_mean**2).clamp(min=0).sqrt()
        texture = torch.cat(
            [
                gaussian_blur(part, 0.5 * wavelength / s)
                for part, wavelength in zip(
                    energy.chunk(len(self.wavelengths), dim=1), self.wavelengths, strict=True
                )
            ],
            dim=1,
        )  # (B,O*W,h,w)
        features = torch.cat([colour_fine, colour_coarse, contrast, texture], dim=1)  # (B,C,h,w)
        centred = features - features.mean(dim=(2, 3), keepdim=True)
        return centred / (centred.std(dim=(2, 3), keepdim=True) + 1e-6)

    def _gabor_energy(self, intensity: Tensor) -> Tensor:
        """Gabor magnitude per (wavelength, orientation): (B,1,H,W) -> (B,O*W,H,W)."""
        energies = []
        for bank in self.gabor_banks:
            radius = bank.shape[-1] // 2
            padded = F.pad(intensity, (radius,) * 4, mode="reflect")
            responses = F.conv2d(padded, bank.to(intensity))  # (B,2*O,H,W) even/odd pairs
            even, odd = responses[:, 0::2], responses[:, 1::2]
            energies.append((even**2 + odd**2).sqrt())
        return torch.cat(energies, dim=1)


# ----------------------------------------------------------------------------- scores
def cosine_matrix(query: Tensor, support: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Official-style cosine ``q.s / (|q| |s| + eps)``: (B,N,C), (B,M,C) -> (B,N,M)."""
    dots = torch.bmm(query, support.transpose(1, 2))
    norms = query.norm(dim=2, keepdim=True) * support.norm(dim=2).unsqueeze(1)
    return dots / (norms + eps)


def binary_support_masks(support_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(B,K,H,W) 0/1/255 -> (B,K,h,w) float foreground, bilinear (align_corners=True) as official."""
    foreground = (support_masks == 1).float()
    return F.interpolate(foreground, size=size, mode="bilinear", align_corners=True)


def prior_mask_scores(
    query_features: Tensor, support_features: Tensor, support_masks: Tensor
) -> Tensor:
    """HDMNet prior mask, shots averaged: (B,C,h,w), (B,K,C,h,w), (B,K,H,W) -> (B,h,w)."""
    batch, shots, channels, h, w = support_features.shape
    masks = binary_support_masks(support_masks, (h, w))  # (B,K,h,w)
    priors = query_features.new_zeros(batch, shots, h * w)
    for b in range(batch):
        query = query_features[b].flatten(1).T  # (hw,C)
        for k in range(shots):
            masked = (support_features[b, k] * masks[b, k]).flatten(1).T  # (hw,C)
            priors[b, k] = _max_cosine(query, masked, masks[b, k].flatten() > 0)
    return priors.mean(1).view(batch, h, w)


def _max_cosine(query: Tensor, masked_support: Tensor, nonzero: Tensor) -> Tensor:
    """Max over support rows of :func:`cosine_matrix`: (N,C), (M,C), (M,) bool -> (N,).

    Same value as the official full (N, M) matrix, computed on the rows whose mask
    weight is non-zero only: a zeroed row has cosine exactly 0, so it only matters as a
    floor of 0 when such rows exist.
    """
    if not bool(nonzero.any()):
        return query.new_zeros(query.shape[0])
    similarity = cosine_matrix(query[None], masked_support[nonzero][None])[0]  # (N,M_fg)
    best = similarity.max(dim=1).values
    return best.clamp(min=0) if not bool(nonzero.all()) else best


def masked_average_prototype(features: Tensor, masks: Tensor) -> Tensor:
    """Official ``Weighted_GAP``: (B,C,h,w), (B,h,w) -> (B,C)."""
    weighted = (features * masks[:, None]).sum(dim=(2, 3))
    return weighted / (masks.sum(dim=(1, 2))[:, None] + PROTOTYPE_AREA_EPS)


def prototype_scores(
    query_features: Tensor, support_features: Tensor, support_masks: Tensor
) -> Tensor:
    """Cosine to the mean masked-average prototype: (B,C,h,w), (B,K,C,h,w), (B,K,H,W) -> (B,h,w)."""
    batch, shots, channels, h, w = support_features.shape
    masks = binary_support_masks(support_masks, (h, w))  # (B,K,h,w)
    prototypes = torch.stack(
        [masked_average_prototype(support_features[:, k], masks[:, k]) for k in range(shots)]
    ).mean(0)  # (B,C)
    query = query_features.flatten(2).transpose(1, 2)  # (B,hw,C)
    return cosine_matrix(query, prototypes[:, None]).view(batch, h, w)


_SCORERS = {"prior": prior_mask_scores, "prototype": prototype_scores}


def make_scores_fn(method: BaselineName, feature_fn: FeatureFn | None = None) -> ScoresFn:
    """Episode batch -> foreground scores ``(B,H,W)`` at the query image size."""
    if method not in _SCORERS:
        raise ValueError(f"method={method!r}: choose one of {sorted(_SCORERS)}")
    scorer = _SCORERS[method]
    features_of = feature_fn if feature_fn is not None else FixedFeatures()

    @torch.no_grad()
    def scores_fn(batch: Mapping[str, Any]) -> Tensor:
        query_image, support_images = batch["query_image"], batch["support_images"]
        b, k = support_images.shape[:2]
        query_features = features_of(query_image)  # (B,C,h,w)
        support_features = features_of(support_images.flatten(0, 1))  # (B*K,C,h,w)
        support_features = support_features.view(b, k, *support_features.shape[1:])
        scores = scorer(query_features, support_features, batch["support_masks"])  # (B,h,w)
        size = query_image.shape[-2:]
        return F.interpolate(scores[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]

    return scores_fn


# ----------------------------------------------------------------------------- evaluation
def _scores_and_targets(scores: Tensor, batch: Mapping[str, Any]) -> list[tuple[Tensor, Tensor]]:
    """Per episode ``(scores (1,h,w), target (1,h,w))`` at the label geometry.

    The target is ``query_original_mask`` when the batch has it (scores bilinearly
    resized to it, align_corners=True, as the official evaluation), else ``query_mask``.
    """
    originals = batch.get("query_original_mask")
    pairs = []
    for i in range(scores.shape[0]):
        if originals is None:
            pairs.append((scores[i : i + 1], batch["query_mask"][i : i + 1].long()))
            continue
        resized, target = logits_to_label_geometry(
            scores[i : i + 1, None], torch.as_tensor(originals[i]), pad_to_square=False
        )  # (1,1,h,w), (1,h,w)
        pairs.append((resized[:, 0], target))
    return pairs


def _check_binary_target(target: Tensor) -> None:
    values = set(target.unique().tolist()) - {0, 1, IGNORE_INDEX}
    if values:
        raise ValueError(f"episode targets must be 0/1/255, found {sorted(values)}")


def threshold_curve(
    scores_fn: ScoresFn,
    episodes: Iterable[Mapping[str, Any]],
    grid: Sequence[float] = DEFAULT_GRID,
) -> dict[float, float]:
    """Class-wise mIoU (over the classes the episodes visit) for every threshold in ``grid``."""
    if len(grid) == 0:
        raise ValueError("grid must hold at least one threshold")
    collected: list[tuple[Tensor, Tensor, int]] = []
    for batch in episodes:
        scores = scores_fn(batch)
        class_ids = torch.as_tensor(batch["class_id"]).flatten().tolist()
        for (score, target), class_id in zip(
            _scores_and_targets(scores, batch), class_ids, strict=True
        ):
            _check_binary_target(target)
            collected.append((score, target, int(class_id)))
    if not collected:
        raise ValueError("threshold_curve: the episode iterable was empty")
    # Stack episodes of equal label size so each threshold costs one meter update per size.
    groups: dict[tuple[int, ...], list[tuple[Tensor, Tensor, int]]] = {}
    for item in collected:
        groups.setdefault(tuple(item[1].shape), []).append(item)
    stacked = [
        (
            torch.cat([s for s, _, _ in items]),
            torch.cat([t for _, t, _ in items]),
            [c for _, _, c in items],
        )
        for items in groups.values()
    ]  # [(scores (N,h,w), targets (N,h,w), class ids)]
    class_ids = sorted({c for _, _, c in collected})
    curve = {}
    for threshold in grid:
        meter = SegmentationMeter(class_ids)
        for scores, targets, ids in stacked:
            meter.update((scores > threshold).long(), targets, ids)
        curve[float(threshold)] = meter.miou()
    return curve


def choose_threshold(
    scores_fn: ScoresFn,
    episodes: Iterable[Mapping[str, Any]],
    grid: Sequence[float] = DEFAULT_GRID,
) -> float:
    """The grid value with the highest class-wise mIoU on ``episodes`` (use base classes).

    Ties go to the smallest threshold.
    """
    return best_threshold(threshold_curve(scores_fn, episodes, grid))


def best_threshold(curve: Mapping[float, float]) -> float:
    """The threshold of highest mIoU in a :func:`threshold_curve`; ties go to the smallest."""
    if not curve:
        raise ValueError("best_threshold: the curve is empty")
    return max(curve, key=lambda t: (curve[t], -t))


def evaluate_baseline(
    scores_fn: ScoresFn,
    episodes: Iterable[Mapping[str, Any]],
    threshold: float,
    class_ids: Sequence[int],
) -> dict[str, Any]:
    """Class-wise mIoU, FB-IoU and per-class IoU of ``score > threshold`` over ``episodes``.

    ``class_ids``: the fold's evaluation classes (an unseen one scores 0, as official).
    """
    meter = SegmentationMeter(class_ids)
    for batch in episodes:
        scores = scores_fn(batch)
        class_list = torch.as_tensor(batch["class_id"]).flatten().tolist()
        for (score, target), class_id in zip(
            _scores_and_targets(scores, batch), class_list, strict=True
        ):
            meter.update((score > threshold).long(), target, [int(class_id)])
    return {"threshold": float(threshold), **meter.summary()}
