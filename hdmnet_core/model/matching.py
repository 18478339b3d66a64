"""Correlation matching: query tokens retrieve support values (paper Eqs. 3-7, reference §4.2).

One matching stage per hierarchy stage. Its core, :class:`CorrelationAttention`, is a
cross-attention from the query tokens to the support tokens of all K shots, with three
changes from the usual attention (Eq. 2):

1. scores are cosine similarities divided by a temperature t = 0.1 (Eq. 4) instead of
   scaled dot products, so feature norms (class-specific) cannot dominate;
2. the softmax runs over the QUERY axis (Eq. 5, :func:`query_axis_attention`): every
   support token distributes one unit of attention over the query positions (the
   scores are stored support-major, (Ns, Nq), so this is a softmax over the last axis);
3. background support tokens are zeroed after the softmax (no renormalisation), so
   only foreground support tokens send values to the query.

Step 3 is computed by zeroing the *values* of background tokens, which gives the same
sum ``sum_j attn[i, j] * fg[j] * v[j]`` without ever materialising a query x support
mask (the official code repeats the support mask for every query position). Since each
support token's softmax is its own row, a background row adds exactly 0 to the output
and gets no gradient: with ``foreground_rows`` (the ``foreground_matching`` speed-up of
:class:`~hdmnet_core.model.hdmnet.HDMNet`) only foreground rows are scored, which at
60 x 60 is most of an evaluation episode's work after the backbone.

The same scores give the stage's distillation map (Eq. 7): raw scores averaged over the
foreground support tokens and over the heads, one value per query position.

After the attention comes the rest of a pre-norm transformer layer (residual, MixFFN),
then the two prior channels are concatenated and fused by a 3x3 conv + BN + ReLU
(Eq. 6). Official names (prefix ``transformer.mix_transformer.match_layers.{i}``):
``.0`` = ``cross_layer`` (``norm1``, ``attn.attn.linear_{q,k,v,o}`` =
``attention.{q,k,v,out}_proj``, ``norm2``, ``ffn.layers.{0,1,4}``), ``.1.conv`` =
``fuse.0``, ``.1.bn`` = ``fuse.1``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hdmnet_core.model.hierarchy import (
    DROPOUT,
    LAYER_NORM_EPS,
    MLP_RATIO,
    MixFFN,
    merge_heads,
    split_heads,
    tokens_to_map,
)

MATCHING_HEADS = 2
"""Official ``match_nums_heads``."""

MatchingKind = Literal["cosine", "dot"]


def prepare_scoring(
    query: torch.Tensor, support: torch.Tensor, matching: MatchingKind, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Eq. 4 ingredients: ``(q, k, scale)`` with scores = ``scale * q.k``.

    ``cosine`` (official): q and k L2-normalised, scale = 1 / t.
    ``dot`` (ablation, paper Table 3 "cosine correlation"): raw q, k, scale = 1 / sqrt(d)
    as in Eq. 2.
    """
    if matching == "cosine":
        return F.normalize(query, dim=-1), F.normalize(support, dim=-1), 1.0 / temperature
    if matching == "dot":
        return query, support, 1.0 / math.sqrt(query.shape[-1])
    raise ValueError(f"matching={matching!r} must be 'cosine' or 'dot'")


def correlation_scores(query: torch.Tensor, support: torch.Tensor, scale: float) -> torch.Tensor:
    """Scores C of Eq. 4, stored support-major: (B, h, Nq, d), (B, h, Ns, d) -> (B, h, Ns, Nq).

    Row j holds support token j against every query position, so the query-axis softmax
    runs over the contiguous last axis (about 2x faster on CPU than a softmax over dim -2).
    """
    return torch.einsum("bhsd,bhqd->bhsq", support, query).mul_(scale)


def query_axis_attention(scores: torch.Tensor) -> torch.Tensor:
    """Eq. 5 on support-major scores (B, h, Ns, Nq): softmax over the query positions,
    so each support token's attention sums to 1 over the query."""
    return scores.softmax(dim=-1)


def foreground_mean_scores(
    query: torch.Tensor, support: torch.Tensor, scale: float, support_fg: torch.Tensor
) -> torch.Tensor:
    """Eq. 7: scores averaged over foreground support tokens, then over heads -> (B, Nq).

    The mean of ``scale * q_i.k_j`` over foreground j equals ``scale * q_i.mean_fg(k)``
    (linearity), so the (Nq x Ns) scores are not read again. ``+1e-9`` as official: no
    foreground gives 0.
    """
    fg = support_fg.to(support.dtype)
    # the count in fp32: in fp16 the official +1e-9 rounds to 0 and 0 / 0 gives NaN
    count = fg.float().sum(dim=1)[:, None, None] + 1e-9  # (B, 1, 1)
    mean_key = (torch.einsum("bhsd,bs->bhd", support, fg) / count).to(support.dtype)  # (B, h, d)
    per_head = torch.einsum("bhqd,bhd->bhq", query, mean_key) * scale  # (B, h, Nq)
    return per_head.mean(dim=1)


def foreground_tokens(
    keys: torch.Tensor, values: torch.Tensor, support_fg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The support tokens whose foreground flag is not 0, first in token order.

    (B, h, Ns, d), (B, h, Ns, d), (B, Ns) -> the same with Ns' = the largest foreground
    count over the batch (at least 1); samples with fewer foreground tokens pad with
    background ones, whose flag 0 zeroes their values as before.
    """
    b, heads, _, dim = keys.shape
    fg = support_fg != 0
    keep = max(int(fg.sum(dim=1).max()), 1)
    order = torch.argsort((~fg).to(torch.uint8), dim=1, stable=True)[:, :keep]  # (B, Ns')
    index = order[:, None, :, None].expand(b, heads, keep, dim)
    return keys.gather(2, index), values.gather(2, index), support_fg.gather(1, order)


class CorrelationAttention(nn.Module):
    """Masked cross-attention with the query-axis softmax (Eqs. 4-6).

    ``forward(query_tokens (B, Nq, C), support_tokens (B, Ns, C), support_fg (B, Ns))``
    returns ``(update (B, Nq, C), distill_map (B, Nq))``; ``support_fg`` is 1 for
    foreground support tokens and 0 elsewhere (K shots concatenated along Ns).
    """

    def __init__(
        self,
        width: int,
        heads: int = MATCHING_HEADS,
        matching: MatchingKind = "cosine",
        temperature: float = 0.1,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        self.heads = heads
        self.matching: MatchingKind = matching
        self.temperature = temperature
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.foreground_rows = False
        """Score foreground support tokens only (exact: see the module docstring)."""

    def forward(
        self, query_tokens: torch.Tensor, support_tokens: torch.Tensor, support_fg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q = split_heads(self.q_proj(query_tokens), self.heads)  # (B, h, Nq, d)
        k = split_heads(self.k_proj(support_tokens), self.heads)  # (B, h, Ns, d)
        v = split_heads(self.v_proj(support_tokens), self.heads)  # (B, h, Ns, d)
        q, k, scale = prepare_scoring(q, k, self.matching, self.temperature)
        distill_map = foreground_mean_scores(q, k, scale, support_fg)  # (B, Nq)
        if self.foreground_rows:
            k, v, support_fg = foreground_tokens(k, v, support_fg)  # Ns -> Ns' (foreground)
        scores = correlation_scores(q, k, scale)  # (B, h, Ns, Nq)
        attention = query_axis_attention(scores)
        del scores  # inference: free the scores before the next big tensor
        # Zeroing background support tokens' attention == zeroing their values.
        v = v * support_fg.to(v.dtype)[:, None, :, None]
        out = torch.einsum("bhsq,bhsd->bhqd", attention.to(v.dtype), v)  # (B, h, Nq, d)
        return self.dropout(self.out_proj(merge_heads(out))), distill_map


class CrossEncoderLayer(nn.Module):
    """Pre-norm layer in "cross" mode: LN1 on query and support tokens, correlation
    attention, residual, then ``x += MixFFN(LN2(x))`` (official ``TransformerEncoderLayer``
    called with ``cross=True``)."""

    def __init__(self, width: int, matching: MatchingKind, temperature: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.attention = CorrelationAttention(width, MATCHING_HEADS, matching, temperature)
        self.norm2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.ffn = MixFFN(width, MLP_RATIO * width)

    def forward(
        self,
        query_tokens: torch.Tensor,
        hw: tuple[int, int],
        support_tokens: torch.Tensor,
        support_fg: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        update, distill_map = self.attention(
            self.norm1(query_tokens), self.norm1(support_tokens), support_fg
        )
        tokens = query_tokens + update
        return tokens + self.ffn(self.norm2(tokens), hw), distill_map


class MatchingStage(nn.Module):
    """Correlation matching of one stage, then prior concat and 3x3 fusion (Eq. 6).

    ``forward(query_map (B, C, h, w), support_tokens (B, K*Ns, C), support_fg (B, K*Ns),
    priors (B, P, h, w))`` -> ``(matched (B, C, h, w), distill_map (B, h, w))``.
    """

    def __init__(
        self, width: int, matching: MatchingKind, temperature: float, prior_channels: int = 2
    ) -> None:
        super().__init__()
        self.cross_layer = CrossEncoderLayer(width, matching, temperature)
        self.fuse = nn.Sequential(
            nn.Conv2d(width + prior_channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )

    def forward(
        self,
        query_map: torch.Tensor,
        support_tokens: torch.Tensor,
        support_fg: torch.Tensor,
        priors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = query_map.shape
        query_tokens = query_map.flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens, distill_map = self.cross_layer(query_tokens, (h, w), support_tokens, support_fg)
        matched = tokens_to_map(tokens, (h, w))  # (B, C, h, w)
        matched = self.fuse(torch.cat([matched, priors.to(matched.dtype)], dim=1))
        return matched, distill_map.reshape(b, h, w)
