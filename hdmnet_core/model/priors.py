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

import torch
import torch.nn.functional as F

COSINE_EPS = 1e-7
"""Official ``cosine_eps``: added to the product of norms."""

PROTOTYPE_AREA_EPS = 5e-4
"""Official ``Weighted_GAP``: added to the mask area in the denominator."""


def prior_mask(
    query_features: torch.Tensor,
    support_features: torch.Tensor,
    support_fg: torch.Tensor,
    foreground_only: bool = True,
) -> torch.Tensor:
    """Max cosine similarity of each query position to the masked support positions.

    Args:
        query_features: (B, C, h, w).
        support_features: (B, K, C, h', w').
        support_fg: (B, K, H, W) foreground masks (1 = target class), any size; they are
            nearest-resized to (h', w').
        foreground_only: exact speed-up. As official, background support vectors are
            zeroed, so their cosine is exactly 0 (``0 / (0 + eps)``): the max over all
            support positions is the max over the foreground ones, and 0 if there is
            any background. Then only the foreground columns of the (Ns x Nq) cosine
            map are computed (the largest count over the B*K masks; the other masks pad
            with background columns, which give 0 as above). False = official order.

    Returns:
        (B, 1, h, w): per shot ``max_j cos(q_i, s_j * m_j)``, then the mean over the K
        shots. No min-max normalisation.
    """
    b, k, c, hs, ws = support_features.shape
    h, w = query_features.shape[-2:]
    fg = F.interpolate(support_fg.flatten(0, 1)[:, None].float(), size=(hs, ws), mode="nearest")
    fg = fg.reshape(b, k, 1, hs * ws) != 0  # (B, K, 1, Ns)
    counts = fg.sum(dim=-1)  # (B, K, 1)
    support = support_features.reshape(b, k, c, hs * ws)  # (B, K, C, Ns)
    if foreground_only:
        keep = max(int(counts.max()), 1)
        # foreground positions first (stable: in map order), then background ones
        order = torch.argsort((~fg).to(torch.uint8), dim=-1, stable=True)[..., :keep]
        support = support.gather(3, order.expand(b, k, c, keep))  # (B, K, C, keep)
        fg = fg.gather(3, order)  # (B, K, 1, keep)
    support = support * fg.to(support.dtype)  # background vectors zeroed, as official
    query = query_features.reshape(b, c, h * w)  # (B, C, Nq)
    dots = torch.einsum("bkcs,bcq->bksq", support, query)  # (B, K, Ns', Nq)
    norms = support.norm(dim=2)[..., :, None] * query.norm(dim=1)[:, None, None, :]
    similarity = dots.div_(norms.add_(COSINE_EPS))  # in place: two (Ns' x Nq) maps per shot
    best = similarity.amax(dim=2)  # (B, K, Nq)
    if foreground_only:  # a background column anywhere contributes its cosine 0 to the max
        best = torch.where(counts < hs * ws, best.clamp(min=0), best)
    return best.mean(dim=1).reshape(b, 1, h, w)


def masked_average_prototype(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted global average: (N, C, h, w), (N, 1, h, w) -> (N, C, 1, 1).

    ``sum(f * m) / (sum(m) + 5e-4)`` (official ``Weighted_GAP``).
    """
    weighted = (features * mask).sum(dim=(2, 3), keepdim=True)
    area = mask.sum(dim=(2, 3), keepdim=True) + PROTOTYPE_AREA_EPS
    return weighted / area
