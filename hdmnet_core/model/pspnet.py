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
from dataclasses import dataclass

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
        upsampled = [
            F.interpolate(p, size, mode="bilinear", align_corners=self.align_corners)
            for p in self.pooled_branches(x)
        ]  # each (B, C/len(bins), h, w)
        return torch.cat([x, *upsampled], dim=1)  # (B, 2C, h, w) for 4 bins

    def pooled_branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The branches before upsampling: ``(B, C, h, w) -> [(B, C/len(bins), b, b)]``."""
        return [branch(x) for branch in self.branches]


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
        self.pooled_branch_conv = True
        """Exact speed-up (see :meth:`classifier_features`); False = official op order."""

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
        ``feat5`` is computed only inside the bounding box of each region nearest-resized
        to the feature grid (exact there) and is 0 outside; the big 3x3 classifier conv
        then costs in proportion to the largest box.
        """
        check_image(images, "PSPNet.frozen_features(images)")
        features = self.backbone(self._memory_format(images))
        return self.with_feat5(features, feat5_region)

    def with_feat5(
        self, features: dict[str, torch.Tensor], feat5_region: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Add ``feat5`` to the backbone maps; contiguous NCHW outputs."""
        top = features["layer4"]  # (N, C, h, w)
        boxes = None if feat5_region is None else region_boxes(feat5_region, top)
        features = {**features, "feat5": self.classifier_features(top, boxes)}
        if self.channels_last:
            features = {k: v.contiguous() for k, v in features.items()}
        return features

    def classifier_features(
        self, top: torch.Tensor, boxes: RegionBoxes | None = None
    ) -> torch.Tensor:
        """``feat5 = classifier[0:2](ppm(top))``: ``(N, C, h, w) -> (N, feature_channels, h, w)``.

        With ``pooled_branch_conv`` (default) the 3x3 conv is split along its input
        channels: the ``top`` channels are convolved as usual, the pyramid branches at
        their pooled size (:func:`conv_of_upsampled`), which halves the cost of the
        biggest conv of the network with the same result up to float rounding.
        ``boxes`` (from :func:`region_boxes`): compute the conv only in one window per
        image around its box; exact inside the box, 0 outside.
        """
        conv, bn = self.classifier[0], self.classifier[1]  # bn: Identity once folded
        assert isinstance(conv, nn.Conv2d)
        pad = int(conv.padding[0])
        if self.pooled_branch_conv:
            channels = top.shape[1]
            inputs, weight = top, conv.weight[:, :channels]
            branch_term: torch.Tensor | None = conv_of_upsampled(
                self.ppm.pooled_branches(top),
                conv.weight[:, channels:],
                top.shape[-2:],
                pad,
                self.ppm.align_corners,
            )  # (N, O, h, w)
        else:
            inputs, weight, branch_term = self.ppm(top), conv.weight, None
        if boxes is None:
            out = F.conv2d(inputs, weight, conv.bias, padding=pad)  # (N, O, h, w)
        else:
            out = conv_in_windows(inputs, weight, conv.bias, pad, boxes)
        if branch_term is not None:
            out = out + branch_term
        out = bn(out)
        if boxes is not None:
            out = out * boxes.box_mask(out)  # 0 outside the boxes, as documented
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
        regions = list(feat5_regions) if feat5_regions is not None else [None] * len(groups)
        if len(regions) != len(groups):
            raise ValueError("PSPNet.frozen_features_batched: one feat5 region per group")
        sizes = [g.shape[0] for g in groups]
        for n, group, region in zip(sizes, groups, regions, strict=True):
            check_image(group, "PSPNet.frozen_features_batched(groups)")
            if region is not None and tuple(region.shape) != (n, *group.shape[-2:]):
                raise ValueError(
                    "PSPNet.frozen_features_batched: each feat5 region must have its "
                    f"group's shape (N, H, W) = {(n, *group.shape[-2:])}, "
                    f"got {tuple(region.shape)}"
                )
        with torch.no_grad():
            backbone = self.backbone(self._memory_format(torch.cat(list(groups), dim=0)))
            split = {k: v.split(sizes, dim=0) for k, v in backbone.items()}
            # feat5 per group: each group's windows (feat5_region) are sized for it alone
            return [
                self.with_feat5({k: parts[i] for k, parts in split.items()}, region)
                for i, region in enumerate(regions)
            ]

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


@dataclass(frozen=True)
class RegionBoxes:
    """One bounding box per image on a feature grid, and windows of one common size.

    ``first_row``/``end_row``/``first_col``/``end_col`` (N,) are the boxes (end-exclusive;
    empty boxes where ``nonempty`` is False). ``top``/``left`` (N,) are the origins of the
    windows of size ``height`` x ``width``: the largest box, so that one conv call serves
    all images. Every box lies inside its image's window.
    """

    first_row: torch.Tensor
    end_row: torch.Tensor
    first_col: torch.Tensor
    end_col: torch.Tensor
    nonempty: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    height: int
    width: int

    def box_mask(self, like: torch.Tensor) -> torch.Tensor:
        """``(N, 1, h, w)`` mask of ``like``'s dtype: 1 inside each box, 0 elsewhere."""
        h, w = like.shape[-2:]
        ys = torch.arange(h, device=like.device)
        xs = torch.arange(w, device=like.device)
        rows = (ys >= self.first_row[:, None]) & (ys < self.end_row[:, None])  # (N, h)
        cols = (xs >= self.first_col[:, None]) & (xs < self.end_col[:, None])  # (N, w)
        return (rows[:, :, None] & cols[:, None, :])[:, None].to(like.dtype)


def region_boxes(region: torch.Tensor, feature_map: torch.Tensor) -> RegionBoxes:
    """Bounding box of each ``(N, H', W')`` region (nonzero = inside) after nearest
    resizing to ``feature_map``'s grid, as the prior masks resize their masks."""
    n, h, w = feature_map.shape[0], *feature_map.shape[-2:]
    if region.ndim != 3 or region.shape[0] != n:
        raise ValueError(f"feat5_region must have shape (N={n}, H, W), got {tuple(region.shape)}")
    grid = F.interpolate(region[:, None].float(), size=(h, w), mode="nearest")[:, 0] != 0
    grid = grid.to(feature_map.device)
    rows, cols = grid.any(dim=2), grid.any(dim=1)  # (N, h), (N, w)
    nonempty = rows.any(dim=1)  # (N,)
    first_row = rows.int().argmax(dim=1)
    end_row = torch.where(nonempty, h - rows.flip(1).int().argmax(dim=1), first_row)
    first_col = cols.int().argmax(dim=1)
    end_col = torch.where(nonempty, w - cols.flip(1).int().argmax(dim=1), first_col)
    height = max(int((end_row - first_row).max()), 1)
    width = max(int((end_col - first_col).max()), 1)
    # windows of the common size start at the box and shift back to stay on the map
    top = first_row.clamp(max=h - height)
    left = first_col.clamp(max=w - width)
    return RegionBoxes(first_row, end_row, first_col, end_col, nonempty, top, left, height, width)


def conv_in_windows(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    boxes: RegionBoxes,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` inside each image's window only.

    ``x`` (N, C, h, w) -> (N, O, h, w), equal to the full conv inside the windows and 0
    outside. One conv over the N gathered windows (each read with its ``padding`` halo,
    zero beyond the map border exactly like the full conv's padding); no loop over N.
    """
    n, _, h, w = x.shape
    hb, wb = boxes.height, boxes.width
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, h+2p, w+2p)
    rows = boxes.top[:, None] + torch.arange(hb + 2 * padding, device=x.device)  # (N, hb+2p)
    cols = boxes.left[:, None] + torch.arange(wb + 2 * padding, device=x.device)  # (N, wb+2p)
    batch = torch.arange(n, device=x.device)[:, None, None]
    windows = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    windows = windows.permute(0, 3, 1, 2)  # (N, C, hb+2p, wb+2p)
    result = F.conv2d(windows, weight, bias)  # (N, O, hb, wb)
    out = result.new_zeros(n, result.shape[1], h, w)
    out_rows = rows[:, :hb]  # window rows in map coordinates (padding cancels the halo)
    out_cols = cols[:, :wb]
    out.permute(0, 2, 3, 1)[batch, out_rows[:, :, None], out_cols[:, None, :]] = result.permute(
        0, 2, 3, 1
    )
    return out


def interpolation_matrix(
    out_size: int, in_size: int, align_corners: bool, like: torch.Tensor
) -> torch.Tensor:
    """``(out_size, in_size)`` weights of 1-D linear interpolation, as ``F.interpolate``.

    Bilinear 2-D resizing is separable: ``up = A_h @ p @ A_w.T`` for one channel."""
    eye = torch.eye(in_size, device=like.device)[None]  # (1, in, in), float32
    weights = F.interpolate(eye, size=out_size, mode="linear", align_corners=align_corners)
    return weights[0].T.to(like.dtype)  # (out, in)


def shifted_interpolation(
    out_size: int, in_size: int, kernel: int, padding: int, align_corners: bool, like: torch.Tensor
) -> torch.Tensor:
    """``(kernel, out_size, in_size)``: row ``y`` of tap ``d`` interpolates position
    ``y + d - padding`` of the upsampled axis, or is 0 where that falls in the padding."""
    weights = interpolation_matrix(out_size, in_size, align_corners, like)
    weights = F.pad(weights, (0, 0, padding, padding))  # zero rows = conv zero padding
    return torch.stack([weights[d : d + out_size] for d in range(kernel)])


def conv_of_upsampled(
    pooled: Sequence[torch.Tensor],
    weight: torch.Tensor,
    size: Sequence[int],
    padding: int,
    align_corners: bool,
) -> torch.Tensor:
    """``conv2d(cat([upsample(p) for p in pooled]), weight, padding)`` without upsampling.

    The pyramid branches are ``b x b`` maps bilinearly upsampled to ``h x w``. Channel
    mixing and a per-axis linear resize commute, and a conv tap ``(dy, dx)`` reads the
    upsampled map shifted by ``(dy - padding, dx - padding)`` with zeros outside, so::

        out[n, o, y, x] = sum_{dy, dx, i, j} R[dy, y, i] * (W[:, :, dy, dx] @ p)[n, o, i, j] * C[dx, x, j]

    with ``R``/``C`` the shifted interpolation matrices (:func:`shifted_interpolation`).
    The conv weights act on ``b x b`` maps (bins 1, 2, 3, 6) instead of ``h x w``: for
    PSPNet at 473 the 2048 branch channels of the 4096-channel classifier conv cost
    about 0.3 GFLOP instead of 68. Stride 1, dilation 1, square kernel.

    Args:
        pooled: per bin ``(N, C_b, b_h, b_w)``.
        weight: ``(O, sum C_b, k, k)``, the conv weight slices of the branch channels.
        size: ``(h, w)`` of the upsampled maps (and of the output).

    Returns:
        ``(N, O, h, w)``, no bias.
    """
    h, w = int(size[0]), int(size[1])
    kernel = weight.shape[-1]
    out: torch.Tensor | None = None
    offset = 0
    for p in pooled:  # one term per pyramid bin
        channels = p.shape[1]
        weight_b = weight[:, offset : offset + channels].to(p.dtype)  # (O, C_b, k, k)
        offset += channels
        rows = shifted_interpolation(
            h, p.shape[-2], kernel, padding, align_corners, p
        )  # (k, h, b_h)
        cols = shifted_interpolation(
            w, p.shape[-1], kernel, padding, align_corners, p
        )  # (k, w, b_w)
        taps = torch.einsum("ocyx,ncij->nyxoij", weight_b, p)  # (N, k, k, O, b_h, b_w)
        part = torch.einsum("yHi,nyxoij->nxoHj", rows, taps)  # (N, k, O, h, b_w)
        term = torch.einsum("xWj,nxoHj->noHW", cols, part)  # (N, O, h, w)
        out = term if out is None else out + term
    if out is None or offset != weight.shape[1]:
        raise ValueError(
            f"conv_of_upsampled: the branches have {offset} channels, the weight {weight.shape[1]}"
        )
    return out


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
    "RegionBoxes",
    "conv_in_windows",
    "conv_of_upsampled",
    "make_classifier",
    "region_boxes",
]
