"""Tests of the evaluation-only fast copies (``hdmnet_core.model.inference``)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import randomise_batchnorm

from hdmnet_core.config import ModelConfig
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.inference import MkldnnBackbone, inference_copy, mkldnn_bf16_supported

TINY = ModelConfig(backbone="tiny", width=16)
needs_mkldnn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"
)


def model_and_episode(shots: int = 2) -> tuple[HDMNet, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = HDMNet(TINY, num_base_classes=15, shots=shots).eval()
    randomise_batchnorm(model.pspnet)  # non-trivial BatchNorms, so folding matters
    g = torch.Generator().manual_seed(1)
    query = torch.randn(2, 3, 41, 47, generator=g)
    supports = torch.randn(2, shots, 3, 41, 47, generator=g)
    masks = torch.zeros(2, shots, 41, 47, dtype=torch.long)
    masks[..., 10:30, 5:25] = 1
    masks[1, 0, :, 30:] = 1
    return model, (query, supports, masks)


@pytest.mark.parametrize(
    "layout", ["nchw", "channels_last", pytest.param("mkldnn", marks=needs_mkldnn)]
)
def test_inference_copy_gives_the_same_outputs(layout: str) -> None:
    model, episode = model_and_episode()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model, layout)  # type: ignore[arg-type]
    with torch.no_grad():
        want, got = model(*episode), fast(*episode)
    for field in ("final_logits", "meta_logits", "base_logits"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert before.keys() == after.keys()  # the original is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.pspnet.modules())
    assert isinstance(fast.pspnet.backbone, MkldnnBackbone) is (layout == "mkldnn")


def test_inference_copy_refuses_training_and_bad_options() -> None:
    model, _ = model_and_episode()
    fast = inference_copy(model, "nchw")
    with pytest.raises(RuntimeError, match="evaluation-only copy"):
        fast.train()
    model.train()  # the original still trains
    with pytest.raises(ValueError, match="backbone_layout must be"):
        inference_copy(model, "nhwc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="applies to the mkldnn layout only"):
        inference_copy(model, "nchw", torch.bfloat16)


@needs_mkldnn
def test_mkldnn_backbone_is_evaluation_only_on_the_cpu() -> None:
    model, (query, _, _) = model_and_episode()
    fast = inference_copy(model, "mkldnn")
    backbone = fast.pspnet.backbone
    assert isinstance(backbone, MkldnnBackbone)
    assert backbone.channels == model.pspnet.backbone.channels
    with pytest.raises(RuntimeError, match=r"under torch.no_grad\(\)"):
        backbone(query)
    with torch.no_grad():
        features = backbone(query)
    assert [tuple(v.shape) for v in features.values()] == [
        tuple(v.shape) for v in model.pspnet.backbone(query).values()
    ]
    assert all(v.layout == torch.strided for v in features.values())


@pytest.mark.skipif(not mkldnn_bf16_supported(), reason="no bf16 support in oneDNN here")
def test_bf16_backbone_under_autocast_stays_close() -> None:
    model, episode = model_and_episode()
    fast = inference_copy(model, "mkldnn", torch.bfloat16)
    with torch.no_grad():
        want = model(*episode).final_logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(*episode).final_logits.float()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


@needs_mkldnn
def test_mkldnn_backbone_chunks_give_the_batched_result() -> None:
    model, (query, supports, _) = model_and_episode()
    images = torch.cat([query, supports.flatten(0, 1)])  # (6, 3, H, W)
    folded = inference_copy(model, "nchw").pspnet.backbone
    with torch.no_grad():
        want = folded(images)
        for chunk_size in (1, 4, 6):
            got = MkldnnBackbone(folded, chunk_size=chunk_size)(images)
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        MkldnnBackbone(folded, chunk_size=0)
