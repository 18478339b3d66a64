"""Prior masks and the support prototype (PFENet-style, reference §4; paper Eq. 6 M^pri).

Both read frozen backbone features only, so they carry no trainable parameter.

- :func:`prior_mask`: for every query position, the highest cosine similarity to any
  foreground support position (training-free "where might the class be" map). The
  official code computes it on ``layer4`` and on ``feat5`` and feeds both channels to
  ``query_merge`` (times 10) and to every matching stage.
- :func:`masked_average_prototype`: mask-weighted global average of the support mid
  features (official ``Weighted_GAP``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-7
"""Official ``cosine_eps``: added to the product of norms."""

PROTOTYPE_AREA_EPS = 5e-4
"""Official ``Weighted_GAP``: added to the mask area in the denominator."""


@dataclass(frozen=True)
class ForegroundColumns:
    """Support features at the foreground positions of their masks only: the input of
    the ``foreground_only`` prior (the feature cache stores exactly these columns).

    Attributes:
        values: (B, K, C, n): per mask its foreground vectors in map order, then zero
            columns up to n, the largest foreground count over the B*K masks (at least 1).
        counts: (B, K, 1) foreground positions per mask.
        positions: h' * w' of the grid they come from.
    """

    values: torch.Tensor
    counts: torch.Tensor
    positions: int


def support_foreground(support_fg: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, K, H, W) masks -> (B, K, 1, h'*w') foreground flags, nearest-resized (official)."""
    b, k = support_fg.shape[:2]
    fg = F.interpolate(support_fg.flatten(0, 1)[:, None].float(), size=grid, mode="nearest")
    return fg.reshape(b, k, 1, grid[0] * grid[1]) != 0


def foreground_columns(
    support_features: torch.Tensor, support_fg: torch.Tensor
) -> ForegroundColumns:
    """(B, K, C, h', w') features, (B, K, H, W) masks -> their :class:`ForegroundColumns`."""
    b, k, c, hs, ws = support_features.shape
    fg = support_foreground(support_fg, (hs, ws))  # (B, K, 1, Ns)
    counts = fg.sum(dim=-1)  # (B, K, 1)
    keep = max(int(counts.max()), 1)
    # foreground positions first (stable: in map order), then background ones
    order = torch.argsort((~fg).to(torch.uint8), dim=-1, stable=True)[..., :keep]
    support = support_features.reshape(b, k, c, hs * ws).gather(3, order.expand(b, k, c, keep))
    kept = fg.gather(3, order).to(support.dtype)  # (B, K, 1, keep)
    return ForegroundColumns(support * kept, counts, hs * ws)  # padding columns zeroed


def prior_mask(
    query_features: torch.Tensor,
    support_features: torch.Tensor | ForegroundColumns,
    support_fg: torch.Tensor,
    foreground_only: bool = True,
) -> torch.Tensor:
    """Max cosine similarity of each query position to the masked support positions.

    Args:
        query_features: (B, C, h, w).
        support_features: (B, K, C, h', w'), or their :class:`ForegroundColumns` (then
            ``foreground_only`` is implied).
        support_fg: (B, K, H, W) foreground masks (1 = target class), any size; they are
            nearest-resized to (h', w').
        foreground_only: exact speed-up. As official, background support vectors are
            zeroed, so their cosine is exactly 0 (``0 / (0 + eps)``): the max over all
            support positions is the max over the foreground ones, and 0 if there is
            any background. Then only the foreground columns of the (Ns x Nq) cosine
            map are computed (the largest count over the B*K masks; the other masks pad
            with zero columns, which give 0 as above). False = official order.

    Returns:
        (B, 1, h, w): per shot ``max_j cos(q_i, s_j * m_j)``, then the mean over the K
        shots. No min-max normalisation.
    """
    if isinstance(support_features, ForegroundColumns):
        return foreground_prior(query_features, support_features)
    if foreground_only:
        return foreground_prior(query_features, foreground_columns(support_features, support_fg))
    b, k, c, hs, ws = support_features.shape
    fg = support_foreground(support_fg, (hs, ws))  # (B, K, 1, Ns)
    support = support_features.reshape(b, k, c, hs * ws) * fg.to(support_features.dtype)
    best = cosine_map(query_features, support).amax(
        dim=2
    )  # (B, K, Nq): zeroed vectors, as official
    return best.mean(dim=1).reshape(b, 1, *query_features.shape[-2:])


def foreground_prior(query_features: torch.Tensor, columns: ForegroundColumns) -> torch.Tensor:
    """:func:`prior_mask` from the foreground columns: (B, C, h, w) -> (B, 1, h, w).

    Masks with different foreground counts are scored one by one, each over its own
    columns only (no product over the padding columns, which can be most of them at K
    shots); equal counts share one product.
    """
    b, k = columns.values.shape[:2]
    counts = columns.counts.flatten().tolist()
    if len(set(counts)) == 1:
        best = cosine_map(query_features, columns.values).amax(dim=2)  # (B, K, Nq)
    else:
        per_mask = [
            cosine_map(query_features[i : i + 1], columns.values[i : i + 1, j : j + 1, :, :n]).amax(
                dim=2
            )  # (1, 1, Nq)
            for i in range(b)
            for j in range(k)
            for n in [max(int(counts[i * k + j]), 1)]  # an empty mask: its one zero column
        ]
        best = torch.cat(per_mask, dim=1).reshape(b, k, -1)  # (B, K, Nq)
    # a background position anywhere contributes its cosine 0 to the max
    best = torch.where(columns.counts < columns.positions, best.clamp(min=0), best)
    return best.mean(dim=1).reshape(b, 1, *query_features.shape[-2:])


def cosine_map(query_features: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) query, (B, K, C, Ns) support vectors -> (B, K, Ns, h*w) cosines, with
    the official ``eps`` added to the product of norms (a zero vector gives exactly 0)."""
    b, c = query_features.shape[:2]
    query = query_features.reshape(b, c, -1)  # (B, C, Nq)
    dots = torch.einsum("bkcs,bcq->bksq", support, query)  # (B, K, Ns, Nq)
    norms = support.norm(dim=2)[..., :, None] * query.norm(dim=1)[:, None, None, :]
    return dots.div_(norms.add_(COSINE_EPS))  # in place: two (Ns x Nq) maps per shot


def masked_average_prototype(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted global average: (N, C, h, w), (N, 1, h, w) -> (N, C, 1, 1).

    ``sum(f * m) / (sum(m) + 5e-4)`` (official ``Weighted_GAP``).
    """
    weighted = (features * mask).sum(dim=(2, 3), keepdim=True)
    area = mask.sum(dim=(2, 3), keepdim=True) + PROTOTYPE_AREA_EPS
    return weighted / area
