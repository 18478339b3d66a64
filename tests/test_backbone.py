"""Backbones: stage composition, parameter counts (reference §5), strides, dilation, VGG split."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from model_helpers import randomise_batchnorm
from torch import nn

from hdmnet_core.model.backbone import (
    BACKBONE_NAMES,
    LAYER_NAMES,
    Backbone,
    Bottleneck,
    build_backbone,
    fold_batchnorm,
)

# Official per-stage parameter counts of the deep-stem ResNet-50 (reference §5).
RESNET50_STAGE_PARAMS = {
    "layer0": 112_832,
    "layer1": 236_288,
    "layer2": 1_219_584,
    "layer3": 7_098_368,
    "layer4": 14_964_736,
}


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def on_meta(name: str) -> Backbone:
    """Build on the meta device: shapes without memory or compute."""
    with torch.device("meta"):
        return build_backbone(name)


def meta_shapes(name: str, height: int, width: int) -> dict[str, tuple[int, ...]]:
    backbone = on_meta(name)
    features = backbone(torch.empty(1, 3, height, width, device="meta"))
    return {k: tuple(v.shape) for k, v in features.items()}


def test_every_config_name_builds() -> None:
    assert set(BACKBONE_NAMES) == {
        "resnet50",
        "resnet101",
        "vgg16_bn",
        "tiny",
        "torchvision_resnet50",
    }
    for name in BACKBONE_NAMES:
        backbone = on_meta(name)
        assert backbone.name == name
        assert list(backbone.channels) == list(LAYER_NAMES)


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'"):
        build_backbone("resnet18")


def test_resnet50_stage_parameter_counts_match_official() -> None:
    backbone = on_meta("resnet50")
    assert {n: count(getattr(backbone, n)) for n in LAYER_NAMES} == RESNET50_STAGE_PARAMS


def test_resnet101_differs_only_by_17_extra_layer3_blocks() -> None:
    backbone = on_meta("resnet101")
    counts = {n: count(getattr(backbone, n)) for n in LAYER_NAMES}
    # one 1024 -> 256 -> 1024 bottleneck: three convs + three BNs (weight and bias)
    block = 1024 * 256 + 256 * 256 * 9 + 256 * 1024 + 2 * (256 + 256 + 1024)
    assert counts["layer3"] == RESNET50_STAGE_PARAMS["layer3"] + 17 * block
    assert len(backbone.layer3) == 23
    for name in ("layer0", "layer1", "layer2", "layer4"):
        assert counts[name] == RESNET50_STAGE_PARAMS[name]


def test_deep_stem_layer0_uses_official_indices() -> None:
    layer0 = on_meta("resnet50").layer0
    keys = [k for k in layer0.state_dict() if k.endswith("weight")]
    assert keys == [f"{i}.weight" for i in (0, 1, 3, 4, 6, 7)]
    convs = [layer0[i] for i in (0, 3, 6)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64), (64, 128)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert isinstance(layer0[9], nn.MaxPool2d)
    assert (layer0[9].kernel_size, layer0[9].stride) == (3, 2)


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "tiny"])
def test_dilation_is_on_every_3x3_conv_of_layer3_and_layer4(name: str) -> None:
    backbone = on_meta(name)
    for layer_name, dilation in (("layer3", 2), ("layer4", 4)):
        for block in getattr(backbone, layer_name):
            assert isinstance(block, Bottleneck)
            assert block.conv2.dilation == (dilation, dilation)
            assert block.conv2.padding == (dilation, dilation)
            assert block.conv2.stride == (1, 1)
            assert block.conv1.dilation == block.conv3.dilation == (1, 1)
        shortcut = getattr(backbone, layer_name)[0].downsample
        assert shortcut is not None or name == "tiny"  # tiny layer4 keeps its width
        if shortcut is not None:
            assert shortcut[0].stride == (1, 1)
    first_layer2 = backbone.layer2[0]
    assert first_layer2.conv2.stride == (2, 2) and first_layer2.conv1.stride == (1, 1)
    assert first_layer2.downsample[0].stride == (2, 2)
    for layer_name in ("layer1", "layer2"):
        assert all(b.conv2.dilation == (1, 1) for b in getattr(backbone, layer_name))


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("resnet50", 473, (119, 119, 60, 60, 60)),
        ("resnet50", 633, (159, 159, 80, 80, 80)),
        ("resnet101", 473, (119, 119, 60, 60, 60)),
        ("torchvision_resnet50", 473, (119, 119, 60, 60, 60)),
        ("vgg16_bn", 473, (237, 119, 60, 30, 30)),
        ("vgg16_bn", 633, (317, 159, 80, 40, 40)),
        ("tiny", 96, (24, 24, 12, 12, 12)),
    ],
)
def test_feature_map_sizes(name: str, size: int, expected: tuple[int, ...]) -> None:
    shapes = meta_shapes(name, size, size)
    backbone = on_meta(name)
    for layer_name, side in zip(LAYER_NAMES, expected, strict=True):
        assert shapes[layer_name] == (1, backbone.channels[layer_name], side, side)


@pytest.mark.parametrize("name", ["resnet50", "tiny", "torchvision_resnet50", "vgg16_bn"])
def test_odd_non_square_sizes_follow_the_ceil_rule(name: str) -> None:
    height, width = 101, 77
    shapes = meta_shapes(name, height, width)
    strides = on_meta(name).strides
    for layer_name in LAYER_NAMES:
        s = strides[layer_name]
        assert shapes[layer_name][-2:] == (math.ceil(height / s), math.ceil(width / s))


def test_forward_runs_stages_in_sequence_on_real_numbers() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("tiny").eval()
    image = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        features = backbone(image)
        x = image
        for name in LAYER_NAMES:
            x = getattr(backbone, name)(x)
            assert torch.equal(features[name], x)
    assert features["layer4"].shape == (2, 128, 5, 7)


def test_tiny_backbone_is_small() -> None:
    params = count(build_backbone("tiny"))
    assert 30_000 < params < 200_000


def test_vgg_split_matches_torchvision_features_layout() -> None:
    """Stage i, local index j == torchvision ``features[start_i + j]`` (same key, shape)."""
    ours = on_meta("vgg16_bn")
    with torch.device("meta"):
        reference = torchvision.models.vgg16_bn(weights=None).features
    reference_shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    starts = {"layer0": 0, "layer1": 7, "layer2": 14, "layer3": 24, "layer4": 34}
    ours_shapes = {}
    for layer_name, start in starts.items():
        for key, value in getattr(ours, layer_name).state_dict().items():
            index, _, rest = key.partition(".")
            ours_shapes[f"{start + int(index)}.{rest}"] = tuple(value.shape)
    assert ours_shapes == reference_shapes
    assert [len(getattr(ours, n)) for n in LAYER_NAMES] == [7, 7, 10, 10, 9]
    # pools end layer0..layer3 (ceil_mode as official BAM); layer4 has no pool
    for layer_name in LAYER_NAMES[:4]:
        pool = getattr(ours, layer_name)[-1]
        assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode
    assert not any(isinstance(m, nn.MaxPool2d) for m in ours.layer4)
    assert ours.channels == {
        "layer0": 64,
        "layer1": 128,
        "layer2": 256,
        "layer3": 512,
        "layer4": 512,
    }


def test_torchvision_resnet50_keys_match_torchvision_without_fc() -> None:
    ours = on_meta("torchvision_resnet50")
    with torch.device("meta"):
        reference = torchvision.models.resnet50(weights=None)
    expected = {
        k.replace("conv1.", "layer0.0.", 1).replace("bn1.", "layer0.1.", 1)
        if k.startswith(("conv1.", "bn1.")) else k: tuple(v.shape)
        for k, v in reference.state_dict().items()
        if not k.startswith("fc.")
    }  # fmt: skip
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    assert ours.layer0[0].kernel_size == (7, 7)
    # torchvision's rule: the first block of a dilated stage keeps the previous dilation
    assert ours.layer3[0].conv2.dilation == (1, 1) and ours.layer3[1].conv2.dilation == (2, 2)
    assert ours.layer4[0].conv2.dilation == (2, 2) and ours.layer4[1].conv2.dilation == (4, 4)


@pytest.mark.parametrize(
    ("name", "pairs"),
    [("resnet50", 55), ("vgg16_bn", 13), ("torchvision_resnet50", 53), ("tiny", 18)],
)
def test_fold_batchnorm_folds_every_conv_bn_pair(name: str, pairs: int) -> None:
    backbone = on_meta(name).eval()
    assert fold_batchnorm(backbone) == pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_fold_batchnorm_keeps_backbone_outputs() -> None:
    torch.manual_seed(4)
    backbone = build_backbone("tiny").eval()
    randomise_batchnorm(backbone, seed=4)
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        want = backbone(image)
        fold_batchnorm(backbone)
        got = backbone(image)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
