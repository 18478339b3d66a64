"""What the notebooks look inside the model with: the model's own parts, step by step.

Every function here calls the parts of :class:`hdmnet_core.model.hdmnet.HDMNet` in the
order its ``forward`` does (frozen features, priors, merged features, hierarchy,
matching, decoder, ensemble) and returns the intermediate tensors, so a notebook can
draw them without re-implementing a line of the model. The notebooks' ``parameters``
cells go through :func:`notebook_config` and ``resolve_device`` (the engine's, re-exported
here), the same code on CPU and GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from hdmnet_core.config import Config
from hdmnet_core.data.episodes import build_episode_dataset, collate_episodes
from hdmnet_core.data.source import SegmentationSource
from hdmnet_core.engine.build import build_meta_model, resolve_device
from hdmnet_core.model.hdmnet import HDMNet, resize_to, stage_support_fg
from hdmnet_core.model.hierarchy import split_heads
from hdmnet_core.model.losses import distillation_kl, ground_truth_teacher
from hdmnet_core.model.matching import (
    MatchingKind,
    MatchingStage,
    correlation_scores,
    prepare_scoring,
    query_axis_attention,
)

SoftmaxAxis = Literal["query", "support"]


# ------------------------------------------------------------------ set-up
def notebook_config(
    profile: str,
    data_root: str,
    overrides: dict[str, Any] | None = None,
    *,
    fold: int | None = None,
    shots: int | None = None,
) -> Config:
    """The notebook's config: ``profile`` + ``overrides`` (what ``reproduce`` passes),
    then the notebook's own ``fold`` / ``shots`` parameters when they are not ``None``."""
    named: dict[str, Any] = {}
    if fold is not None:
        named["data.fold"] = fold
    if shots is not None:
        named["data.shots"] = shots
    return Config.from_profile(profile, **{"data.root": data_root, **(overrides or {}), **named})


def seeded_model(config: Config, seed: int, device: torch.device | str = "cpu") -> HDMNet:
    """A randomly initialised HDMNet for ``config``'s fold and shots, in eval mode.

    The same ``seed`` gives the same weights on every machine (initialised on the CPU,
    then moved), so the notebooks' numbers are reproducible before any training."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_meta_model(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval().to(device)


def evaluation_episodes(
    config: Config, source: SegmentationSource, seed: int, count: int
) -> dict[str, Any]:
    """The first ``count`` evaluation episodes of ``seed`` (no augmentation), one batch."""
    dataset = build_episode_dataset(config, "val", source, seed=seed, augment=False)
    if not 1 <= count <= len(dataset):
        raise ValueError(f"count={count} must be in 1..{len(dataset)} (episodes of seed {seed})")
    return collate_episodes([dataset[i] for i in range(count)])


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor on ``device`` (lists left as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ------------------------------------------------------------------ the model step by step
@dataclass
class ModelTrace:
    """Intermediate tensors of one forward pass (B episodes, K shots).

    ``query_maps`` / ``support_maps``: the decoupled hierarchy's maps finest first,
    (B, C, h_l, w_l) and (B*K, C, h_l, w_l); ``priors`` (B, 2, h, w) from ``feat5`` and
    ``layer4``; ``meta_logits`` (B, 2, h_0, w_0) and ``distill_maps`` coarse to fine.
    """

    support_fg: torch.Tensor
    query_feats: dict[str, torch.Tensor]
    support_feats: dict[str, torch.Tensor]
    priors: torch.Tensor
    query_x: torch.Tensor
    support_x: torch.Tensor
    query_maps: list[torch.Tensor]
    support_maps: list[torch.Tensor]
    meta_logits: torch.Tensor
    distill_maps: list[torch.Tensor]


@torch.no_grad()
def trace_model(
    model: HDMNet,
    query_image: torch.Tensor,
    support_images: torch.Tensor,
    support_masks: torch.Tensor,
) -> ModelTrace:
    """Run the model's parts in ``forward``'s order and keep what each returns."""
    support_fg = (support_masks == 1).to(query_image.dtype)  # (B, K, H, W)
    query_feats, support_feats = model.frozen_features(query_image, support_images, support_fg)
    priors = model.prior_masks(query_feats, support_feats, support_fg)  # (B, 2, h, w)
    query_x, support_x = model.merged_features(query_feats, support_feats, support_fg, priors)
    meta_logits, distill_maps = model.meta_learner(query_x, support_x, support_fg, priors)
    return ModelTrace(
        support_fg=support_fg,
        query_feats=query_feats,
        support_feats=support_feats,
        priors=priors,
        query_x=query_x,
        support_x=support_x,
        query_maps=model.hierarchy(query_x),
        support_maps=model.hierarchy(support_x),
        meta_logits=meta_logits,
        distill_maps=distill_maps,
    )


@dataclass
class StageCorrelation:
    """Correlation of one matching stage, support-major as the model stores it.

    ``scores`` and ``attention`` (B, heads, K*Ns, Nq); ``support_fg`` (B, K*Ns);
    ``received`` (B, h, w): per query position, the attention it receives from the
    foreground support tokens, averaged over heads (the weight of the values it
    retrieves, Eq. 6); ``query_hw`` / ``support_hw`` the two grids.
    """

    scores: torch.Tensor
    attention: torch.Tensor
    support_fg: torch.Tensor
    received: torch.Tensor
    query_hw: tuple[int, int]
    support_hw: tuple[int, int]


@torch.no_grad()
def stage_correlation(
    model: HDMNet,
    trace: ModelTrace,
    stage: int,
    *,
    temperature: float | None = None,
    matching: MatchingKind | None = None,
    softmax_axis: SoftmaxAxis = "query",
) -> StageCorrelation:
    """Eqs. 4-5 of matching stage ``stage`` (0 = finest), with the stage's own weights.

    ``temperature`` (t) and ``matching`` default to the model's; ``softmax_axis="support"``
    is the usual cross-attention softmax (each query position's weights sum to 1 over
    the support tokens) for comparison with the paper's query-axis softmax (each support
    token's weights sum to 1 over the query positions).
    """
    if not 0 <= stage < len(model.matching):
        raise ValueError(f"stage={stage} must be in 0..{len(model.matching) - 1}")
    matching_stage = model.matching[stage]
    assert isinstance(matching_stage, MatchingStage)
    layer = matching_stage.cross_layer
    attention_module = layer.attention
    query_map, support_map = trace.query_maps[stage], trace.support_maps[stage]
    b, k = trace.support_fg.shape[:2]
    width, hs, ws = support_map.shape[1:]
    hq, wq = query_map.shape[-2:]
    query_tokens = layer.norm1(query_map.flatten(2).transpose(1, 2))  # (B, Nq, C)
    support_tokens = support_map.flatten(2).transpose(1, 2).reshape(b, k * hs * ws, width)
    support_tokens = layer.norm1(support_tokens)  # (B, K*Ns, C)
    heads = attention_module.heads
    q = split_heads(attention_module.q_proj(query_tokens), heads)  # (B, h, Nq, d)
    key = split_heads(attention_module.k_proj(support_tokens), heads)  # (B, h, K*Ns, d)
    q, key, scale = prepare_scoring(
        q,
        key,
        matching or attention_module.matching,
        attention_module.temperature if temperature is None else temperature,
    )
    scores = correlation_scores(q, key, scale)  # (B, h, K*Ns, Nq)
    if softmax_axis == "query":
        attention = query_axis_attention(scores)
    elif softmax_axis == "support":
        attention = scores.softmax(dim=-2)
    else:
        raise ValueError(f"softmax_axis={softmax_axis!r} must be 'query' or 'support'")
    fg = stage_support_fg(trace.support_fg, (hs, ws))  # (B, K*Ns)
    received = torch.einsum("bhsq,bs->bq", attention, fg) / heads  # (B, Nq)
    return StageCorrelation(
        scores=scores,
        attention=attention,
        support_fg=fg,
        received=received.reshape(b, hq, wq),
        query_hw=(hq, wq),
        support_hw=(hs, ws),
    )


@torch.no_grad()
def coupled_query_maps(
    model: HDMNet, query_x: torch.Tensor, support_maps: list[torch.Tensor], support_fg: torch.Tensor
) -> list[torch.Tensor]:
    """Query maps of a *coupled* hierarchy (paper Fig. 3, the design HDMNet avoids).

    The query passes the same stages, but after each one it is cross-attended to the
    support map of that stage (the stage's own matching layer, its update added as a
    residual) before the next down-sampling, so support information is stacked into the
    query features from the first stage on. ``support_maps`` are the decoupled ones
    (B*K, C, h_l, w_l), finest first; returns (B, C, h_l, w_l) finest first.
    """
    b, k = support_fg.shape[:2]
    maps, feature_map = [], query_x
    for stage, matching, support_map in zip(
        model.hierarchy.stages, model.matching, support_maps, strict=True
    ):
        feature_map = stage(feature_map)  # (B, C, h, w)
        width, hs, ws = support_map.shape[1:]
        h, w = feature_map.shape[-2:]
        support_tokens = support_map.flatten(2).transpose(1, 2).reshape(b, k * hs * ws, width)
        fg = stage_support_fg(support_fg, (hs, ws))
        assert isinstance(matching, MatchingStage)
        tokens, _ = matching.cross_layer(
            feature_map.flatten(2).transpose(1, 2), (h, w), support_tokens, fg
        )
        feature_map = tokens.transpose(1, 2).reshape(b, width, h, w)
        maps.append(feature_map)
    return maps


def relative_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[float]:
    """Per stage ``||after - before|| / ||before||`` (0 = the maps did not change)."""
    return [
        float((a.detach() - x.detach()).norm() / x.detach().norm().clamp_min(1e-12))
        for x, a in zip(before, after, strict=True)
    ]


# ------------------------------------------------------------------ distillation
def distillation_terms(
    distill_maps: list[torch.Tensor], query_mask: torch.Tensor, temperature: float
) -> list[float]:
    """KL of each stage against its teacher (Eq. 9), coarse to fine.

    The first (coarsest) stage's teacher is the ground truth, each next stage's is the
    previous map, exactly the chain of :func:`hdmnet_core.model.losses.
    correlation_distillation_loss`, whose value is the mean of these terms."""
    teacher = ground_truth_teacher(query_mask)
    terms = []
    for student in distill_maps:
        terms.append(float(distillation_kl(teacher, student, temperature)))
        teacher = student.detach()
    return terms


def teacher_at(teacher: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A teacher map (B, H, W) bilinearly resized as the loss does it (align_corners=False)."""
    return torch.nn.functional.interpolate(
        teacher[:, None].float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]


__all__ = [
    "ModelTrace",
    "StageCorrelation",
    "coupled_query_maps",
    "distillation_terms",
    "evaluation_episodes",
    "notebook_config",
    "relative_change",
    "resize_to",
    "resolve_device",
    "stage_support_fg",
    "seeded_model",
    "stage_correlation",
    "teacher_at",
    "to_device",
    "trace_model",
]
