"""Tests of the top-level HDMNet: sizes, shapes, losses, options, errors, determinism."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from hdmnet_core.config import ModelConfig
from hdmnet_core.model.hdmnet import DEFAULT_SPEEDUPS, EXACT_SPEEDUPS, HDMNet, HDMNetOutput

TINY = ModelConfig(backbone="tiny", width=16)


def episode(
    batch: int, shots: int, size: tuple[int, int] = (32, 32), seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = size
    masks = torch.zeros(batch, shots, h, w, dtype=torch.long)
    masks[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    masks[..., :2, :] = 255
    query_mask = torch.zeros(batch, h, w, dtype=torch.long)
    query_mask[:, h // 3 :, : w // 2] = 1
    return {
        "query_image": torch.randn(batch, 3, h, w, generator=g),
        "support_images": torch.randn(batch, shots, 3, h, w, generator=g),
        "support_masks": masks,
        "query_mask": query_mask,
        "query_base_label": torch.randint(0, 16, (batch, h, w), generator=g),
        "base_channel": torch.arange(batch) % 16,
    }


def inputs(ep: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return ep["query_image"], ep["support_images"], ep["support_masks"]


def tiny_model(shots: int = 1, seed: int = 0, **options: Any) -> HDMNet:
    torch.manual_seed(seed)
    return HDMNet(dataclasses.replace(TINY, **options), num_base_classes=15, shots=shots)


# ------------------------------------------------------------- official sizes
def resnet50_on_meta_device(num_base_classes: int = 15, shots: int = 1) -> HDMNet:
    """The full-size model without memory or initialisation cost (enough for counting)."""
    with torch.device("meta"):
        return HDMNet(ModelConfig(), num_base_classes=num_base_classes, shots=shots)


@pytest.fixture(scope="module")
def resnet50_one_shot() -> HDMNet:
    return resnet50_on_meta_device()


def test_official_parameter_counts(resnet50_one_shot: HDMNet) -> None:
    counts = resnet50_one_shot.parameter_counts()  # reference §5
    assert counts["total"] == 50_875_542
    assert counts["trainable"] == 4_161_734
    assert counts["hierarchy"] + counts["matching"] + counts["decoder"] == 3_309_634
    assert counts["query_reduce"] == counts["support_reduce"] == 393_216
    assert (counts["query_merge"], counts["support_merge"], counts["ensemble"]) == (
        32_896,
        32_768,
        4,
    )
    state = resnet50_one_shot.state_dict()
    assert len(state) == 625
    assert sum(1 for _ in resnet50_one_shot.parameters()) == 403


def test_official_parameter_counts_five_shot_and_coco() -> None:
    five = resnet50_on_meta_device(shots=5)
    assert five.parameter_counts()["total"] == 50_875_542 + 27
    assert len(five.state_dict()) == 629
    coco = resnet50_on_meta_device(num_base_classes=60)
    assert coco.parameter_counts()["total"] == 50_898_627


def test_parameter_groups(resnet50_one_shot: HDMNet) -> None:
    groups = resnet50_one_shot.trainable_parameter_groups(lr=1e-4, multiplier=10.0)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-3)]
    sizes = [sum(p.numel() for p in g["params"]) for g in groups]
    assert sizes == [3_309_634, 4_161_734 - 3_309_634]
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert not any(p.requires_grad for p in resnet50_one_shot.pspnet.parameters())


def test_kshot_mlp_is_only_optimised_when_fixed() -> None:
    official = tiny_model(shots=3)
    fixed = tiny_model(shots=3, kshot_weighting="fixed")
    for model, expected in ((official, False), (fixed, True)):
        assert model.ensemble is not None and model.ensemble.shot_weighting is not None
        grouped = {id(p) for g in model.trainable_parameter_groups(1.0, 10.0) for p in g["params"]}
        mlp = list(model.ensemble.shot_weighting.parameters())
        assert all((id(p) in grouped) == expected for p in mlp)


# -------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", [(473, 473), (633, 633), (97, 75)])
def test_output_shapes(size: tuple[int, int]) -> None:
    model = tiny_model().eval()
    ep = episode(1, 1, size)
    if size[0] > 600:  # keep the test fast: supports may have their own (smaller) size
        ep["support_images"], ep["support_masks"] = inputs(episode(1, 1, (96, 80)))[1:]
    with torch.inference_mode():
        out = model(*inputs(ep))
    assert isinstance(out, HDMNetOutput)
    assert out.final_logits.shape == (1, 2, *size)
    assert out.meta_logits.shape == (1, 2, *size)
    assert out.base_logits.shape == (1, 16, *size)
    h, w = (-(-size[0] // 8), -(-size[1] // 8))  # output stride 8 (ceil)
    expected = [(h, w)]
    for _ in range(2):
        expected.append((-(-expected[-1][0] // 2), -(-expected[-1][1] // 2)))
    assert [tuple(m.shape) for m in out.distill_maps] == [(1, *s) for s in expected[::-1]]
    assert out.losses is None


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4])
def test_number_of_stages(num_stages: int) -> None:
    model = tiny_model(num_stages=num_stages).eval()
    with torch.no_grad():
        out = model(*inputs(episode(2, 1)))
    assert len(out.distill_maps) == num_stages
    sides = [m.shape[-1] for m in out.distill_maps]
    assert sides == sorted(sides) and sides[-1] == 4  # coarse -> fine, finest = 32 / 8
    assert out.final_logits.shape == (2, 2, 32, 32)


def test_five_shot_training_step_losses_and_gradients() -> None:
    model = tiny_model(shots=5).train()
    ep = episode(2, 5, (64, 64))  # stage 1 keeps 4 keys after its 2x2 reduction
    out = model(**ep)
    assert out.losses is not None
    assert set(out.losses) == {"final_ce", "meta_ce", "distill", "base_ce", "total"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.losses["total"].backward()
    for name, p in model.named_parameters():
        if name.startswith("pspnet."):
            assert p.grad is None, name
        elif name.startswith("ensemble.shot_weighting"):
            continue  # official: weights of sorted values reach the loss, but not optimised
        else:
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


# ------------------------------------------------------------------- options
def test_ensemble_flag() -> None:
    ep = episode(2, 1)
    with_ensemble = tiny_model().eval()
    without = tiny_model(ensemble=False).eval()
    assert without.ensemble is None
    without.load_state_dict(with_ensemble.state_dict(), strict=False)
    with torch.no_grad():
        a, b = with_ensemble(**ep), without(**ep)
    torch.testing.assert_close(a.meta_logits, b.meta_logits)
    torch.testing.assert_close(b.final_logits, b.meta_logits)
    assert not torch.allclose(a.final_logits, a.meta_logits)
    assert a.losses is not None and b.losses is not None
    torch.testing.assert_close(b.losses["total"], b.losses["meta_ce"] + b.losses["distill"])


def test_distillation_flag_changes_total_only() -> None:
    ep = episode(2, 1)
    on, off = tiny_model().eval(), tiny_model(distillation=False).eval()
    with torch.no_grad():
        a, b = on(**ep), off(**ep)
    assert a.losses is not None and b.losses is not None
    torch.testing.assert_close(a.final_logits, b.final_logits)
    torch.testing.assert_close(b.losses["total"], b.losses["final_ce"] + b.losses["meta_ce"])
    torch.testing.assert_close(a.losses["total"], b.losses["total"] + a.losses["distill"])


@pytest.mark.parametrize(
    "option", [{"matching": "dot"}, {"matching_temperature": 0.5}, {"distill_temperature": 4.0}]
)
def test_matching_and_temperature_flags(option: dict[str, Any]) -> None:
    ep = episode(2, 1)
    base, changed = tiny_model().eval(), tiny_model(**option).eval()
    changed.load_state_dict(base.state_dict())
    with torch.no_grad():
        a, b = base(**ep), changed(**ep)
    assert a.losses is not None and b.losses is not None
    if "distill_temperature" in option:
        torch.testing.assert_close(a.final_logits, b.final_logits)
        assert not torch.isclose(a.losses["distill"], b.losses["distill"])
    else:
        assert not torch.allclose(a.final_logits, b.final_logits)


def test_kshot_weighting_flag_changes_final_output() -> None:
    ep = episode(1, 3)
    ep["support_images"][0, 1] = ep["query_image"][0]  # make the shots' differences unsorted
    official, fixed = tiny_model(shots=3).eval(), tiny_model(shots=3, kshot_weighting="fixed")
    with torch.no_grad():  # let the scene difference reach the output (init weight is 0)
        official.ensemble.scene_merge.weight.fill_(1.0)  # type: ignore[union-attr]
    fixed.load_state_dict(official.state_dict())
    with torch.no_grad():
        a, b = official(*inputs(ep)), fixed.eval()(*inputs(ep))
    torch.testing.assert_close(a.meta_logits, b.meta_logits)
    assert not torch.allclose(a.final_logits, b.final_logits)


def test_fix_bn_keeps_every_batchnorm_in_eval_mode() -> None:
    for fix_bn in (True, False):
        model = tiny_model(fix_bn=fix_bn)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and all(m.training != fix_bn for m in norms)  # from construction on
        model.eval().train()
        assert all(m.training != fix_bn for m in norms)
        assert model.training and model.query_reduce.training and model.hierarchy.training
        model.eval()
        assert not any(m.training for m in model.modules())


def test_base_channel_excluded_only_in_training() -> None:
    model = tiny_model()
    with torch.no_grad():
        ep = episode(2, 1)
        ep["base_channel"] = torch.tensor([0, 0])
        model.ensemble.base_merge.weight.fill_(0.5)  # type: ignore[union-attr]
        results = {}
        for mode in ("train", "eval"):
            model.train(mode == "train")
            for channel in (0, 5):
                torch.manual_seed(1)  # same dropout masks
                ep["base_channel"] = torch.tensor([channel, channel])
                results[mode, channel] = model(**ep).final_logits
    assert not torch.allclose(results["train", 0], results["train", 5])
    torch.testing.assert_close(results["eval", 0], results["eval", 5])


def test_identical_shots_match_one_shot_distillation_maps() -> None:
    """K copies of one support: priors, prototype, scene difference and distillation maps
    equal the 1-shot ones; the final output differs (attention sums K equal columns)."""
    one, five = tiny_model(shots=1).eval(), tiny_model(shots=5).eval()
    five.load_state_dict(one.state_dict(), strict=False)
    ep1 = episode(1, 1)
    ep5 = dict(ep1)
    ep5["support_images"] = ep1["support_images"].repeat(1, 5, 1, 1, 1)
    ep5["support_masks"] = ep1["support_masks"].repeat(1, 5, 1, 1)
    with torch.no_grad():
        a, b = one(*inputs(ep1)), five(*inputs(ep5))
    for x, y in zip(a.distill_maps, b.distill_maps, strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a.meta_logits, b.meta_logits)


# ------------------------------------------------------- runtime behaviour
def test_eval_is_deterministic() -> None:
    model = tiny_model(shots=2).eval()
    ep = episode(2, 2)
    with torch.no_grad():
        a, b = model(*inputs(ep)), model(*inputs(ep))
    torch.testing.assert_close(a.final_logits, b.final_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.distill_maps[0], b.distill_maps[0], rtol=0, atol=0)


def test_bf16_fp16_autocast_and_channels_last() -> None:
    model = tiny_model().eval()
    ep = episode(1, 1)
    with torch.no_grad():
        reference = model(*inputs(ep)).final_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(*inputs(ep)).final_logits
        with torch.autocast("cpu", dtype=torch.float16):
            half = model(*inputs(ep)).final_logits
        model = model.to(memory_format=torch.channels_last)
        query = ep["query_image"].contiguous(memory_format=torch.channels_last)
        last = model(query, ep["support_images"], ep["support_masks"]).final_logits
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0.05)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), reference, atol=0.01, rtol=0.01)
    torch.testing.assert_close(last, reference, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"query_image": torch.randn(2, 48, 48)}, "query_image must have shape"),
        ({"support_images": torch.randn(2, 3, 48, 48)}, "support_images must have shape"),
        ({"support_images": torch.randn(2, 2, 3, 48, 48)}, "K=2 shots"),
        ({"support_masks": torch.zeros(2, 1, 40, 48)}, "support_masks must have shape"),
        ({"query_mask": torch.zeros(2, 48)}, "query_mask must have shape"),
        ({"base_channel": torch.tensor([0, 99])}, "base_channel values"),
    ],
)
def test_bad_inputs_raise_clear_errors(change: dict[str, torch.Tensor], message: str) -> None:
    model = tiny_model().eval()
    ep = {**episode(2, 1), **change}
    with pytest.raises(ValueError, match=message):
        model(**ep)


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="num_stages"):
        HDMNet(dataclasses.replace(TINY, num_stages=5), 15, 1)
    with pytest.raises(ValueError, match="shots"):
        HDMNet(TINY, 15, 0)


# ------------------------------------------------------------ exact speed-ups
@pytest.mark.parametrize(("shots", "size"), [(1, (37, 45)), (3, (40, 40))])
def test_exact_speedups_give_the_official_outputs(shots: int, size: tuple[int, int]) -> None:
    model = tiny_model(shots=shots).eval()
    ep = episode(2, shots, size)
    ep["support_masks"][1, 0] = 0  # an empty support mask
    ep["support_masks"][0, -1, 3:9, 20:30] = 1  # a second blob: box larger than the blob
    assert model.speedups == frozenset(DEFAULT_SPEEDUPS)
    with torch.no_grad():
        official = tiny_model(shots=shots, exact_speedups=False).eval()(*inputs(ep))
        default = model(*inputs(ep))
        every = model.use_speedups(EXACT_SPEEDUPS)(*inputs(ep))
    for fast in (default, every):
        for field in ("final_logits", "meta_logits", "base_logits"):
            torch.testing.assert_close(getattr(fast, field), getattr(official, field))
        for fast_map, official_map in zip(fast.distill_maps, official.distill_maps, strict=True):
            torch.testing.assert_close(fast_map, official_map)


def test_speedups_keep_batch_statistics_per_call_when_batchnorm_trains() -> None:
    model = tiny_model(fix_bn=False).train()
    ep = episode(2, 1)
    fg = (ep["support_masks"] == 1).float()
    with torch.no_grad():
        fast = model.use_speedups(EXACT_SPEEDUPS).frozen_features(
            ep["query_image"], ep["support_images"], fg
        )
        model.use_speedups(())
        official = model.frozen_features(ep["query_image"], ep["support_images"], fg)
    for got, want in zip(fast, official, strict=True):
        for key in want:
            torch.testing.assert_close(got[key], want[key])


def test_unknown_speedup_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown speed-ups \['warp_drive'\]"):
        tiny_model().use_speedups(["batched_backbone", "warp_drive"])
