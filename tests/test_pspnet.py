"""PSPNet base learner: head sizes (reference §5), feat5 / base-learner split, PPM maths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import randomise_batchnorm
from torch import nn

from hdmnet_core.model.pspnet import (
    PPM_BINS,
    PSPNet,
    PyramidPooling,
    conv_in_windows,
    conv_of_upsampled,
    region_boxes,
)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny() -> PSPNet:
    torch.manual_seed(0)
    model = PSPNet("tiny", num_classes=16)
    randomise_batchnorm(model)
    return model.eval()


def test_resnet50_head_parameter_counts_match_official() -> None:
    with torch.device("meta"):
        model = PSPNet("resnet50", num_classes=16)
    assert count(model.ppm) == 4_198_400
    assert count(model.classifier[0:2]) == 18_875_392
    assert count(model.classifier[2:5]) == 8_208
    # total frozen part of HDMNet = 50,875,542 - 4,161,734 trainable (reference §5)
    assert count(model) == 46_713_808
    assert model.feature_channels == 512
    assert model.channels["feat5"] == 512 and model.channels["layer4"] == 2048


def test_coco_base_learner_has_61_classes() -> None:
    with torch.device("meta"):
        model = PSPNet("resnet50", num_classes=61)
    assert count(model.classifier[2:5]) == 512 * 61 + 61


def test_vgg_head_sizes() -> None:
    with torch.device("meta"):
        model = PSPNet("vgg16_bn", num_classes=16)
    assert model.ppm.out_channels == 1024
    assert count(model.ppm) == 4 * (512 * 128 + 2 * 128)
    assert model.classifier[0].in_channels == 1024 and model.feature_channels == 512


def test_classifier_layout_is_official() -> None:
    with torch.device("meta"):
        model = PSPNet("resnet50", num_classes=16)
    conv, bn, relu, dropout, last = model.classifier
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4096, 512, (3, 3))
    assert conv.bias is None and conv.padding == (1, 1)
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert isinstance(dropout, nn.Dropout2d) and dropout.p == 0.1
    assert (last.in_channels, last.out_channels, last.kernel_size) == (512, 16, (1, 1))
    assert last.bias is not None


def test_tiny_pspnet_is_small_and_fast_sized() -> None:
    model = PSPNet("tiny", num_classes=16)
    assert 100_000 <= count(model) <= 500_000
    assert model.feature_channels == 64


@pytest.mark.parametrize(("height", "width"), [(96, 96), (97, 75), (33, 129)])
def test_forward_returns_logits_at_input_size(tiny: PSPNet, height: int, width: int) -> None:
    with torch.no_grad():
        logits = tiny(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 16, height, width)


def test_frozen_features_and_base_learner_reproduce_forward(tiny: PSPNet) -> None:
    image = torch.randn(2, 3, 96, 80)
    features = tiny.frozen_features(image)
    assert list(features) == ["layer0", "layer1", "layer2", "layer3", "layer4", "feat5"]
    assert features["feat5"].shape == (2, 64, 12, 10)
    assert features["layer2"].shape == (2, 64, 12, 10)
    # feat5 is conv + BN before the ReLU: it must have negative entries
    assert (features["feat5"] < 0).any()
    expected_feat5 = tiny.classifier[1](tiny.classifier[0](tiny.ppm(features["layer4"])))
    torch.testing.assert_close(features["feat5"], expected_feat5.detach())
    base = tiny.base_learner_logits(features["feat5"])
    assert base.shape == (2, 16, 12, 10)
    with torch.no_grad():
        full = tiny(image)
    upsampled = F.interpolate(base, size=(96, 80), mode="bilinear", align_corners=True)
    torch.testing.assert_close(upsampled, full)
    # base learner must not modify feat5 in place (its ReLU is not in-place)
    torch.testing.assert_close(features["feat5"], expected_feat5.detach())


def test_frozen_features_carry_no_gradient(tiny: PSPNet) -> None:
    assert any(p.requires_grad for p in tiny.parameters())
    features = tiny.frozen_features(torch.randn(1, 3, 48, 48))
    assert not any(v.requires_grad for v in features.values())


def test_freeze_stops_all_gradients() -> None:
    model = PSPNet("tiny", num_classes=5)
    assert model.freeze() is model
    assert not any(p.requires_grad for p in model.parameters())


def test_batched_frozen_features_equal_separate_calls(tiny: PSPNet) -> None:
    query = torch.randn(2, 3, 64, 64)
    supports = torch.randn(6, 3, 64, 64)
    batched = tiny.frozen_features_batched([query, supports])
    separate = [tiny.frozen_features(query), tiny.frozen_features(supports)]
    for got, want in zip(batched, separate, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)


def test_batched_frozen_features_refuse_batchnorm_in_training_mode() -> None:
    model = PSPNet("tiny", num_classes=5).train()
    assert model.uses_batch_statistics()
    with pytest.raises(RuntimeError, match="every BatchNorm in eval mode"):
        model.frozen_features_batched([torch.randn(1, 3, 32, 32)])
    for module in model.modules():  # HDMNet's fix_bn: module in training, BN in eval
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    assert model.training and not model.uses_batch_statistics()
    assert len(model.frozen_features_batched([torch.randn(1, 3, 32, 32)])) == 1


def test_channels_last_gives_same_numbers() -> None:
    torch.manual_seed(1)
    model = PSPNet("tiny", num_classes=7)
    randomise_batchnorm(model, seed=1)
    model.eval()
    image = torch.randn(2, 3, 64, 48)
    want = model.frozen_features(image)
    model.use_channels_last()
    got = model.frozen_features(image)
    for key in want:
        assert got[key].is_contiguous()
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    assert model.backbone.layer0[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_pyramid_pooling_matches_hand_computation() -> None:
    torch.manual_seed(2)
    ppm = PyramidPooling(8)
    randomise_batchnorm(ppm, seed=2)
    ppm.eval()
    x = torch.randn(2, 8, 7, 5)
    with torch.no_grad():
        out = ppm(x)
    assert out.shape == (2, 16, 7, 5)
    torch.testing.assert_close(out[:, :8], x)
    # bin 1: global mean -> 1x1 conv -> BN (eval affine) -> ReLU, broadcast everywhere
    branch = ppm.branches[0]
    conv, bn = branch[1], branch[2]
    pooled = x.mean(dim=(2, 3))  # (2, 8)
    y = pooled @ conv.weight.view(2, 8).T  # (2, 2)
    y = (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = y.clamp(min=0)[:, :, None, None].expand(2, 2, 7, 5)
    torch.testing.assert_close(out[:, 8:10], expected.detach())
    # bin 6 on a 7x5 map: corners of the upsampled map equal the pooled corners
    # (align_corners=True keeps the corner samples exactly)
    corner = ppm.branches[3](x)
    torch.testing.assert_close(out[:, 14:16, 0, 0], corner[:, :, 0, 0])
    torch.testing.assert_close(out[:, 14:16, -1, -1], corner[:, :, -1, -1])


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown backbone_name 'resnet18'"):
        PSPNet("resnet18", num_classes=16)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        PSPNet("tiny", num_classes=1)
    model = PSPNet("tiny", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"expected shape \(N, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model.frozen_features(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_feat5_region_is_exact_inside_the_box_and_zero_outside(tiny: PSPNet) -> None:
    images = torch.randn(4, 3, 64, 80)
    region = torch.zeros(4, 64, 80)
    region[0, 20:40, 30:50] = 1  # interior box
    region[1, 0:16, 60:80] = 1  # touches the top and right borders
    region[2] = 1  # everything
    # image 3: empty region
    full = tiny.frozen_features(images)["feat5"]  # (4, 64, 8, 10)
    got = tiny.frozen_features(images, feat5_region=region)["feat5"]
    grid = F.interpolate(region[:, None], size=(8, 10), mode="nearest")[:, 0] > 0
    for i in range(3):
        ys, xs = grid[i].nonzero(as_tuple=True)
        box = (
            slice(None),
            slice(int(ys.min()), int(ys.max()) + 1),
            slice(int(xs.min()), int(xs.max()) + 1),
        )
        torch.testing.assert_close(got[i][box], full[i][box], rtol=1e-4, atol=1e-5)
        outside = torch.ones(8, 10, dtype=torch.bool)
        outside[box[1:]] = False
        assert (got[i][:, outside] == 0).all()
    assert (got[3] == 0).all()
    torch.testing.assert_close(got[2], full[2], rtol=1e-4, atol=1e-5)


def test_batched_features_with_support_regions(tiny: PSPNet) -> None:
    query = torch.randn(1, 3, 64, 64)
    supports = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 64, 64)
    masks[0, 8:30, 8:30] = 1
    masks[1, 40:64, 0:20] = 1
    got_query, got_support = tiny.frozen_features_batched(
        [query, supports], feat5_regions=[None, masks]
    )
    want_query = tiny.frozen_features(query)
    want_support = tiny.frozen_features(supports, feat5_region=masks)
    for key in want_query:
        torch.testing.assert_close(got_query[key], want_query[key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got_support[key], want_support[key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="feat5 region must have its group's shape"):
        tiny.frozen_features_batched([query, supports], feat5_regions=[None, masks[:, :32]])


def test_fold_batchnorm_keeps_outputs_and_removes_every_batchnorm() -> None:
    torch.manual_seed(3)
    model = PSPNet("tiny", num_classes=6)
    randomise_batchnorm(model, seed=3)
    model.eval()
    image = torch.randn(2, 3, 64, 56)
    region = torch.zeros(2, 64, 56)
    region[:, 10:40, 5:30] = 1
    want = model.frozen_features(image)
    want_region = model.frozen_features(image, feat5_region=region)["feat5"]
    with torch.no_grad():
        want_logits = model(image)
    assert model.fold_batchnorm() is model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    got = model.frozen_features(image)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
    got_region = model.frozen_features(image, feat5_region=region)["feat5"]
    torch.testing.assert_close(got_region, want_region, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(model(image), want_logits, rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_refuses_training_mode() -> None:
    with pytest.raises(RuntimeError, match="training mode"):
        PSPNet("tiny", num_classes=3).train().fold_batchnorm()


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(("size", "kernel"), [((7, 5), 3), ((12, 12), 3), ((9, 11), 1)])
def test_conv_of_upsampled_equals_conv_of_the_upsampled_maps(
    align_corners: bool, size: tuple[int, int], kernel: int
) -> None:
    torch.manual_seed(4)
    pooled = [torch.randn(2, 3, b, b) for b in PPM_BINS]
    weight = torch.randn(5, 3 * len(PPM_BINS), kernel, kernel)
    padding = kernel // 2
    upsampled = torch.cat(
        [F.interpolate(p, size, mode="bilinear", align_corners=align_corners) for p in pooled], 1
    )
    want = F.conv2d(upsampled, weight, padding=padding)
    got = conv_of_upsampled(pooled, weight, size, padding, align_corners)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="the branches have 12 channels, the weight 13"):
        conv_of_upsampled(pooled, torch.randn(5, 13, kernel, kernel), size, padding, True)


def test_pooled_branch_conv_gives_the_official_feat5(tiny: PSPNet) -> None:
    images = torch.randn(3, 3, 72, 56)
    region = torch.zeros(3, 72, 56)
    region[0, 50:72, 40:56] = 1  # bottom-right corner: the window shifts back onto the map
    region[1, 5:20, 10:30] = 1
    fast = tiny.frozen_features(images)
    fast_region = tiny.frozen_features(images, feat5_region=region)["feat5"]
    tiny.pooled_branch_conv = False
    try:
        official = tiny.frozen_features(images)
        official_region = tiny.frozen_features(images, feat5_region=region)["feat5"]
    finally:
        tiny.pooled_branch_conv = True
    torch.testing.assert_close(fast["feat5"], official["feat5"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast_region, official_region, rtol=1e-4, atol=1e-5)
    assert (official_region[2] == 0).all()


def test_conv_in_windows_matches_the_full_conv_inside_every_box() -> None:
    torch.manual_seed(5)
    x = torch.randn(3, 4, 10, 9)
    weight, bias = torch.randn(6, 4, 3, 3), torch.randn(6)
    region = torch.zeros(3, 10, 9)
    region[0, 0:3, 0:2] = 1
    region[1, 6:10, 5:9] = 1
    region[2, 4, 4] = 1
    boxes = region_boxes(region, x)
    assert (boxes.height, boxes.width) == (4, 4)
    got = conv_in_windows(x, weight, bias, 1, boxes) * boxes.box_mask(x)
    want = F.conv2d(x, weight, bias, padding=1) * region[:, None]
    torch.testing.assert_close(got * region[:, None], want, rtol=1e-5, atol=1e-5)
    assert (got[region[:, None].expand_as(got) == 0] == 0).all()
