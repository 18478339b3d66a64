"""Minimal stand-ins for the mmcv 1.x / mmseg 0.x pieces that the authors' HDMNet code
imports (``model/Transformer.py``), for ``benchmarks/official_side_by_side.py --stand-ins``.

Only what an evaluation forward and the official state-dict layout need, written from
the documented behaviour of those libraries: module names and defaults that decide the
parameter names (``ConvModule.conv``/``.bn``, ``PatchEmbed.projection``/``.norm``) and
the maths of the pieces used at inference. Install real ``mmcv-full`` 1.x and ``mmseg``
0.x instead when you can; the script then uses them (omit ``--stand-ins``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Conv2d = nn.Conv2d
RELU: dict[str, Any] = {"type": "ReLU"}
ModuleList = nn.ModuleList
Sequential = nn.Sequential


class BaseModule(nn.Module):
    """``mmcv.runner.BaseModule``: an ``nn.Module`` that keeps an ``init_cfg``."""

    def __init__(self, init_cfg: Any = None) -> None:
        super().__init__()
        self.init_cfg = init_cfg

    def init_weights(self) -> None:
        """Weights come from a checkpoint here; nothing to initialise."""


def build_activation_layer(cfg: dict[str, Any]) -> nn.Module:
    kind = cfg["type"]
    if kind == "GELU":
        return nn.GELU()
    if kind == "ReLU":
        return nn.ReLU(inplace=cfg.get("inplace", False))
    raise NotImplementedError(f"stand-in build_activation_layer: {kind}")


def build_norm_layer(
    cfg: dict[str, Any], num_features: int, postfix: int | str = ""
) -> tuple[str, nn.Module]:
    options = dict(cfg)
    kind = options.pop("type")
    options.pop("requires_grad", None)
    if kind == "LN":
        return f"ln{postfix}", nn.LayerNorm(num_features, **options)
    if kind in ("BN", "BN2d"):
        return f"bn{postfix}", nn.BatchNorm2d(num_features, **options)
    if kind == "SyncBN":
        return f"bn{postfix}", nn.SyncBatchNorm(num_features, **options)
    raise NotImplementedError(f"stand-in build_norm_layer: {kind}")


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.1) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x.div(keep) * (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor()


def build_dropout(cfg: dict[str, Any]) -> nn.Module:
    options = dict(cfg)
    kind = options.pop("type")
    if kind == "DropPath":
        return DropPath(**options)
    if kind == "Dropout":
        return nn.Dropout(options.get("drop_prob", options.get("p", 0.5)))
    raise NotImplementedError(f"stand-in build_dropout: {kind}")


class MultiheadAttention(BaseModule):
    """Constructor of ``mmcv.cnn.bricks.transformer.MultiheadAttention`` (HDMNet overrides
    its forward and replaces ``attn``, so only the attributes matter)."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        dropout_layer: dict[str, Any] | None = None,
        init_cfg: Any = None,
        batch_first: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(init_cfg)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, attn_drop, **kwargs)
        self.proj_drop = nn.Dropout(proj_drop)
        layer = dropout_layer or {"type": "Dropout", "drop_prob": 0.0}
        self.dropout_layer = build_dropout(layer)


class ConvModule(nn.Module):
    """conv -> norm -> activation; ``bias="auto"`` means no bias when a norm follows."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | str = "auto",
        conv_cfg: Any = None,
        norm_cfg: dict[str, Any] | None = None,
        act_cfg: dict[str, Any] | None = RELU,
        inplace: bool = True,
    ) -> None:
        super().__init__()
        self.with_norm = norm_cfg is not None
        use_bias = (not self.with_norm) if bias == "auto" else bool(bias)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, use_bias
        )
        if norm_cfg is not None:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        self.activate: nn.Module | None = None  # act_cfg=None: no activation, as mmcv
        if act_cfg is not None:
            activation = dict(act_cfg)
            if activation.get("type") == "ReLU":
                activation.setdefault("inplace", inplace)
            self.activate = build_activation_layer(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.with_norm:
            x = getattr(self, self.norm_name)(x)
        return x if self.activate is None else self.activate(x)


def constant_init(module: nn.Module, val: float, bias: float = 0) -> None:
    nn.init.constant_(module.weight, val)  # type: ignore[arg-type]
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)  # type: ignore[arg-type]


def normal_init(module: nn.Module, mean: float = 0, std: float = 1, bias: float = 0) -> None:
    nn.init.normal_(module.weight, mean, std)  # type: ignore[arg-type]
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)  # type: ignore[arg-type]


def trunc_normal_init(
    module: nn.Module, mean: float = 0, std: float = 1, a: float = -2, b: float = 2, bias: float = 0
) -> None:
    nn.init.trunc_normal_(module.weight, mean, std, a, b)  # type: ignore[arg-type]
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)  # type: ignore[arg-type]


def _pair(value: Any) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)  # type: ignore[return-value]


class PatchEmbed(BaseModule):
    """``mmseg.models.utils.PatchEmbed`` with an integer padding: conv ``projection``,
    flatten to tokens, optional ``norm``; returns ``(tokens, (h, w))``."""

    def __init__(
        self,
        in_channels: int = 3,
        embed_dims: int = 768,
        conv_type: str = "Conv2d",
        kernel_size: int = 16,
        stride: int | None = None,
        padding: int | str = "corner",
        dilation: int = 1,
        bias: bool = True,
        norm_cfg: dict[str, Any] | None = None,
        input_size: Any = None,
        init_cfg: Any = None,
    ) -> None:
        super().__init__(init_cfg)
        if isinstance(padding, str):
            raise NotImplementedError("stand-in PatchEmbed: adaptive padding is not needed")
        self.projection = nn.Conv2d(
            in_channels,
            embed_dims,
            _pair(kernel_size),
            _pair(kernel_size if stride is None else stride),
            _pair(padding),
            _pair(dilation),
            bias=bias,
        )
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1] if norm_cfg is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(x)
        size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        return (self.norm(x) if self.norm is not None else x), size


def nlc_to_nchw(x: torch.Tensor, hw_shape: tuple[int, int]) -> torch.Tensor:
    h, w = hw_shape
    b, length, c = x.shape
    if length != h * w:
        raise ValueError(f"nlc_to_nchw: {length} tokens for a {h} x {w} map")
    return x.transpose(1, 2).reshape(b, c, h, w)


def nchw_to_nlc(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2).contiguous()


def resize(
    input: torch.Tensor,
    size: Any = None,
    scale_factor: Any = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
    warning: bool = True,
) -> torch.Tensor:
    if isinstance(size, torch.Size):
        size = tuple(int(v) for v in size)
    return F.interpolate(input, size, scale_factor, mode, align_corners)
