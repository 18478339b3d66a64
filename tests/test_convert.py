"""Checkpoint conversion: official layouts (written here from the official code, reference
§5-§6, independently of our modules) -> workspace, reports by name, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from hdmnet_core.cli import main as cli_main
from hdmnet_core.config import ModelConfig
from hdmnet_core.model.convert import (
    ConversionError,
    convert_state_dict,
    export_official,
    load_weights_into,
    read_weights_file,
)
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.pspnet import PSPNet

Shape = tuple[int, ...]

# ------------------------------------------------------------ official key -> shape table
RESNET50 = {"stem": (64, 64, 128), "planes": (64, 128, 256, 512), "blocks": (3, 4, 6, 3)}
RESNET101 = {"stem": (64, 64, 128), "planes": (64, 128, 256, 512), "blocks": (3, 4, 23, 3)}
TINY = {"stem": (16, 16, 16), "planes": (8, 16, 32, 32), "blocks": (1, 1, 1, 1)}


def bn(prefix: str, n: int) -> dict[str, Shape]:
    return {
        f"{prefix}weight": (n,),
        f"{prefix}bias": (n,),
        f"{prefix}running_mean": (n,),
        f"{prefix}running_var": (n,),
        f"{prefix}num_batches_tracked": (),
    }


def ln(prefix: str, n: int) -> dict[str, Shape]:
    return {f"{prefix}weight": (n,), f"{prefix}bias": (n,)}


def semseg_resnet(spec: dict, stem_names: bool) -> dict[str, Shape]:
    """semseg ``resnet.py`` (deep base). ``stem_names``: ImageNet file keys conv1/bn1/...;
    otherwise the PSPNet ``layer0.{0,1,3,4,6,7}`` keys."""
    c1, c2, c3 = spec["stem"]
    names = ("conv1.", "bn1.", "conv2.", "bn2.", "conv3.", "bn3.")
    if not stem_names:
        names = tuple(f"layer0.{i}." for i in (0, 1, 3, 4, 6, 7))
    out: dict[str, Shape] = {f"{names[0]}weight": (c1, 3, 3, 3), **bn(names[1], c1)}
    out |= {f"{names[2]}weight": (c2, c1, 3, 3), **bn(names[3], c2)}
    out |= {f"{names[4]}weight": (c3, c2, 3, 3), **bn(names[5], c3)}
    inplanes = c3
    for layer, (planes, blocks) in enumerate(
        zip(spec["planes"], spec["blocks"], strict=True), start=1
    ):
        for b in range(blocks):
            p = f"layer{layer}.{b}."
            out[p + "conv1.weight"] = (planes, inplanes, 1, 1)
            out |= bn(p + "bn1.", planes)
            out[p + "conv2.weight"] = (planes, planes, 3, 3)
            out |= bn(p + "bn2.", planes)
            out[p + "conv3.weight"] = (planes * 4, planes, 1, 1)
            out |= bn(p + "bn3.", planes * 4)
            if b == 0 and (layer == 2 or inplanes != planes * 4):
                out[p + "downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                out |= bn(p + "downsample.1.", planes * 4)
            inplanes = planes * 4
    return out


def bam_pspnet(spec: dict, classes: int, hidden: int = 512) -> dict[str, Shape]:
    """BAM ``PSPNet.OneModel`` state dict."""
    out = semseg_resnet(spec, stem_names=False)
    top = spec["planes"][3] * 4
    for i in range(4):
        out[f"ppm.features.{i}.1.weight"] = (top // 4, top, 1, 1)
        out |= bn(f"ppm.features.{i}.2.", top // 4)
    out["cls.0.weight"] = (hidden, 2 * top, 3, 3)
    out |= bn("cls.1.", hidden)
    out["cls.4.weight"] = (classes, hidden, 1, 1)
    out["cls.4.bias"] = (classes,)
    return out


def encoder_layer(prefix: str, w: int, sr: int) -> dict[str, Shape]:
    out = {**ln(prefix + "norm1.", w), **ln(prefix + "norm2.", w)}
    for name in "qkvo":
        out[f"{prefix}attn.attn.linear_{name}.weight"] = (w, w)
    if sr > 1:
        out[prefix + "attn.sr.weight"] = (w, w, sr, sr)
        out[prefix + "attn.sr.bias"] = (w,)
        out |= ln(prefix + "attn.norm.", w)
    out[prefix + "ffn.layers.0.weight"] = (4 * w, w, 1, 1)
    out[prefix + "ffn.layers.0.bias"] = (4 * w,)
    out[prefix + "ffn.layers.1.weight"] = (4 * w, 1, 3, 3)
    out[prefix + "ffn.layers.1.bias"] = (4 * w,)
    out[prefix + "ffn.layers.4.weight"] = (w, 4 * w, 1, 1)
    out[prefix + "ffn.layers.4.bias"] = (w,)
    return out


def official_hdmnet(
    spec: dict, classes: int, shots: int, w: int = 64, stages: int = 3, hidden: int = 512
) -> dict[str, Shape]:
    """Official ``HDMNet.OneModel`` state dict (``Transformer.py``, ``HDMNet.py``)."""
    out = bam_pspnet(spec, classes, hidden)
    out["base_learnear.2.weight"] = out.pop("cls.4.weight")
    out["base_learnear.2.bias"] = out.pop("cls.4.bias")
    mid = spec["planes"][2] * 4 + spec["planes"][1] * 4  # layer3 + layer2 channels
    out["down_query.0.weight"] = (4 * w, mid, 1, 1)
    out["down_supp.0.weight"] = (4 * w, mid, 1, 1)
    out["query_merge.0.weight"] = (w, 8 * w + 2, 1, 1)
    out["supp_merge.0.weight"] = (w, 8 * w, 1, 1)
    out["gram_merge.weight"] = (1, 2, 1, 1)
    out["cls_merge.weight"] = (1, 2, 1, 1)
    if shots > 1:
        out |= {"kshot_rw.0.weight": (2, shots, 1, 1), "kshot_rw.0.bias": (2,)}
        out |= {"kshot_rw.2.weight": (shots, 2, 1, 1), "kshot_rw.2.bias": (shots,)}
    mix = "transformer.mix_transformer."
    kernels, sr_ratios = (1, 3, 3, 3), (4, 2, 1, 1)
    for i in range(stages):
        p = f"{mix}down_sample_layers.{i}."
        k = kernels[i]
        out[p + "0.projection.weight"] = (w, w, k, k)
        out[p + "0.projection.bias"] = (w,)
        out |= ln(p + "0.norm.", w)
        out |= encoder_layer(p + "1.", w, sr_ratios[i])
        out |= encoder_layer(p + "2.", w, sr_ratios[i])
        out |= ln(p + "3.", w)
        m = f"{mix}match_layers.{i}."
        out |= encoder_layer(m + "0.", w, 1)
        out[m + "1.conv.weight"] = (w, w + 2, 3, 3)
        out |= bn(m + "1.bn.", w)
        q = f"{mix}parse_layers.{i}."
        out |= {q + "0.weight": (4 * w, w, 1, 1), q + "0.bias": (4 * w,), **bn(q + "1.", 4 * w)}
        out |= {q + "2.weight": (4 * w, 4 * w, 3, 3), q + "2.bias": (4 * w,)}
        out |= {**bn(q + "3.", 4 * w), q + "4.weight": (w, 4 * w, 1, 1), q + "4.bias": (w,)}
        out |= bn(q + "5.", w)
    c = f"{mix}cls."
    out |= {c + "0.weight": (4 * w, w, 1, 1), c + "0.bias": (4 * w,), **bn(c + "1.", 4 * w)}
    out |= {c + "2.weight": (4 * w, 4 * w, 3, 3), c + "2.bias": (4 * w,), **bn(c + "3.", 4 * w)}
    out |= {c + "4.weight": (2, 4 * w, 1, 1), c + "4.bias": (2,)}
    return out


def is_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def meta_tensors(shapes: dict[str, Shape]) -> dict[str, torch.Tensor]:
    """Shapes only (no memory): enough to check names and sizes of big models."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def random_tensors(shapes: dict[str, Shape], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.randint(0, 1000, shape, generator=g)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


# ------------------------------------------------------------------ the table itself
def test_official_table_matches_reference_counts() -> None:
    one = official_hdmnet(RESNET50, classes=16, shots=1)
    params = [k for k in one if not is_buffer(k)]
    assert (len(one), len(params), len(one) - len(params)) == (625, 403, 222)
    assert sum(torch.Size(one[k]).numel() for k in params) == 50_875_542
    assert len(official_hdmnet(RESNET50, classes=16, shots=5)) == 629
    coco = official_hdmnet(RESNET50, classes=61, shots=1)
    assert sum(torch.Size(coco[k]).numel() for k in coco if not is_buffer(k)) == 50_898_627


# ----------------------------------------------------------------------------- HDMNet
@pytest.mark.parametrize("shots", [1, 5])
def test_official_hdmnet_fits_our_model_exactly(shots: int) -> None:
    state = meta_tensors(official_hdmnet(RESNET50, classes=16, shots=shots))
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}
    conversion = convert_state_dict(wrapped, where="official.pth")
    assert conversion.kind == "hdmnet"
    assert conversion.report.ok and not conversion.report.dropped
    arch = conversion.arch
    assert (arch.backbone, arch.num_classes, arch.shots, arch.num_stages, arch.width) == (
        "resnet50",
        16,
        shots,
        3,
        64,
    )
    converted = conversion.weights["state_dict"]
    assert len(converted) == len(state)
    assert tuple(converted["pspnet.classifier.4.weight"].shape) == (16, 512, 1, 1)
    assert "matching.2.cross_layer.attention.q_proj.weight" in converted


def vgg_official_backbone() -> dict[str, Shape]:
    """Official ``get_vgg16_layer``: layer i = vgg16_bn.features[start_i:stop_i]."""
    with torch.device("meta"):
        features = torchvision.models.vgg16_bn(weights=None).features.state_dict()
    splits = ((0, 7), (7, 14), (14, 24), (24, 34), (34, 43))
    out: dict[str, Shape] = {}
    for key, value in features.items():
        index, _, rest = key.partition(".")
        layer = next(i for i, (a, b) in enumerate(splits) if a <= int(index) < b)
        out[f"layer{layer}.{int(index) - splits[layer][0]}.{rest}"] = tuple(value.shape)
    return out


def test_official_vgg_hdmnet_fits_our_model() -> None:
    shapes = official_hdmnet(RESNET50, classes=16, shots=1)
    shapes = {k: v for k, v in shapes.items() if not k.startswith(("layer", "ppm.", "cls."))}
    shapes |= vgg_official_backbone()
    for i in range(4):  # PPM on 512 channels: 4 x (512 -> 128)
        shapes[f"ppm.features.{i}.1.weight"] = (128, 512, 1, 1)
        shapes |= bn(f"ppm.features.{i}.2.", 128)
    shapes["cls.0.weight"] = (512, 1024, 3, 3)
    shapes |= bn("cls.1.", 512)
    shapes["down_query.0.weight"] = (256, 768, 1, 1)  # fea_dim 512 + 256
    shapes["down_supp.0.weight"] = (256, 768, 1, 1)
    conversion = convert_state_dict(meta_tensors(shapes))
    assert conversion.arch.backbone == "vgg16_bn"
    assert conversion.report.ok, conversion.report.lines()


def test_coco_and_resnet101_are_detected() -> None:
    coco = convert_state_dict(meta_tensors(official_hdmnet(RESNET50, classes=61, shots=1)))
    assert coco.arch.num_classes == 61
    r101 = convert_state_dict(meta_tensors(official_hdmnet(RESNET101, classes=16, shots=1)))
    assert r101.arch.backbone == "resnet101" and r101.report.ok


def tiny_hdmnet(shots: int, seed: int) -> HDMNet:
    torch.manual_seed(seed)
    config = ModelConfig(backbone="tiny", width=16, num_stages=3)
    return HDMNet(config, num_base_classes=15, shots=shots).eval()


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter and BN statistic (init values are too regular)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.rand(tensor.shape, generator=g) + 0.5
            if not name.endswith("running_var"):
                noise = (noise - 1.0) * 0.2
            tensor.copy_(noise)


def tiny_official(shots: int) -> dict[str, torch.Tensor]:
    shapes = official_hdmnet(TINY, classes=16, shots=shots, w=16, hidden=64)
    return random_tensors(shapes, seed=shots)


@pytest.mark.parametrize("shots", [1, 2])
def test_official_to_ours_to_official_gives_identical_tensors(shots: int) -> None:
    official = tiny_official(shots)
    conversion = convert_state_dict(official)
    assert conversion.report.ok
    back = export_official(conversion.weights)["state_dict"]
    assert back.keys() == official.keys()
    for key, value in official.items():
        assert torch.equal(back[key], value), key


def test_model_loaded_from_converted_official_state_gives_identical_outputs() -> None:
    source = tiny_hdmnet(shots=2, seed=0)
    randomise(source, seed=1)
    exported = export_official({"target": "hdmnet", "state_dict": source.state_dict()})
    official = {k: v.clone() for k, v in exported["state_dict"].items()}
    conversion = convert_state_dict({"state_dict": official})
    target = tiny_hdmnet(shots=2, seed=5)
    load_weights_into(target, conversion.weights["state_dict"])
    g = torch.Generator().manual_seed(2)
    query = torch.randn(1, 3, 64, 64, generator=g)
    supports = torch.randn(1, 2, 3, 64, 64, generator=g)
    masks = (torch.rand(1, 2, 64, 64, generator=g) > 0.5).long()
    with torch.no_grad():
        want = source(query, supports, masks)
        got = target(query, supports, masks)
        fresh = tiny_hdmnet(shots=2, seed=5)(query, supports, masks)
    assert torch.equal(got.final_logits, want.final_logits)
    assert torch.equal(got.meta_logits, want.meta_logits)
    assert torch.equal(got.base_logits, want.base_logits)
    assert not torch.allclose(fresh.final_logits, want.final_logits)


def test_shots_option_must_agree_with_the_checkpoint() -> None:
    with pytest.raises(ConversionError, match="--shots 5 but .* for 2"):
        convert_state_dict(tiny_official(2), shots=5, where="x.pth")


# ----------------------------------------------------------------------------- PSPNet
def test_bam_pspnet_checkpoint_fits_pspnet() -> None:
    state = meta_tensors(bam_pspnet(RESNET50, classes=16))
    conversion = convert_state_dict({"state_dict": state})
    assert conversion.kind == "pspnet" and conversion.report.ok
    assert conversion.weights["target"] == "pspnet"
    assert "ppm.branches.3.1.weight" in conversion.weights["state_dict"]


def test_pspnet_round_trip_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = PSPNet("tiny", num_classes=16).eval()
    randomise(model, seed=3)
    official = export_official({"target": "pspnet", "state_dict": model.state_dict()})
    assert set(official["state_dict"]) == set(bam_pspnet(TINY, 16, hidden=64))
    conversion = convert_state_dict(official)
    other = PSPNet("tiny", num_classes=16).eval()
    load_weights_into(other, conversion.weights["state_dict"])
    image = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(other(image), model(image))


# -------------------------------------------------------------------------- backbones
def test_semseg_imagenet_resnet_fits_deep_stem_backbone_and_drops_fc() -> None:
    shapes = semseg_resnet(RESNET101, stem_names=True)
    shapes |= {"fc.weight": (1000, 2048), "fc.bias": (1000,)}
    conversion = convert_state_dict(meta_tensors(shapes))
    assert conversion.kind == "semseg-resnet" and conversion.report.ok
    assert (conversion.arch.target, conversion.arch.backbone) == ("backbone", "resnet101")
    assert conversion.report.dropped == ["fc.weight", "fc.bias"]
    assert "layer0.7.running_var" in conversion.weights["state_dict"]


def test_torchvision_resnet50_and_vgg16_bn_fit_their_backbones() -> None:
    with torch.device("meta"):
        resnet = torchvision.models.resnet50(weights=None).state_dict()
        vgg = torchvision.models.vgg16_bn(weights=None).state_dict()
    r = convert_state_dict(resnet)
    assert (r.kind, r.arch.backbone, r.report.ok) == (
        "torchvision-resnet",
        "torchvision_resnet50",
        True,
    )
    v = convert_state_dict(vgg)
    assert (v.kind, v.arch.backbone, v.report.ok) == ("torchvision-vgg", "vgg16_bn", True)
    assert "layer4.8.running_mean" not in v.weights["state_dict"]  # 34..42: 3 conv-bn-relu
    assert "layer4.7.running_mean" in v.weights["state_dict"]  # features.41 = last BN
    assert all(k.startswith("classifier.") for k in v.report.dropped)


# --------------------------------------------------------------------- refusals, files
def test_missing_unexpected_and_mismatched_keys_are_named() -> None:
    state = tiny_official(1)
    del state["down_query.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["supp_merge.0.weight"] = torch.zeros(16, 99, 1, 1)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, where="bad.pth")
    message = str(info.value)
    assert "bad.pth" in message
    assert "query_reduce.0.weight" in message  # missing, by our name
    assert "extra.weight" in message  # unexpected, no rule
    assert "support_merge.0.weight: checkpoint (16, 99, 1, 1) vs model (16, 128, 1, 1)" in message
    partial = convert_state_dict(state, allow_partial=True)
    written = partial.weights["state_dict"]
    assert "support_merge.0.weight" not in written and "extra.weight" not in written
    assert partial.report.missing == ["query_reduce.0.weight"]


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    rc = cli_main(["convert-checkpoint", str(garbage), str(tmp_path / "out.pth")])
    assert rc == 2
    from hdmnet_core.model.convert import load_file, unwrap_state_dict

    with pytest.raises(ConversionError, match="garbage.pth: not a readable PyTorch checkpoint"):
        load_file(garbage)
    with pytest.raises(ConversionError, match="nothing.pth: no such file"):
        load_file(tmp_path / "nothing.pth")
    with pytest.raises(ConversionError, match="list.pth: does not hold a state dict"):
        unwrap_state_dict([1, 2], "list.pth")
    with pytest.raises(ConversionError, match="cannot recognise"):
        convert_state_dict({"foo.weight": torch.zeros(1)}, where="foo.pth")
    assert not (tmp_path / "out.pth").exists()


def test_cli_converts_and_exports_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    official = tiny_official(1)
    src = tmp_path / "official.pth"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in official.items()}}, src)
    ours = tmp_path / "ours.pth"
    assert cli_main(["convert-checkpoint", str(src), str(ours)]) == 0
    assert "hdmnet -> hdmnet (backbone tiny, classes 16, shots 1)" in capsys.readouterr().out
    weights = read_weights_file(ours)
    assert weights["target"] == "hdmnet" and weights["backbone"] == "tiny"
    back = tmp_path / "back.pth"
    assert cli_main(["convert-checkpoint", str(ours), str(back), "--to-official"]) == 0
    exported = torch.load(back, weights_only=True)["state_dict"]
    assert exported.keys() == official.keys()
    assert all(torch.equal(exported[k], official[k]) for k in official)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pth", "official.pth", "ours.pth"]
    with pytest.raises(ConversionError, match="not a workspace weights file"):
        read_weights_file(src)
