"""Evaluation-only copies of :class:`~hdmnet_core.model.hdmnet.HDMNet` that run faster.

The frozen PSPNet (backbone, pyramid pooling, classifier conv) is about 95 % of an
evaluation forward on CPU. :func:`inference_copy` returns a copy of the model in which

1. every frozen BatchNorm is folded into the conv before it (no separate BN pass over
   the 60 x 60 x 2048 maps), and
2. the frozen backbone runs in oneDNN's blocked memory layout with its weights reordered
   once (:class:`MkldnnBackbone`): the plain NCHW path reorders activations and weights
   inside every conv call. It takes the images in chunks of one: on a 2-core CPU at
   473 x 473 a batch of 6 through the dilated ResNet-50 takes 6.6 s against 5.5 s one
   image at a time (its 60 x 60 x 2048 maps no longer fit the caches).
   ``channels_last`` (NHWC) is the alternative for GPUs.

The outputs equal the original model's up to float rounding in fp32
(``benchmarks/model_speed.py`` checks it at full size, the tests on the tiny backbone);
with ``backbone_dtype=torch.bfloat16`` the backbone computes in bf16 (run the rest under
``torch.autocast("cpu", torch.bfloat16)`` as well). The original model is not changed.
The copy refuses ``.train()``: folded BatchNorms cannot be trained.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal

import torch
import torch.utils.mkldnn
from torch import nn

from hdmnet_core.model.backbone import LAYER_NAMES, Backbone
from hdmnet_core.model.hdmnet import HDMNet

BackboneLayout = Literal["nchw", "channels_last", "mkldnn"]


def mkldnn_bf16_supported() -> bool:
    """True if this torch build has oneDNN and oneDNN runs bf16 on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class MkldnnBackbone(nn.Module):
    """A frozen :class:`~hdmnet_core.model.backbone.Backbone` run in oneDNN's blocked layout.

    Same interface (``forward(x) -> {"layer0": ..., "layer4": ...}``, ``channels``,
    ``strides``, ``name``); inputs and outputs are ordinary dense tensors of the input's
    dtype, CPU only, evaluation only (the converted convs carry no gradient).
    """

    def __init__(
        self, backbone: Backbone, dtype: torch.dtype = torch.float32, chunk_size: int = 1
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"MkldnnBackbone: chunk_size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("MkldnnBackbone: this torch build has no oneDNN (mkldnn)")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"MkldnnBackbone: dtype must be float32 or bfloat16, got {dtype}")
        if dtype == torch.bfloat16 and not mkldnn_bf16_supported():
            raise ValueError("MkldnnBackbone: this CPU has no bf16 support in oneDNN")
        self.name = backbone.name
        self.channels = dict(backbone.channels)
        self.strides = dict(backbone.strides)
        self.dtype = dtype
        with warnings.catch_warnings():
            # torch.utils.mkldnn builds its conv wrappers with torch.jit.script_method
            warnings.simplefilter("ignore", FutureWarning)
            self.stages = nn.ModuleList(
                torch.utils.mkldnn.to_mkldnn(copy.deepcopy(stage).eval(), dtype)
                for stage in backbone.stages()
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.device.type != "cpu":
            raise ValueError(f"MkldnnBackbone runs on the CPU only, got a {x.device} tensor")
        if torch.is_grad_enabled():
            raise RuntimeError("MkldnnBackbone is evaluation-only: call it under torch.no_grad()")
        chunks = [self.forward_chunk(part) for part in x.split(self.chunk_size)]
        return {name: torch.cat([c[name] for c in chunks]) for name in LAYER_NAMES}

    def forward_chunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        blocked = x.to(self.dtype).to_mkldnn()
        for name, stage in zip(LAYER_NAMES, self.stages, strict=True):
            blocked = stage(blocked)  # blocked layout between the stages
            features[name] = blocked.to_dense(x.dtype)
        return features


def default_layout(model: nn.Module) -> BackboneLayout:
    """``mkldnn`` on a CPU with oneDNN, ``channels_last`` otherwise (GPUs)."""
    device = next(model.parameters()).device
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        return "mkldnn"
    return "channels_last"


def inference_copy(
    model: HDMNet,
    backbone_layout: BackboneLayout | None = None,
    backbone_dtype: torch.dtype = torch.float32,
) -> HDMNet:
    """An evaluation-only copy of ``model`` with folded BatchNorms and a faster backbone.

    Args:
        model: a trained (or loaded) model; left unchanged.
        backbone_layout: ``mkldnn`` (CPU: oneDNN blocked layout), ``channels_last``
            (NHWC, good on GPUs) or ``nchw``; default: :func:`default_layout`.
        backbone_dtype: ``torch.bfloat16`` runs the ``mkldnn`` backbone in bf16.
    """
    layout = backbone_layout or default_layout(model)
    if layout not in ("nchw", "channels_last", "mkldnn"):
        raise ValueError(
            f"inference_copy: backbone_layout must be nchw, channels_last or mkldnn, got {layout!r}"
        )
    if backbone_dtype != torch.float32 and layout != "mkldnn":
        raise ValueError(
            "inference_copy: backbone_dtype applies to the mkldnn layout only; use "
            "torch.autocast for the other layouts"
        )
    fast = copy.deepcopy(model).eval()
    fast.pspnet.fold_batchnorm()
    if layout == "channels_last":
        fast.pspnet.use_channels_last()
    elif layout == "mkldnn":
        backbone = fast.pspnet.backbone
        assert isinstance(backbone, Backbone)
        fast.pspnet.backbone = MkldnnBackbone(backbone, backbone_dtype)  # type: ignore[assignment]
    fast.inference_only = True
    return fast


__all__ = [
    "BackboneLayout",
    "MkldnnBackbone",
    "default_layout",
    "inference_copy",
    "mkldnn_bf16_supported",
]
