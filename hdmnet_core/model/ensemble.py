"""Ensemble of the meta learner with the frozen base learner (BAM, reference §4.4).

BAM's idea: the base learner (a PSPNet trained on the base classes) knows where the
*base* classes are; pixels it claims are unlikely to be the novel target. The
ensemble therefore

1. measures how different the query and support scenes are (:func:`scene_difference`:
   Frobenius distance between Gram matrices of ``layer2`` features, divided by the
   norm of an all-ones matrix), one value per shot;
2. for K > 1 weights the shots by a small MLP over the *sorted* differences
   (official ``kshot_rw``: 1x1 convs K -> 2 -> K, then softmax over shots);
3. adjusts both meta probabilities with that difference (official ``gram_merge``,
   here ``scene_merge``: 1x1 conv on [meta_p, est], init [1, 0]);
4. merges the adjusted meta background with the base learner's foreground mass
   (official ``cls_merge``, here ``base_merge``: 1x1 conv on [bg, base_map], init
   [1, 0]) -> final background; final foreground = adjusted meta foreground.

K-shot weighting quirk (``kshot_weighting="official"``, the default): the official
code un-sorts the MLP output with ``idx1.gather(1, argsort(idx1))``, which is the
identity, so weight i goes to the *original* shot i although it was computed for the
i-th smallest difference; and ``kshot_rw`` is not in the optimizer, so the MLP keeps
its random initial weights. ``"fixed"`` un-sorts correctly (weight of rank r goes to
the shot of rank r) and trains the MLP.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

GRAM_EPS = 1e-7
"""Official ``get_gram_matrix``: added to the product of channel norms."""

SHOT_WEIGHTING_HIDDEN = 2
"""Official ``kshot_trans_dim``."""

KShotWeighting = Literal["official", "fixed"]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Cosine Gram matrix of the channels: (N, C, h, w) -> (N, C, C), entries in [-1, 1]."""
    flat = features.flatten(2).float()  # (N, C, hw)
    norms = flat.norm(dim=2)  # (N, C)
    return flat @ flat.transpose(1, 2) / (norms[:, :, None] * norms[:, None, :] + GRAM_EPS)


def scene_difference(query_low: torch.Tensor, support_low: torch.Tensor) -> torch.Tensor:
    """BAM's ``est_val`` per shot: (B, C, h, w), (B, K, C, h, w) -> (B, K).

    ``||G_q - G_s||_F / ||ones(C, C)||_F`` with G the cosine Gram matrix.
    """
    b, k = support_low.shape[:2]
    query_gram = gram_matrix(query_low)  # (B, C, C)
    support_gram = gram_matrix(support_low.flatten(0, 1)).unflatten(0, (b, k))  # (B, K, C, C)
    return gram_difference(query_gram, support_gram)


def gram_difference(query_gram: torch.Tensor, support_gram: torch.Tensor) -> torch.Tensor:
    """:func:`scene_difference` from the Gram matrices: (B, C, C), (B, K, C, C) -> (B, K)."""
    channels = query_gram.shape[-1]
    difference = (query_gram[:, None] - support_gram).flatten(2).norm(dim=2)  # (B, K)
    return difference / float(channels)  # ||ones(C, C)||_F = C


def base_foreground_map(
    base_logits: torch.Tensor, excluded_channel: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of the base learner's non-background probabilities: (B, C+1, h, w) -> (B, 1, h, w).

    ``excluded_channel`` (B,): a channel left out of the sum for each sample (training:
    the episode's own class, which the base learner knows but which is the target here;
    0 leaves nothing extra out because channel 0 is background anyway).
    """
    probs = base_logits.softmax(dim=1)
    keep = torch.ones(probs.shape[:2], dtype=probs.dtype, device=probs.device)  # (B, C+1)
    keep[:, 0] = 0
    if excluded_channel is not None:
        keep = keep.scatter(1, excluded_channel.long()[:, None], 0.0)
    return torch.einsum("bchw,bc->bhw", probs, keep)[:, None]


def init_identity_merge(conv: nn.Conv2d) -> None:
    """Weights [1, 0]: the merge starts as "take the first input"."""
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0]).reshape_as(conv.weight))


class BaseLearnerEnsemble(nn.Module):
    """Steps 2-4 of the module docstring. Official names: ``gram_merge`` = ``scene_merge``,
    ``cls_merge`` = ``base_merge``, ``kshot_rw.{0,2}`` = ``shot_weighting.{0,2}`` (K > 1).
    """

    def __init__(self, shots: int, kshot_weighting: KShotWeighting = "official") -> None:
        super().__init__()
        if kshot_weighting not in ("official", "fixed"):
            raise ValueError(f"kshot_weighting={kshot_weighting!r} must be 'official' or 'fixed'")
        self.shots = shots
        self.kshot_weighting: KShotWeighting = kshot_weighting
        self.scene_merge = nn.Conv2d(2, 1, kernel_size=1, bias=False)
        self.base_merge = nn.Conv2d(2, 1, kernel_size=1, bias=False)
        init_identity_merge(self.scene_merge)
        init_identity_merge(self.base_merge)
        self.shot_weighting: nn.Sequential | None = None
        if shots > 1:
            self.shot_weighting = nn.Sequential(
                nn.Conv2d(shots, SHOT_WEIGHTING_HIDDEN, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(SHOT_WEIGHTING_HIDDEN, shots, kernel_size=1),
            )

    def combined_difference(self, differences: torch.Tensor) -> torch.Tensor:
        """(B, K) per-shot differences -> (B,) weighted by the shot MLP (K = 1: as is)."""
        if differences.shape[1] != self.shots:
            raise ValueError(f"expected {self.shots} shots, got {differences.shape[1]}")
        if self.shot_weighting is None:
            return differences[:, 0]
        return (self.shot_weights(differences) * differences).sum(dim=1)

    def shot_weights(self, differences: torch.Tensor) -> torch.Tensor:
        """(B, K) per-shot differences -> (B, K) weights of the shots (softmax, sum 1).

        K = 1: all weight on the one shot. ``"official"``: the weight computed for the
        i-th smallest difference goes to shot i; ``"fixed"``: to the shot of that rank.
        """
        if self.shot_weighting is None:
            return torch.ones_like(differences)
        sorted_values, order = differences.sort(dim=1)  # ascending
        weights = self.shot_weighting(sorted_values[:, :, None, None])[:, :, 0, 0]  # (B, K)
        if self.kshot_weighting == "fixed":
            rank = order.argsort(dim=1)  # rank[b, i] = position of shot i in sorted order
            weights = weights.gather(1, rank)
        # "official": weights stay in sorted order (the official gather is the identity).
        return weights.softmax(dim=1)

    def forward(
        self,
        meta_logits: torch.Tensor,
        base_logits: torch.Tensor,
        differences: torch.Tensor,
        excluded_channel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """meta (B, 2, h, w), base (B, C+1, h, w), differences (B, K) -> final (B, 2, h, w).

        As official, the output mixes probabilities and is used directly as logits.
        """
        meta_probs = meta_logits.softmax(dim=1)
        est = self.combined_difference(differences).to(meta_probs.dtype)  # (B,)
        est_map = est[:, None, None, None].expand_as(meta_probs[:, :1])  # (B, 1, h, w)
        meta_bg = self.scene_merge(torch.cat([meta_probs[:, :1], est_map], dim=1))
        meta_fg = self.scene_merge(torch.cat([meta_probs[:, 1:], est_map], dim=1))
        base_map = base_foreground_map(base_logits, excluded_channel).to(meta_bg.dtype)
        final_bg = self.base_merge(torch.cat([meta_bg, base_map], dim=1))
        return torch.cat([final_bg, meta_fg], dim=1)
