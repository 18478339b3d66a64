"""PSPNet: the base learner of BAM/HDMNet (reference §3, stage 1).

``image -> backbone (layer0..layer4) -> pyramid pooling -> classifier -> logits``.

Trained first, per fold, on the base classes only. HDMNet then freezes all of it and
reads, without gradients, the five backbone maps plus ``feat5`` = the output of the
classifier's first conv + BN (official ``cls[0:2]``, no ReLU). The rest of the
classifier (official ``base_learnear`` = ``cls[2:5]``: ReLU, Dropout2d, 1x1 conv) is
the *base learner* branch applied to ``feat5``.

Official names: ``ppm`` = :class:`PyramidPooling` (its ``features`` are our
``branches``), ``cls`` = our ``classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hdmnet_core.model.backbone import BACKBONE_NAMES, LAYER_NAMES, build_backbone, fold_batchnorm

PPM_BINS: tuple[int, ...] = (1, 2, 3, 6)
CLASSIFIER_CHANNELS: dict[str, int] = {"tiny": 64}
"""Width of ``feat5`` (the classifier's hidden layer). Official: 512 for every backbone;
the CPU ``tiny`` backbone uses 64 to stay small."""


class PyramidPooling(nn.Module):
    """Official ``ppm`` (BAM ``PPM``): pyramid pooling module of PSPNet.

    For each bin size b: adaptive average pool to b x b, 1x1 conv to ``in/len(bins)``
    channels (no bias), BN, ReLU, bilinear upsampling back to the input size; the
    branches are concatenated after the input: ``(B, C, h, w) -> (B, 2C, h, w)``.

    ``align_corners=True`` is the official upsampling setting (kept for faithful weights).
    """

    def __init__(
        self, in_channels: int, bins: Sequence[int] = PPM_BINS, align_corners: bool = True
    ) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.bins = tuple(bins)
        self.align_corners = align_corners
        self.out_channels = in_channels + reduced * len(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduced, kernel_size=1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size, mode="bilinear", align_corners=self.align_corners)
            for branch in self.branches
        ]  # each (B, C/len(bins), h, w)
        return torch.cat([x, *pooled], dim=1)  # (B, 2C, h, w) for 4 bins


def make_classifier(in_channels: int, hidden: int, num_classes: int) -> nn.Sequential:
    """Official ``cls``: [3x3 conv in->hidden no bias, BN, ReLU, Dropout2d 0.1, 1x1 conv].

    Indices matter: HDMNet uses ``[0:2]`` as frozen features and ``[2:5]`` as the base
    learner. The ReLU is not in-place so that applying ``[2:5]`` never alters ``feat5``.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=False),
        nn.Dropout2d(p=0.1),
        nn.Conv2d(hidden, num_classes, kernel_size=1),
    )


class PSPNet(nn.Module):
    """PSPNet base learner: ``backbone`` + ``ppm`` + ``classifier``.

    Args:
        backbone_name: one of ``config.BackboneName``.
        num_classes: base classes + background (PASCAL 16, COCO 61).
        upsample_align_corners: official logits upsampling uses ``align_corners=True``.

    Attributes:
        feature_channels: channels of ``feat5`` (512 except ``tiny``).
        channels: ``backbone.channels`` plus ``"feat5"``.
    """

    def __init__(
        self, backbone_name: str, num_classes: int, upsample_align_corners: bool = True
    ) -> None:
        super().__init__()
        if backbone_name not in BACKBONE_NAMES:
            raise ValueError(
                f"PSPNet: unknown backbone_name {backbone_name!r}; "
                f"choose one of {list(BACKBONE_NAMES)}"
            )
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"PSPNet: num_classes must be an integer >= 2, got {num_classes!r}")
        self.backbone_name = backbone_name
        self.num_classes = num_classes
        self.upsample_align_corners = upsample_align_corners
        self.backbone = build_backbone(backbone_name)
        top_channels = self.backbone.channels["layer4"]
        self.ppm = PyramidPooling(top_channels)
        self.feature_channels = CLASSIFIER_CHANNELS.get(backbone_name, 512)
        self.classifier = make_classifier(self.ppm.out_channels, self.feature_channels, num_classes)
        self.channels: dict[str, int] = {**self.backbone.channels, "feat5": self.feature_channels}
        self.channels_last = False

    # ----------------------------------------------------------------- training
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised image -> ``(B, num_classes, H, W)`` logits."""
        check_image(image, "PSPNet.forward(image)")
        features = self.backbone(self._memory_format(image))
        feat5 = self.classifier[0:2](self.ppm(features["layer4"]))  # (B, 512, H/8, W/8)
        logits = self.classifier[2:5](feat5)  # (B, num_classes, H/8, W/8)
        return self.upsample(logits, image.shape[-2:])

    def upsample(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Bilinear resize to the input size (official ``zoom_factor`` 8 gives exactly H, W)."""
        return F.interpolate(
            logits, size=tuple(size), mode="bilinear", align_corners=self.upsample_align_corners
        )

    # ------------------------------------------------------------- frozen usage
    @torch.no_grad()
    def frozen_features(
        self, images: torch.Tensor, feat5_region: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Official ``extract_feats``: all five backbone maps and ``feat5``, without grad.

        ``images`` ``(N, 3, H, W)`` (queries, or supports already multiplied by their
        masks). Returns ``{"layer0".."layer4": ..., "feat5": (N, feature_channels, h, w)}``
        with ``feat5`` = classifier conv + BN, before the ReLU. Outputs are contiguous
        NCHW even when :meth:`use_channels_last` is on.

        ``feat5_region`` (optional, ``(N, H', W')``, nonzero = needed, any size): an exact
        shortcut for masked supports, whose ``feat5`` only enters the prior masks after
        being multiplied by the nearest-resized mask (official ``get_similarity``). Then
        ``feat5`` is computed only inside the bounding box of the region nearest-resized
        to the feature grid (exact there) and is 0 outside; the big 3x3 classifier conv
        then costs in proportion to the box.
        """
        check_image(images, "PSPNet.frozen_features(images)")
        features = self.backbone(self._memory_format(images))
        pooled = self.ppm(features["layer4"])  # (N, 2C, h, w)
        if feat5_region is None:
            features["feat5"] = self.classifier[0:2](pooled)
        else:
            features["feat5"] = self.feat5_in_boxes(pooled, region_boxes(feat5_region, pooled))
        if self.channels_last:
            features = {k: v.contiguous() for k, v in features.items()}
        return features

    def feat5_in_boxes(
        self, pooled: torch.Tensor, boxes: list[tuple[int, int, int, int] | None]
    ) -> torch.Tensor:
        """``classifier[0:2]`` evaluated only inside one box per image, zeros elsewhere.

        The 3x3 conv reads a halo of ``padding`` pixels around the box from ``pooled``,
        and zero padding only where the box touches the map border, as the full conv
        does; the eval-mode BN is a per-channel affine map. So values inside the box
        equal the full computation.
        """
        conv, bn = self.classifier[0], self.classifier[1]  # bn: Identity once folded
        assert isinstance(conv, nn.Conv2d)
        if isinstance(bn, nn.BatchNorm2d) and bn.training:
            raise RuntimeError("PSPNet: feat5_region needs the classifier BatchNorm in eval mode")
        n, _, h, w = pooled.shape
        pad = int(conv.padding[0])
        out = pooled.new_zeros(n, conv.out_channels, h, w)
        for i, box in enumerate(boxes):
            if box is None:  # empty region: nothing needed
                continue
            y0, y1, x0, x1 = box
            if box == (0, h, 0, w):  # whole map: the plain computation
                out[i : i + 1] = bn(conv(pooled[i : i + 1]))
                continue
            ya, yb, xa, xb = max(y0 - pad, 0), min(y1 + pad, h), max(x0 - pad, 0), min(x1 + pad, w)
            crop = pooled[i : i + 1, :, ya:yb, xa:xb]
            # zero padding only on the sides where the box reaches the map border
            crop = F.pad(crop, (pad - (x0 - xa), pad - (xb - x1), pad - (y0 - ya), pad - (yb - y1)))
            out[i : i + 1, :, y0:y1, x0:x1] = bn(F.conv2d(crop, conv.weight, conv.bias))
        return out

    def frozen_features_batched(
        self,
        groups: Sequence[torch.Tensor],
        feat5_regions: Sequence[torch.Tensor | None] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """:meth:`frozen_features` of several image batches in ONE backbone call.

        E.g. ``[query (B,3,H,W), masked supports (B*K,3,H,W)]``. When every BatchNorm
        is in eval mode (``.eval()``, or HDMNet's ``fix_bn`` during training) each
        image's features do not depend on the others: the result equals separate calls
        up to float rounding, and one large call uses the CPU/GPU better.
        ``feat5_regions``: one ``feat5_region`` (or None = everywhere) per group.
        """
        if not groups:
            raise ValueError("PSPNet.frozen_features_batched: groups is empty")
        if self.uses_batch_statistics():
            raise RuntimeError(
                "PSPNet.frozen_features_batched needs every BatchNorm in eval mode (batch "
                "statistics would mix the groups); call .eval() first"
            )
        sizes = [g.shape[0] for g in groups]
        region = None
        if feat5_regions is not None:
            if len(feat5_regions) != len(groups):
                raise ValueError("PSPNet.frozen_features_batched: one feat5 region per group")
            parts = []
            for n, group, part in zip(sizes, groups, feat5_regions, strict=True):
                if part is not None and tuple(part.shape) != (n, *group.shape[-2:]):
                    raise ValueError(
                        "PSPNet.frozen_features_batched: each feat5 region must have its "
                        f"group's shape (N, H, W) = {(n, *group.shape[-2:])}, "
                        f"got {tuple(part.shape)}"
                    )
                parts.append(torch.ones(n, *group.shape[-2:]) if part is None else part.float())
            region = torch.cat([p.to(groups[0].device) for p in parts])
        features = self.frozen_features(torch.cat(list(groups), dim=0), region)
        split = {k: v.split(sizes, dim=0) for k, v in features.items()}
        return [{k: parts[i] for k, parts in split.items()} for i in range(len(groups))]

    def uses_batch_statistics(self) -> bool:
        """True if some BatchNorm is in training mode (then batching changes results)."""
        return any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modules()
        )

    def base_learner_logits(self, feat5: torch.Tensor) -> torch.Tensor:
        """Official ``base_learnear`` = ``cls[2:5]`` (ReLU, Dropout2d, 1x1 conv) on ``feat5``.

        Returns ``(B, num_classes, h, w)`` at feature resolution (not upsampled).
        """
        return self.classifier[2:5](feat5)

    def freeze(self) -> PSPNet:
        """Stop gradients into every parameter (HDMNet trains none of them). Returns self."""
        self.requires_grad_(False)
        return self

    def fold_batchnorm(self) -> PSPNet:
        """Inference-only speed-up: fold every BatchNorm into the conv before it (see
        :func:`~hdmnet_core.model.backbone.fold_batchnorm`; same outputs up to rounding,
        different state dict: load weights first). Needs eval mode. Returns self."""
        fold_batchnorm(self)
        return self

    def use_channels_last(self, enabled: bool = True) -> PSPNet:
        """Store weights channels-last (NHWC) and feed inputs that way; faster convs on CPU."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.to(memory_format=fmt)
        self.channels_last = enabled
        return self

    def _memory_format(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images


def region_boxes(
    region: torch.Tensor, feature_map: torch.Tensor
) -> list[tuple[int, int, int, int] | None]:
    """Bounding box ``(y0, y1, x0, x1)`` (end-exclusive) of each ``(N, H', W')`` region
    after nearest resizing to ``feature_map``'s grid (as the prior masks resize their
    masks); None where the region is empty."""
    n, h, w = feature_map.shape[0], *feature_map.shape[-2:]
    if region.ndim != 3 or region.shape[0] != n:
        raise ValueError(f"feat5_region must have shape (N={n}, H, W), got {tuple(region.shape)}")
    grid = F.interpolate(region[:, None].float(), size=(h, w), mode="nearest")[:, 0] != 0
    boxes: list[tuple[int, int, int, int] | None] = []
    for mask in grid:
        rows = mask.any(dim=1).nonzero()
        cols = mask.any(dim=0).nonzero()
        if rows.numel() == 0:
            boxes.append(None)
        else:
            boxes.append((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1))
    return boxes


def check_image(images: torch.Tensor, where: str) -> None:
    """Raise a clear error unless ``images`` is a float ``(N, 3, H, W)`` tensor."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{where}: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{where}: expected a floating-point tensor, got {images.dtype}")
    if images.shape[-1] < 8 or images.shape[-2] < 8:
        raise ValueError(f"{where}: image size {tuple(images.shape[-2:])} is below 8 x 8")


__all__ = [
    "LAYER_NAMES",
    "PPM_BINS",
    "PSPNet",
    "PyramidPooling",
    "check_image",
    "make_classifier",
    "region_boxes",
]
