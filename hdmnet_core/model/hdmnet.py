"""HDMNet: the whole few-shot segmentation model (paper Fig. 2, reference §3-§6).

One forward API for training, evaluation, notebooks and tests::

    out = model(query_image, support_images, support_masks)        # (B,3,H,W), (B,K,3,H,W), (B,K,H,W)
    out.final_logits, out.meta_logits, out.base_logits, out.distill_maps
    out = model(..., query_mask=y, query_base_label=yb, base_channel=c)   # adds out.losses

Pipeline (each step is a small part with its own module):

1. frozen PSPNet (:mod:`.pspnet`): backbone maps and ``feat5`` of the query and of the
   masked supports, and the base learner's logits, all without gradients;
2. prior masks on ``feat5`` and ``layer4`` and the support prototype (:mod:`.priors`);
3. mid features ``cat(layer3, layer2)`` reduced by 1x1 convs (official ``down_*``) and
   merged with the prototype (and, for the query, 10 x the priors) to ``width``
   channels (official ``*_merge``);
4. decoupled hierarchy (:mod:`.hierarchy`), correlation matching per stage
   (:mod:`.matching`), coarse-to-fine decoder (:mod:`.decoder`) -> meta logits;
5. ensemble with the base learner (:mod:`.ensemble`) -> final logits;
6. losses (:mod:`.losses`) when ``query_mask`` is given.

K shots: supports go through the backbone and the hierarchy as one batch of B*K; their
tokens are concatenated for the matching, priors are averaged over shots, the query
uses the mean prototype and the ensemble weights the per-shot scene differences. With
K identical shots, priors, prototype, scene difference and distillation maps equal the
1-shot values, while each matching update is K times the 1-shot update (the query-axis
softmax normalises every support column on its own, so duplicated columns add up).

Top-level attributes and the official names they map to (reference §6; the converter,
:mod:`.convert`, relies on these names, keep them stable):

| attribute | official name |
|---|---|
| ``pspnet.backbone.layer0`` .. ``layer4`` | ``layer0`` .. ``layer4`` |
| ``pspnet.ppm.branches.{i}`` | ``ppm.features.{i}`` |
| ``pspnet.classifier.{0,1}`` | ``cls.{0,1}`` |
| ``pspnet.classifier.4`` | ``base_learnear.2`` |
| ``query_reduce.0`` | ``down_query.0`` |
| ``support_reduce.0`` | ``down_supp.0`` |
| ``query_merge.0`` | ``query_merge.0`` |
| ``support_merge.0`` | ``supp_merge.0`` |
| ``hierarchy.stages.{i}.patch_embed.{projection,norm}`` | ``transformer.mix_transformer.down_sample_layers.{i}.0.{projection,norm}`` |
| ``hierarchy.stages.{i}.encoder_layers.{j}`` (j = 0, 1) | ``...down_sample_layers.{i}.{j+1}`` |
| ``hierarchy.stages.{i}.norm`` | ``...down_sample_layers.{i}.3`` |
| ``matching.{i}.cross_layer`` | ``transformer.mix_transformer.match_layers.{i}.0`` |
| ``matching.{i}.fuse.0`` / ``fuse.1`` | ``...match_layers.{i}.1.conv`` / ``.1.bn`` |
| ``decoder.stage_blocks.{i}`` | ``transformer.mix_transformer.parse_layers.{i}`` |
| ``decoder.classifier`` | ``transformer.mix_transformer.cls`` |
| ``ensemble.scene_merge`` | ``gram_merge`` |
| ``ensemble.base_merge`` | ``cls_merge`` |
| ``ensemble.shot_weighting.{0,2}`` (K > 1) | ``kshot_rw.{0,2}`` |

Inside an encoder layer (hierarchy and matching alike): ``norm1``, ``norm2`` as
official; ``attention.{q,k,v,out}_proj`` = ``attn.attn.linear_{q,k,v,o}``;
``attention.reduce`` / ``attention.reduce_norm`` = ``attn.sr`` / ``attn.norm``;
``ffn.expand`` / ``ffn.depthwise`` / ``ffn.project`` = ``ffn.layers.0`` / ``.1`` / ``.4``.
Stage index ``i`` counts from the finest stage (0), as official.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hdmnet_core.config import ModelConfig
from hdmnet_core.model.decoder import CoarseToFineDecoder
from hdmnet_core.model.ensemble import BaseLearnerEnsemble, gram_difference, gram_matrix
from hdmnet_core.model.hierarchy import DecoupledHierarchy
from hdmnet_core.model.losses import episode_losses
from hdmnet_core.model.matching import CorrelationAttention, MatchingStage
from hdmnet_core.model.priors import ForegroundColumns, masked_average_prototype, prior_mask
from hdmnet_core.model.pspnet import PSPNet

PRIOR_CHANNELS = 2
"""Prior masks from ``feat5`` (channel 0) and ``layer4`` (channel 1), official order."""

PRIOR_SCALE = 10.0
"""Official: the priors enter ``query_merge`` multiplied by 10 (not in the matching)."""

REDUCE_DROPOUT = 0.5
"""Official ``Dropout2d(p=0.5)`` after the ``down_*`` convs."""

EXACT_SPEEDUPS: dict[str, str] = {
    "batched_backbone": "query and masked supports through the frozen backbone in one "
    "call (needs every frozen BatchNorm in eval mode: fix_bn or .eval()); slower on a "
    "2-core CPU at 473 (larger working set), so not a default",
    "support_feat5_in_box": "support feat5 (3x3 conv 4096->512) only around the mask's "
    "box: the priors read it only after multiplying by the mask",
    "foreground_prior": "prior cosines for foreground support positions only: the "
    "official zeroed background vectors all give cosine 0",
    "pooled_branch_conv": "classifier conv over the pyramid branches at their pooled size "
    "(bins 1..6) instead of on the upsampled 60 x 60 maps",
    "batched_hierarchy": "query and support maps through the decoupled hierarchy in one call",
    "foreground_matching": "correlation attention scored for foreground support tokens "
    "only: background tokens' values are zeroed after their own softmax row, so those "
    "rows add exactly 0 (and get no gradient)",
}
"""Named exact speed-ups (same outputs as the official dataflow up to float rounding);
:meth:`HDMNet.use_speedups` picks a subset (the speed benchmark measures what each one
buys, docs/benchmarks.md)."""

DEFAULT_SPEEDUPS: tuple[str, ...] = (
    "support_feat5_in_box",
    "foreground_prior",
    "pooled_branch_conv",
    "batched_hierarchy",
    "foreground_matching",
)
"""On with ``ModelConfig.exact_speedups`` (default): the ones measured faster on CPU."""


@dataclass
class HDMNetOutput:
    """What :meth:`HDMNet.forward` returns.

    Attributes:
        final_logits: (B, 2, H, W) ensemble output at input size. As official, it mixes
            probabilities (see :mod:`.ensemble`) and is used as logits. Equal to
            ``meta_logits`` when the ensemble is off.
        meta_logits: (B, 2, H, W) meta learner (decoder) logits.
        base_logits: (B, num_base_classes + 1, H, W) frozen base learner logits.
        distill_maps: coarse -> fine, each (B, h_l, w_l): Eq. 7 per stage (raw scores
            averaged over foreground support tokens and heads), at the stage's grid.
        losses: named terms (``final_ce``, ``meta_ce``, ``distill``, ``base_ce`` when
            ``query_base_label`` is given, ``total``) when ``query_mask`` is given.
    """

    final_logits: torch.Tensor
    meta_logits: torch.Tensor
    base_logits: torch.Tensor
    distill_maps: list[torch.Tensor]
    losses: dict[str, torch.Tensor] | None = None


def reduce_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Official ``down_query`` / ``down_supp``: 1x1 conv (no bias), ReLU, Dropout2d 0.5."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=REDUCE_DROPOUT),
    )


def merge_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Official ``query_merge`` / ``supp_merge``: 1x1 conv (no bias), ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.ReLU(inplace=True),
    )


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (official for features and outputs)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def mid_features(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """``cat(layer3, layer2)``; ``layer2`` is resized to ``layer3``'s size first (VGG).
    A ``mid`` entry (the feature cache stores this concatenation) is used as it is."""
    if "mid" in features:
        return features["mid"]
    layer3 = features["layer3"]
    layer2 = resize_to(features["layer2"], layer3.shape[-2:])
    return torch.cat([layer3, layer2], dim=1)


def stage_support_fg(support_fg: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, K, H, W) masks -> (B, K * h * w) foreground flags at a stage's support grid
    (nearest, as official), shots concatenated in the same order as the tokens."""
    b, k = support_fg.shape[:2]
    fg = F.interpolate(support_fg.flatten(0, 1)[:, None].float(), size=size, mode="nearest")
    return fg.reshape(b, k * size[0] * size[1])


class HDMNet(nn.Module):
    """Hierarchically Decoupled Matching Network with the BAM ensemble.

    Args:
        model_config: options (``num_stages``, ``width``, ``matching``,
            ``matching_temperature`` t, ``distill_temperature`` T, ``distillation``,
            ``ensemble``, ``fix_bn``, ``kshot_weighting``, ``backbone``).
        num_base_classes: base classes of the fold (PASCAL 15, COCO 60); the base
            learner has ``num_base_classes + 1`` channels.
        shots: K; ``forward`` requires exactly K support images.
    """

    def __init__(self, model_config: ModelConfig, num_base_classes: int, shots: int) -> None:
        super().__init__()
        if not 1 <= model_config.num_stages <= 4:
            raise ValueError(f"model_config.num_stages={model_config.num_stages} must be in 1..4")
        if num_base_classes < 1:
            raise ValueError(f"num_base_classes={num_base_classes} must be >= 1")
        if shots < 1:
            raise ValueError(f"shots={shots} must be >= 1")
        self.config = model_config
        self.num_base_classes = num_base_classes
        self.shots = shots
        self.fix_bn = model_config.fix_bn
        width = model_config.width
        reduced = 4 * width  # official 256 for width 64

        self.pspnet = PSPNet(model_config.backbone, num_base_classes + 1).freeze()
        mid_channels = self.pspnet.channels["layer2"] + self.pspnet.channels["layer3"]
        self.query_reduce = reduce_block(mid_channels, reduced)
        self.support_reduce = reduce_block(mid_channels, reduced)
        self.query_merge = merge_block(2 * reduced + PRIOR_CHANNELS, width)
        self.support_merge = merge_block(2 * reduced, width)
        self.hierarchy = DecoupledHierarchy(width, model_config.num_stages)
        self.matching = nn.ModuleList(
            MatchingStage(width, model_config.matching, model_config.matching_temperature)
            for _ in range(model_config.num_stages)
        )
        self.decoder = CoarseToFineDecoder(width, model_config.num_stages)
        self.ensemble: BaseLearnerEnsemble | None = None
        if model_config.ensemble:
            self.ensemble = BaseLearnerEnsemble(shots, model_config.kshot_weighting)
        self.speedups: frozenset[str] = frozenset()
        self.use_speedups(DEFAULT_SPEEDUPS if model_config.exact_speedups else ())
        self.inference_only = False
        """True for the evaluation-only copies of :func:`.inference.inference_copy`."""
        self.train()  # apply fix_bn from the start

    def use_speedups(self, names: Iterable[str]) -> HDMNet:
        """Turn on exactly the named :data:`EXACT_SPEEDUPS` (others off). Returns self."""
        chosen = frozenset(names)
        unknown = sorted(chosen - EXACT_SPEEDUPS.keys())
        if unknown:
            raise ValueError(f"HDMNet: unknown speed-ups {unknown}; known: {list(EXACT_SPEEDUPS)}")
        self.speedups = chosen
        self.pspnet.pooled_branch_conv = "pooled_branch_conv" in chosen
        for module in self.matching.modules():
            if isinstance(module, CorrelationAttention):
                module.foreground_rows = "foreground_matching" in chosen
        return self

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> HDMNet:
        """With ``fix_bn`` (official default) every BatchNorm, frozen or not, stays in eval
        mode, so BN acts as a fixed affine map during meta-training (reference §4.6).
        Without it every BatchNorm trains, the frozen backbone's included, as official."""
        if mode and getattr(self, "inference_only", False):
            raise RuntimeError(
                "HDMNet: this is an evaluation-only copy (inference_copy: folded BatchNorms); "
                "train the original model instead"
            )
        super().train(mode)
        if mode and self.fix_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        query_image: torch.Tensor,
        support_images: torch.Tensor,
        support_masks: torch.Tensor,
        query_mask: torch.Tensor | None = None,
        query_base_label: torch.Tensor | None = None,
        base_channel: torch.Tensor | None = None,
    ) -> HDMNetOutput:
        """Segment the query given K annotated supports.

        Args:
            query_image: (B, 3, H, W) normalised image.
            support_images: (B, K, 3, H', W'), K = ``shots``.
            support_masks: (B, K, H', W'), 1 = target class, 0 = rest, 255 = ignore.
            query_mask: (B, H, W) same coding; when given, ``losses`` are computed.
            query_base_label: (B, H, W) base-learner labels, for the ``base_ce`` log term.
            base_channel: (B,) base-learner channel of the episode class. In training mode
                it is left out of the base learner's foreground map (official BAM
                ``base_map``); in eval mode it is ignored, as official.
        """
        self.check_inputs(
            query_image, support_images, support_masks, query_mask, query_base_label, base_channel
        )
        support_fg = (support_masks == 1).to(query_image.dtype)  # (B, K, H, W)
        query_feats, support_feats = self.frozen_features(query_image, support_images, support_fg)
        out = self.forward_from_features(
            query_feats, support_feats, support_fg, query_image.shape[-2:], base_channel
        )
        if query_mask is not None:
            out.losses = episode_losses(
                out.final_logits,
                out.meta_logits,
                out.base_logits,
                out.distill_maps,
                query_mask,
                query_base_label,
                distillation=self.config.distillation,
                ensemble=self.ensemble is not None,
                distill_temperature=self.config.distill_temperature,
            )
        return out

    def forward_from_features(
        self,
        query_feats: dict[str, torch.Tensor],
        support_feats: dict[str, torch.Tensor],
        support_fg: torch.Tensor,
        size: tuple[int, int] | torch.Size,
        base_channel: torch.Tensor | None = None,
        support_columns: dict[str, ForegroundColumns] | None = None,
    ) -> HDMNetOutput:
        """Everything after :meth:`frozen_features` (priors, meta learner, ensemble), without
        losses; logits resized to ``size``. The feature-cached evaluation
        (``engine.feature_cache``) calls it with stored frozen features.

        Reads ``layer2``, ``layer3``, ``layer4`` and ``feat5`` of the query (B, ...) and of
        the supports (B*K, ...); support ``layer4`` / ``feat5`` only at the foreground
        positions of ``support_fg`` (B, K, H, W) nearest-resized to their grid. What the
        feature cache stores may replace them: ``mid`` (:func:`mid_features`) for
        ``layer2`` / ``layer3``, ``layer2_gram`` (:func:`gram_matrix` of ``layer2``) for the
        scene difference, and ``support_columns`` (the support ``layer4`` / ``feat5``
        foreground columns) for the support maps of the priors.
        """
        with torch.no_grad():
            priors = self.prior_masks(query_feats, support_feats, support_fg, support_columns)
            base_small = self.pspnet.base_learner_logits(query_feats["feat5"])  # (B, C+1, h, w)
        query_x, support_x = self.merged_features(query_feats, support_feats, support_fg, priors)
        meta_small, distill_maps = self.meta_learner(query_x, support_x, support_fg, priors)

        final_small = meta_small
        if self.ensemble is not None:
            with torch.no_grad():
                differences = self.scene_differences(query_feats, support_feats)  # (B, K)
            excluded = base_channel if self.training else None
            base_for_merge = resize_to(base_small, meta_small.shape[-2:])
            final_small = self.ensemble(meta_small, base_for_merge, differences, excluded)

        return HDMNetOutput(
            final_logits=resize_to(final_small, size),
            meta_logits=resize_to(meta_small, size),
            base_logits=resize_to(base_small, size),
            distill_maps=distill_maps,
        )

    def frozen_features(
        self, query_image: torch.Tensor, support_images: torch.Tensor, support_fg: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Frozen PSPNet features of the query (B, ...) and the masked supports (B*K, ...).

        Official order: query, then supports. Speed-ups (when every frozen BatchNorm is
        in eval mode, so that no image's features depend on the others):
        ``batched_backbone`` (one call when the sizes match) and ``support_feat5_in_box``.
        """
        with torch.no_grad():
            supports = (support_images * support_fg[:, :, None]).flatten(0, 1)  # (B*K, 3, H, W)
            fixed_statistics = not self.pspnet.uses_batch_statistics()
            support_region = None
            if fixed_statistics and "support_feat5_in_box" in self.speedups:
                # support feat5 is read only by the priors, after masking: compute it
                # around the mask's box only (exact there; see PSPNet.frozen_features)
                support_region = support_fg.flatten(0, 1)
            if (
                fixed_statistics
                and "batched_backbone" in self.speedups
                and supports.shape[-2:] == query_image.shape[-2:]
            ):
                query_feats, support_feats = self.pspnet.frozen_features_batched(
                    [query_image, supports], feat5_regions=[None, support_region]
                )
            else:
                query_feats = self.pspnet.frozen_features(query_image)
                support_feats = self.pspnet.frozen_features(supports, feat5_region=support_region)
        return query_feats, support_feats

    def prior_masks(
        self,
        query_feats: dict[str, torch.Tensor],
        support_feats: dict[str, torch.Tensor],
        support_fg: torch.Tensor,
        support_columns: dict[str, ForegroundColumns] | None = None,
    ) -> torch.Tensor:
        """(B, 2, h, w) priors from ``feat5`` and ``layer4``, at the mid-feature size.
        ``support_columns``: the supports' foreground columns instead of their maps."""
        b, k = support_fg.shape[:2]
        priors = []
        for name in ("feat5", "layer4"):
            support: torch.Tensor | ForegroundColumns
            if support_columns is not None:
                support = support_columns[name]
            else:
                support = support_feats[name].unflatten(0, (b, k))
            foreground_only = "foreground_prior" in self.speedups
            priors.append(prior_mask(query_feats[name], support, support_fg, foreground_only))
        return resize_to(torch.cat(priors, dim=1), mid_features(query_feats).shape[-2:])

    def scene_differences(
        self, query_feats: dict[str, torch.Tensor], support_feats: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """BAM's per-shot scene difference on ``layer2`` (official ``low_fea``): (B, K).
        Stored ``layer2_gram`` entries are used instead of recomputing the Gram matrices."""
        query_gram = query_feats.get("layer2_gram")
        if query_gram is None:
            query_gram = gram_matrix(query_feats["layer2"])  # (B, C, C)
        support_gram = support_feats.get("layer2_gram")
        if support_gram is None:
            support_gram = gram_matrix(support_feats["layer2"])  # (B*K, C, C)
        return gram_difference(query_gram, support_gram.unflatten(0, (query_gram.shape[0], -1)))

    def merged_features(
        self,
        query_feats: dict[str, torch.Tensor],
        support_feats: dict[str, torch.Tensor],
        support_fg: torch.Tensor,
        priors: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query (B, width, h, w) and support (B*K, width, h, w) inputs of the hierarchy."""
        b, k = support_fg.shape[:2]
        query_mid = self.query_reduce(mid_features(query_feats))  # (B, 4w, h, w)
        support_mid = self.support_reduce(mid_features(support_feats))  # (B*K, 4w, h, w)
        fg_mid = resize_to(support_fg.flatten(0, 1)[:, None], support_mid.shape[-2:])
        prototypes = masked_average_prototype(support_mid, fg_mid)  # (B*K, 4w, 1, 1)
        support_x = self.support_merge(
            torch.cat([support_mid, prototypes.expand_as(support_mid)], dim=1)
        )
        mean_prototype = prototypes.unflatten(0, (b, k)).mean(dim=1)  # (B, 4w, 1, 1)
        query_x = self.query_merge(
            torch.cat(
                [
                    query_mid,
                    mean_prototype.expand_as(query_mid),
                    PRIOR_SCALE * priors.to(query_mid.dtype),
                ],
                dim=1,
            )
        )
        return query_x, support_x

    def meta_learner(
        self,
        query_x: torch.Tensor,
        support_x: torch.Tensor,
        support_fg: torch.Tensor,
        priors: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Hierarchy -> matching per stage -> decoder.

        Returns meta logits (B, 2, h_0, w_0) and the distillation maps coarse -> fine."""
        b, k = support_fg.shape[:2]
        if "batched_hierarchy" in self.speedups and query_x.shape[-2:] == support_x.shape[-2:]:
            maps = self.hierarchy(torch.cat([query_x, support_x], dim=0))
            query_maps, support_maps = [m[:b] for m in maps], [m[b:] for m in maps]
        else:
            query_maps, support_maps = self.hierarchy(query_x), self.hierarchy(support_x)

        matched, distill_maps = [], []
        for stage, query_map, support_map in zip(
            self.matching, query_maps, support_maps, strict=True
        ):
            width, hs, ws = support_map.shape[1:]
            support_tokens = support_map.flatten(2).transpose(1, 2)  # (B*K, hs*ws, C)
            support_tokens = support_tokens.reshape(b, k * hs * ws, width)  # (B, K*Ns, C)
            fg = stage_support_fg(support_fg, (hs, ws))  # (B, K*Ns)
            stage_priors = resize_to(priors, query_map.shape[-2:])
            out, distill_map = stage(query_map, support_tokens, fg, stage_priors)
            matched.append(out)
            distill_maps.append(distill_map)
        return self.decoder(matched), distill_maps[::-1]

    # ------------------------------------------------------------- checks
    def check_inputs(
        self,
        query_image: torch.Tensor,
        support_images: torch.Tensor,
        support_masks: torch.Tensor,
        query_mask: torch.Tensor | None,
        query_base_label: torch.Tensor | None,
        base_channel: torch.Tensor | None,
    ) -> None:
        """Raise ``ValueError`` naming the argument whose shape or type is wrong."""
        for name, value in (
            ("query_image", query_image),
            ("support_images", support_images),
            ("support_masks", support_masks),
        ):
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"HDMNet: {name} must be a torch.Tensor, got {type(value).__name__}"
                )
        if query_image.ndim != 4 or query_image.shape[1] != 3:
            raise ValueError(
                f"HDMNet: query_image must have shape (B, 3, H, W), got {tuple(query_image.shape)}"
            )
        if not query_image.is_floating_point():
            raise ValueError(f"HDMNet: query_image must be floating point, got {query_image.dtype}")
        b, _, h, w = query_image.shape
        if support_images.ndim != 5 or support_images.shape[2] != 3 or support_images.shape[0] != b:
            raise ValueError(
                f"HDMNet: support_images must have shape (B={b}, K, 3, H, W), "
                f"got {tuple(support_images.shape)}"
            )
        k = support_images.shape[1]
        if k != self.shots:
            raise ValueError(
                f"HDMNet: support_images has K={k} shots but the model was built for shots={self.shots}"
            )
        expected_masks = (b, k, *support_images.shape[-2:])
        if tuple(support_masks.shape) != expected_masks:
            raise ValueError(
                f"HDMNet: support_masks must have shape {expected_masks} (one mask per support "
                f"image, same size), got {tuple(support_masks.shape)}"
            )
        for name, label in (("query_mask", query_mask), ("query_base_label", query_base_label)):
            if label is not None and tuple(label.shape) != (b, h, w):
                raise ValueError(
                    f"HDMNet: {name} must have shape (B, H, W) = {(b, h, w)}, got {tuple(label.shape)}"
                )
        if query_base_label is not None and query_mask is None:
            raise ValueError("HDMNet: query_base_label is given without query_mask")
        if base_channel is not None:
            if tuple(base_channel.shape) != (b,):
                raise ValueError(
                    f"HDMNet: base_channel must have shape (B,) = ({b},), got {tuple(base_channel.shape)}"
                )
            if bool(((base_channel < 0) | (base_channel > self.num_base_classes)).any()):
                raise ValueError(
                    f"HDMNet: base_channel values must be in 0..{self.num_base_classes}, "
                    f"got {base_channel.tolist()}"
                )

    # ------------------------------------------------------------ optimizer
    def new_layers(self) -> list[nn.Module]:
        """Layers trained at ``lr * multiplier`` (official ``down_*`` and ``*_merge``)."""
        layers: list[nn.Module] = [
            self.query_reduce,
            self.support_reduce,
            self.query_merge,
            self.support_merge,
        ]
        if self.ensemble is not None:
            layers += [self.ensemble.scene_merge, self.ensemble.base_merge]
            if self.ensemble.shot_weighting is not None and self.config.kshot_weighting == "fixed":
                layers.append(self.ensemble.shot_weighting)
        return layers

    def trainable_parameter_groups(self, lr: float, multiplier: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups (reference §4.6).

        Hierarchy, matching and decoder (official ``transformer``) at ``lr``; ``down_*``
        and ``*_merge`` at ``lr * multiplier``. With ``kshot_weighting="official"`` the
        shot-weighting MLP (official ``kshot_rw``) is in no group: the official optimizer
        leaves it out, so it keeps its initial weights (reference §4.4). ``"fixed"``
        trains it with the new layers.
        """
        transformer = [self.hierarchy, self.matching, self.decoder]
        return [
            {"params": [p for m in transformer for p in m.parameters()], "lr": lr},
            {
                "params": [p for m in self.new_layers() for p in m.parameters()],
                "lr": lr * multiplier,
            },
        ]

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (reference §5 lists the official numbers)."""

        def count(module: nn.Module | None) -> int:
            return 0 if module is None else sum(p.numel() for p in module.parameters())

        return {
            "total": count(self),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "frozen": count(self.pspnet),
            "hierarchy": count(self.hierarchy),
            "matching": count(self.matching),
            "decoder": count(self.decoder),
            "query_reduce": count(self.query_reduce),
            "support_reduce": count(self.support_reduce),
            "query_merge": count(self.query_merge),
            "support_merge": count(self.support_merge),
            "ensemble": count(self.ensemble),
        }
