"""Feature extractors ("backbones") of the base learner, split into five stages.

Every backbone exposes the same five stages ``layer0`` .. ``layer4`` (the official
names) and returns all five feature maps, because HDMNet reads several of them:
``layer2`` and ``layer3`` build the "mid" features of the meta learner, ``layer4``
feeds the pyramid pooling head and one of the two prior masks (reference §3, §4).

Backbones (``build_backbone(name)``):

- ``resnet50`` / ``resnet101``: the *deep-stem* dilated ResNet of PSPNet/semseg
  (``resnet50_v2.pth``), which the official code uses. Stem = three 3x3 convs
  (64, 64, 128 channels, the first with stride 2), each followed by BN + ReLU, then a
  3x3 max-pool with stride 2. ``layer3`` and ``layer4`` keep stride 1 and dilate the
  3x3 conv of *every* block by 2 and 4, so the output stride is 8 (473 -> 60).
- ``vgg16_bn``: VGG16 with BatchNorm in torchvision's ``features`` layout, split at
  indices 0-7, 7-14, 14-24, 24-34, 34-43 as the official ``get_vgg16_layer``. No pool
  is removed: ``layer2`` has stride 8, ``layer3``/``layer4`` stride 16 (473 -> 30); the
  official meta learner resizes ``layer2`` to ``layer3``'s size.
- ``torchvision_resnet50``: torchvision's ResNet-50 (7x7 stem, a *different* network
  from the deep stem) with ``replace_stride_with_dilation=[False, True, True]``. It is
  offered because its ImageNet weights are easy to get; it is never used silently in
  place of the deep stem.
- ``tiny``: a small deep-stem dilated ResNet for the ``cpu-tiny`` profile (96 x 96 on
  two CPU cores), built the same way as ``resnet50`` with fewer channels and blocks.

No weights are downloaded here, ever: weights come from a file through
:mod:`hdmnet_core.model.convert`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import torch
import torchvision
from torch import nn

from hdmnet_core.config import BackboneName

LAYER_NAMES: tuple[str, ...] = ("layer0", "layer1", "layer2", "layer3", "layer4")

VGG16_SPLITS: tuple[tuple[int, int], ...] = ((0, 7), (7, 14), (14, 24), (24, 34), (34, 43))
"""Official ``get_vgg16_layer``: ranges of torchvision ``vgg16_bn.features`` indices per
stage. Index 43 (the last max-pool) is left out, so ``layer4`` keeps ``layer3``'s size."""

VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
"""Torchvision's VGG configuration "D": conv widths, ``"M"`` = 2x2 max-pool stride 2."""


class Bottleneck(nn.Module):
    """ResNet bottleneck as in PSPNet/semseg ``resnet.py``.

    1x1 conv (reduce to ``planes``) -> 3x3 conv (carries the stride and the dilation,
    padding = dilation) -> 1x1 conv (expand to ``4 * planes``), each with BN; ReLU after
    the first two and after the residual sum. ``downsample`` (official name) is the 1x1
    conv + BN shortcut used when the shape changes.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes,
            planes,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def resnet_stage(
    in_channels: int, planes: int, blocks: int, stride: int, dilation: int
) -> nn.Sequential:
    """``blocks`` bottlenecks; the first may change stride/width, all share ``dilation``.

    Official PSPNet sets dilation (and padding) on the 3x3 conv of every block of
    ``layer3``/``layer4`` including the first, and turns all strides to 1.
    """
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    layers = [Bottleneck(in_channels, planes, stride, dilation, downsample)]
    layers += [Bottleneck(out_channels, planes, 1, dilation) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def deep_stem(widths: tuple[int, int, int]) -> nn.Sequential:
    """Official ``layer0``: (conv3x3 stride 2, BN, ReLU, conv3x3, BN, ReLU, conv3x3, BN, ReLU,
    max-pool 3x3 stride 2). Indices match the official keys ``layer0.{0,1,3,4,6,7}``."""
    c1, c2, c3 = widths
    return nn.Sequential(
        nn.Conv2d(3, c1, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c2),
        nn.ReLU(inplace=True),
        nn.Conv2d(c2, c3, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c3),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )


class Backbone(nn.Module):
    """Five sequential stages ``layer0`` .. ``layer4``; ``forward`` returns all five maps.

    Attributes:
        name: the ``BackboneName`` it was built from.
        channels: output channels of each stage, e.g. ``{"layer4": 2048, ...}``.
        strides: output stride of each stage relative to the input image.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[nn.Module],
        channels: Sequence[int],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        if len(stages) != 5 or len(channels) != 5 or len(strides) != 5:
            raise ValueError("a Backbone needs exactly 5 stages, channel counts and strides")
        self.name = name
        self.layer0, self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.channels: dict[str, int] = dict(zip(LAYER_NAMES, channels, strict=True))
        self.strides: dict[str, int] = dict(zip(LAYER_NAMES, strides, strict=True))

    def stages(self) -> list[nn.Module]:
        return [self.layer0, self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        for name, stage in zip(LAYER_NAMES, self.stages(), strict=True):
            x = stage(x)  # (B, channels[name], ~H/strides[name], ~W/strides[name])
            features[name] = x
        return features


def init_resnet_weights(module: nn.Module) -> None:
    """Official initialisation (semseg ``resnet.py``): Kaiming-normal (fan_out) convs,
    BN weight 1 and bias 0. Only matters when training from scratch (``tiny``)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def deep_stem_resnet(
    name: str,
    stem_widths: tuple[int, int, int],
    planes: tuple[int, int, int, int],
    blocks: tuple[int, int, int, int],
) -> Backbone:
    """Deep-stem ResNet with output stride 8: layer3 dilation 2, layer4 dilation 4."""
    strides = (1, 2, 1, 1)
    dilations = (1, 1, 2, 4)
    stages: list[nn.Module] = [deep_stem(stem_widths)]
    channels = [stem_widths[2]]
    in_channels = stem_widths[2]
    for width, count, stride, dilation in zip(planes, blocks, strides, dilations, strict=True):
        stages.append(resnet_stage(in_channels, width, count, stride, dilation))
        in_channels = width * Bottleneck.expansion
        channels.append(in_channels)
    backbone = Backbone(name, stages, channels, strides=(4, 4, 8, 8, 8))
    init_resnet_weights(backbone)
    return backbone


def vgg16_bn_features(ceil_mode: bool = True) -> nn.Sequential:
    """VGG16-bn ``features`` in torchvision's index layout (44 modules).

    ``ceil_mode=True`` is the official choice (BAM ``vgg.py``); torchvision uses False.
    It only changes the map sizes on odd inputs (473: 60/30 official vs 59/29).
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))
        else:
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(in_channels, item, kernel_size=3, padding=1),
                nn.BatchNorm2d(item),
                nn.ReLU(inplace=True),
            ]
            in_channels = item
    return nn.Sequential(*layers)


def vgg16_bn_backbone(ceil_mode: bool = True) -> Backbone:
    features = vgg16_bn_features(ceil_mode)
    stages = [nn.Sequential(*features[start:stop]) for start, stop in VGG16_SPLITS]
    return Backbone("vgg16_bn", stages, (64, 128, 256, 512, 512), strides=(2, 4, 8, 16, 16))


def torchvision_resnet50_backbone() -> Backbone:
    """torchvision ResNet-50 (7x7 stem), ``layer0`` = (conv1, bn1, relu, maxpool).

    torchvision's dilation rule differs slightly from PSPNet's: the first block of a
    dilated stage keeps the previous dilation. It is torchvision's network, as is.
    """
    net = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, True, True]
    )
    layer0 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [layer0, net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(
        "torchvision_resnet50", stages, (64, 256, 512, 1024, 2048), strides=(4, 4, 8, 8, 8)
    )


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm that directly follows a conv into that conv, in place.

    Inference-only speed-up for frozen networks: ``bn(conv(x))`` becomes one conv with
    rescaled weights and a bias (equal up to float rounding); the BN is replaced by
    ``nn.Identity``, so the state dict changes: load weights BEFORE folding. Pairs are
    consecutive ``(Conv2d, BatchNorm2d)`` in a ``Sequential`` and ``convN``/``bnN``
    attribute pairs (ResNet blocks). Returns the number of folded pairs.
    """
    folded = 0
    for parent in list(module.modules()):
        pairs: list[tuple[str, str]] = []
        if isinstance(parent, nn.Sequential):
            names = [name for name, _ in parent.named_children()]
            pairs = list(zip(names[:-1], names[1:], strict=True))
        else:
            pairs = [(f"conv{i}", f"bn{i}") for i in range(1, 4)]
        for conv_name, bn_name in pairs:
            conv = getattr(parent, conv_name, None)
            bn = getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                if bn.training:
                    raise RuntimeError("fold_batchnorm: BatchNorm in training mode; call .eval()")
                setattr(parent, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                folded += 1
    return folded


BACKBONE_NAMES: tuple[str, ...] = get_args(BackboneName)


def build_backbone(name: str) -> Backbone:
    """Build backbone ``name`` (one of ``config.BackboneName``) with random weights."""
    if name == "resnet50":
        return deep_stem_resnet(name, (64, 64, 128), (64, 128, 256, 512), (3, 4, 6, 3))
    if name == "resnet101":
        return deep_stem_resnet(name, (64, 64, 128), (64, 128, 256, 512), (3, 4, 23, 3))
    if name == "vgg16_bn":
        return vgg16_bn_backbone()
    if name == "torchvision_resnet50":
        return torchvision_resnet50_backbone()
    if name == "tiny":
        # layer outputs 16 / 32 / 64 / 128 / 128 channels; about 0.1M parameters.
        return deep_stem_resnet(name, (16, 16, 16), (8, 16, 32, 32), (1, 1, 1, 1))
    raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONE_NAMES)}")
