"""Decoupled hierarchy: self-attention stages that build the feature pyramid (reference §4.1).

Paper §3.2 ("decoupled downsampling and matching"): the query and the support features
pass the *same* stages *independently* (no cross-attention while down-sampling), so
that support information never leaks into the query features before matching. Each
stage is a SegFormer-style block: patch embedding (strided conv + LayerNorm), two
pre-norm encoder layers with spatially reduced self-attention and a MixFFN, and a
final LayerNorm. Official stage settings (``Transformer.py``, ``MixVisionTransformer``):

| stage | patch kernel | stride | heads | key/value reduction | PASCAL map |
|---|---|---|---|---|---|
| 0 | 1 | 1 | 2 | 4 | 60 x 60 |
| 1 | 3 | 2 | 4 | 2 | 30 x 30 |
| 2 | 3 | 2 | 8 | 1 | 15 x 15 |
| 3 (not official) | 3 | 2 | 8 | 1 | 8 x 8 |

The official code has three stages; paper Table 4 also reports one, two and four.
A fourth stage repeats the last official one (stride 2, 8 heads, no reduction).

Official names (prefix ``transformer.mix_transformer.down_sample_layers.{i}``):
``.0`` = :class:`PatchEmbedding` (``projection``, ``norm``), ``.1``/``.2`` =
``encoder_layers.0``/``.1`` (:class:`EncoderLayer`), ``.3`` = ``norm``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6
"""Every LayerNorm of the official transformer uses ``eps=1e-6``."""

MLP_RATIO = 4
"""MixFFN hidden width = 4 x width (official ``mlp_ratio``)."""

DROPOUT = 0.1
"""Official ``drop_rate``: after the attention output and inside the MixFFN."""

STAGE_PATCH_KERNELS = (1, 3, 3, 3)
STAGE_STRIDES = (1, 2, 2, 2)
STAGE_HEADS = (2, 4, 8, 8)
STAGE_REDUCTIONS = (4, 2, 1, 1)


def tokens_to_map(tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(N, h*w, C) -> (N, C, h, w)."""
    n, length, channels = tokens.shape
    h, w = hw
    if length != h * w:
        raise ValueError(f"{length} tokens cannot form a {h} x {w} map")
    return tokens.transpose(1, 2).reshape(n, channels, h, w)


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, h*w, C)."""
    return feature_map.flatten(2).transpose(1, 2)


def split_heads(tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, L, C) -> (N, heads, L, C / heads)."""
    n, length, channels = tokens.shape
    return tokens.reshape(n, length, heads, channels // heads).transpose(1, 2)


def merge_heads(tokens: torch.Tensor) -> torch.Tensor:
    """(N, heads, L, d) -> (N, L, heads * d)."""
    n, heads, length, dim = tokens.shape
    return tokens.transpose(1, 2).reshape(n, length, heads * dim)


class PatchEmbedding(nn.Module):
    """Strided conv + LayerNorm that starts a stage (official mmseg ``PatchEmbed``).

    Padding is ``stride // 2`` as in the official code, so a 3x3 stride-2 embedding maps
    60 -> 30 -> 15 -> 8.
    """

    def __init__(self, width: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            width, width, kernel_size=kernel_size, stride=stride, padding=stride // 2
        )
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.projection(feature_map)  # (N, C, h', w')
        hw = (x.shape[2], x.shape[3])
        return self.norm(map_to_tokens(x)), hw  # (N, h'*w', C)


class MixFFN(nn.Module):
    """MixFFN (SegFormer): 1x1 expand, 3x3 depthwise conv (positional cue), GELU, dropout,
    1x1 project, dropout. Official ``ffn.layers.{0, 1, 4}`` = ``expand``, ``depthwise``,
    ``project``. Returns the update only (the caller adds the residual)."""

    def __init__(self, width: int, hidden: int, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.expand = nn.Conv2d(width, hidden, kernel_size=1)
        self.depthwise = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.project = nn.Conv2d(hidden, width, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = self.depthwise(self.expand(tokens_to_map(tokens, hw)))  # (N, hidden, h, w)
        x = self.dropout(F.gelu(x))
        x = self.dropout(self.project(x))  # (N, C, h, w)
        return map_to_tokens(x)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention with spatially reduced keys/values (SegFormer, Eq. 2).

    Keys and values come from the map reduced by a conv with kernel = stride =
    ``reduction`` followed by LayerNorm (official ``attn.sr``, ``attn.norm``); scores are
    scaled dot products ``q.k / (sqrt(d) + 1e-9)``, softmax over the keys, computed with
    :func:`torch.nn.functional.scaled_dot_product_attention`. Projections have no bias
    (official ``attn.attn.linear_{q,k,v,o}`` = ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``). The official output dropout (``proj_drop`` = 0.1) is applied here.
    """

    def __init__(self, width: int, heads: int, reduction: int, dropout: float = DROPOUT) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.heads = heads
        self.reduction = reduction
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)
        self.reduce: nn.Conv2d | None = None
        self.reduce_norm: nn.LayerNorm | None = None
        if reduction > 1:
            self.reduce = nn.Conv2d(width, width, kernel_size=reduction, stride=reduction)
            self.reduce_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def reduced_tokens(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(N, h*w, C) -> (N, (h/r)*(w/r), C): the key/value source."""
        if self.reduce is None or self.reduce_norm is None:
            return tokens
        return self.reduce_norm(map_to_tokens(self.reduce(tokens_to_map(tokens, hw))))

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        source = self.reduced_tokens(tokens, hw)
        q = split_heads(self.q_proj(tokens), self.heads)  # (N, heads, L, d)
        k = split_heads(self.k_proj(source), self.heads)  # (N, heads, L', d)
        v = split_heads(self.v_proj(source), self.heads)
        scale = 1.0 / (math.sqrt(q.shape[-1]) + 1e-9)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (N, heads, L, d)
        return self.dropout(self.out_proj(merge_heads(out)))


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: ``x += Attn(LN1(x)); x += MixFFN(LN2(x))``."""

    def __init__(self, width: int, heads: int, reduction: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attention = EfficientSelfAttention(width, heads, reduction)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.ffn = MixFFN(width, MLP_RATIO * width)

    def forward(self, tokens: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens), hw)
        return tokens + self.ffn(self.norm2(tokens), hw)


class HierarchyStage(nn.Module):
    """One stage: patch embedding, two encoder layers, LayerNorm. Map in, map out."""

    def __init__(self, width: int, stage: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbedding(width, STAGE_PATCH_KERNELS[stage], STAGE_STRIDES[stage])
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(width, STAGE_HEADS[stage], STAGE_REDUCTIONS[stage]) for _ in range(2)
        )
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        tokens, hw = self.patch_embed(feature_map)  # (N, h*w, C)
        for layer in self.encoder_layers:
            tokens = layer(tokens, hw)
        return tokens_to_map(self.norm(tokens), hw)  # (N, C, h, w)


class DecoupledHierarchy(nn.Module):
    """``num_stages`` self-attention stages (paper Fig. 2, reference §4.1).

    ``forward`` returns the map of every stage, finest first: for a (N, C, 60, 60) input
    with three stages, maps of 60, 30 and 15. Call it once for the query and once for
    the supports (or on both concatenated along the batch): the stages never mix
    samples, which is the paper's decoupling.
    """

    def __init__(self, width: int, num_stages: int) -> None:
        super().__init__()
        if not 1 <= num_stages <= len(STAGE_STRIDES):
            raise ValueError(f"num_stages={num_stages} must be in 1..{len(STAGE_STRIDES)}")
        self.stages = nn.ModuleList(HierarchyStage(width, i) for i in range(num_stages))

    def forward(self, feature_map: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            feature_map = stage(feature_map)
            maps.append(feature_map)
        return maps
