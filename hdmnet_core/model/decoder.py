"""Coarse-to-fine decoder (paper Eq. 1, reference §4.3).

Starting from the coarsest matched map, each finer stage adds the upsampled coarser
result to its own matched map, passes the sum through a small block and adds the
upsampled result back (a residual):

    X'_L = block_L(X_L)
    X'_l = block_l(X_l + up(X'_{l+1})) + up(X'_{l+1})          (Eq. 1)

``up`` is bilinear with ``align_corners=False`` (official mmseg ``resize`` default).
A block (official ``parse_layers.{i}``) is 1x1 conv (C -> 4C) + BN, 3x3 conv + BN,
1x1 conv (4C -> C) + BN, ReLU: the paper's "ReLU(MLP(...))", with no ReLU between the
convs. The classifier (official ``cls``) is 1x1 conv + BN, 3x3 conv + BN, 1x1 conv -> 2
and gives the meta learner's background/foreground logits at the finest stage size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _expand_and_mix(width: int) -> list[nn.Module]:
    """The shared front of both heads: 1x1 conv to 4*width, BN, 3x3 conv, BN (no ReLU)."""
    hidden = 4 * width
    return [
        nn.Conv2d(width, hidden, kernel_size=1),
        nn.BatchNorm2d(hidden),
        nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
        nn.BatchNorm2d(hidden),
    ]


def stage_block(width: int) -> nn.Sequential:
    """Official ``parse_layers.{i}``: indices 0..6 match the official keys."""
    return nn.Sequential(
        *_expand_and_mix(width),
        nn.Conv2d(4 * width, width, kernel_size=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    )


def classifier_head(width: int, num_classes: int = 2) -> nn.Sequential:
    """Official ``transformer.mix_transformer.cls``: indices 0..4 match the official keys."""
    return nn.Sequential(*_expand_and_mix(width), nn.Conv2d(4 * width, num_classes, kernel_size=1))


class CoarseToFineDecoder(nn.Module):
    """Eq. 1 over ``num_stages`` matched maps, then the 2-way classifier.

    ``forward(matched)`` takes the matched maps finest first (as the hierarchy returns
    them, stage ``i`` uses ``stage_blocks[i]``) and returns logits (B, 2, h_0, w_0).
    """

    def __init__(self, width: int, num_stages: int) -> None:
        super().__init__()
        self.stage_blocks = nn.ModuleList(stage_block(width) for _ in range(num_stages))
        self.classifier = classifier_head(width)

    def forward(self, matched: list[torch.Tensor]) -> torch.Tensor:
        if len(matched) != len(self.stage_blocks):
            raise ValueError(f"expected {len(self.stage_blocks)} matched maps, got {len(matched)}")
        coarsest = len(matched) - 1
        out = self.stage_blocks[coarsest](matched[coarsest])
        for i in range(coarsest - 1, -1, -1):
            up = F.interpolate(
                out, size=matched[i].shape[-2:], mode="bilinear", align_corners=False
            )
            out = up + self.stage_blocks[i](matched[i] + up)  # (B, C, h_i, w_i)
        return self.classifier(out)
