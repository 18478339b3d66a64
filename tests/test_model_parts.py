"""Unit tests of the meta learner's parts: hierarchy, matching, decoder, priors, ensemble."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hdmnet_core.model.decoder import CoarseToFineDecoder
from hdmnet_core.model.ensemble import (
    BaseLearnerEnsemble,
    base_foreground_map,
    gram_matrix,
    scene_difference,
)
from hdmnet_core.model.hierarchy import DecoupledHierarchy, EfficientSelfAttention
from hdmnet_core.model.matching import (
    CorrelationAttention,
    MatchingKind,
    MatchingStage,
    correlation_scores,
    prepare_scoring,
    query_axis_attention,
)
from hdmnet_core.model.priors import masked_average_prototype, prior_mask


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------- hierarchy
def test_hierarchy_stage_sizes_official_and_odd() -> None:
    torch.manual_seed(0)
    hierarchy = DecoupledHierarchy(width=16, num_stages=3).eval()
    maps = hierarchy(torch.randn(2, 16, 60, 60))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 60, 60), (2, 16, 30, 30), (2, 16, 15, 15)]
    odd = hierarchy(torch.randn(1, 16, 13, 9))
    assert [tuple(m.shape[-2:]) for m in odd] == [(13, 9), (7, 5), (4, 3)]
    four = DecoupledHierarchy(width=16, num_stages=4)(torch.randn(1, 16, 60, 60))
    assert [m.shape[-1] for m in four] == [60, 30, 15, 8]


def test_hierarchy_parameter_counts_match_official() -> None:
    # reference §5: hierarchy 557,120; matching 271,296; parse 1,872,960; cls 608,258.
    assert n_params(DecoupledHierarchy(64, 3)) == 557_120
    assert sum(n_params(MatchingStage(64, "cosine", 0.1)) for _ in range(3)) == 271_296
    decoder = CoarseToFineDecoder(64, 3)
    assert n_params(decoder.stage_blocks) == 1_872_960
    assert n_params(decoder.classifier) == 608_258


def test_hierarchy_is_decoupled_across_samples() -> None:
    """Query and support never mix while down-sampling: a sample's output depends on it only."""
    torch.manual_seed(0)
    hierarchy = DecoupledHierarchy(16, 3).eval()
    x = torch.randn(2, 16, 12, 12)
    changed = x.clone()
    changed[1] = torch.randn(16, 12, 12)
    for a, b in zip(hierarchy(x), hierarchy(changed), strict=True):
        torch.testing.assert_close(a[0], b[0])
        assert not torch.allclose(a[1], b[1])


def test_self_attention_equals_explicit_formula() -> None:
    torch.manual_seed(0)
    attention = EfficientSelfAttention(width=16, heads=4, reduction=2).eval()
    tokens = torch.randn(2, 36, 16)
    source = attention.reduced_tokens(tokens, (6, 6))
    assert source.shape == (2, 9, 16)
    q = attention.q_proj(tokens).reshape(2, 36, 4, 4).transpose(1, 2)
    k = attention.k_proj(source).reshape(2, 9, 4, 4).transpose(1, 2)
    v = attention.v_proj(source).reshape(2, 9, 4, 4).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / (math.sqrt(4) + 1e-9)).softmax(dim=-1)
    expected = attention.out_proj((weights @ v).transpose(1, 2).reshape(2, 36, 16))
    torch.testing.assert_close(attention(tokens, (6, 6)), expected)


# ------------------------------------------------------------------ matching
def naive_masked_attention(
    attention: CorrelationAttention, query: torch.Tensor, support: torch.Tensor, fg: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official formulation: a (Nq x Ns) mask materialised for every query position."""
    b, nq, c = query.shape
    ns = support.shape[1]
    h = attention.heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(b, -1, h, c // h).transpose(1, 2)

    q = F.normalize(heads(attention.q_proj(query)), dim=-1)
    k = F.normalize(heads(attention.k_proj(support)), dim=-1)
    v = heads(attention.v_proj(support))
    scores = q @ k.transpose(-1, -2) / attention.temperature  # (B, h, Nq, Ns)
    mask = fg[:, None, None, :].expand(b, h, nq, ns)
    attn = scores.softmax(dim=-2).masked_fill(mask == 0, 0)
    out = attention.out_proj((attn @ v).transpose(1, 2).reshape(b, nq, c))
    distill = ((scores * mask).sum(-1) / (mask.sum(-1) + 1e-9)).mean(dim=1)
    return out, distill


def test_query_axis_softmax_columns_sum_to_one() -> None:
    torch.manual_seed(0)
    query, support = torch.randn(2, 2, 30, 8), torch.randn(2, 2, 12, 8)
    q, k, scale = prepare_scoring(query, support, "cosine", 0.1)
    scores = correlation_scores(q, k, scale)  # (B, h, Ns, Nq), support-major
    assert scores.shape == (2, 2, 12, 30)
    expected = F.cosine_similarity(query[:, :, None], support[:, :, :, None], dim=-1) / 0.1
    torch.testing.assert_close(scores, expected)
    attention = query_axis_attention(scores)
    # each support token (column of the Nq x Ns correlation) sums to 1 over query positions
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, 2, 12))
    assert not torch.allclose(attention.sum(dim=-2), torch.ones(2, 2, 30))


def test_correlation_attention_equals_official_masked_formula() -> None:
    torch.manual_seed(0)
    attention = CorrelationAttention(width=16, heads=2, temperature=0.1).eval()
    query, support = torch.randn(2, 20, 16), torch.randn(2, 24, 16)
    fg = (torch.rand(2, 24) > 0.5).float()
    out, distill = attention(query, support, fg)
    expected_out, expected_distill = naive_masked_attention(attention, query, support, fg)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(distill, expected_distill)


@pytest.mark.parametrize("foreground_rows", [False, True])
def test_correlation_attention_rows_of_foreground_tokens_only(foreground_rows: bool) -> None:
    """The ``foreground_matching`` speed-up gives the official output, distillation map
    and gradients, with foreground counts that differ across the batch (one is 0)."""
    torch.manual_seed(0)
    official = CorrelationAttention(width=16, heads=2, temperature=0.1).train()
    fast = CorrelationAttention(width=16, heads=2, temperature=0.1).train()
    fast.load_state_dict(official.state_dict())
    fast.foreground_rows = foreground_rows
    official.dropout.p = fast.dropout.p = 0.0  # same outputs without sharing the RNG
    query, support = torch.randn(3, 20, 16), torch.randn(3, 24, 16)
    fg = torch.zeros(3, 24)
    fg[0, [2, 5, 23]] = 1
    fg[1, 7:19] = 1
    runs = []
    for module in (official, fast):
        q, s = query.clone().requires_grad_(), support.clone().requires_grad_()
        out, distill = module(q, s, fg)
        (out.square().sum() + distill.sum()).backward()
        grads = [q.grad, s.grad] + [p.grad for p in module.parameters()]
        runs.append((out, distill, grads))
    (out_a, distill_a, grads_a), (out_b, distill_b, grads_b) = runs
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(distill_b, distill_a)
    for got, want in zip(grads_b, grads_a, strict=True):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(out_a[2], official.out_proj(torch.zeros(20, 16)))  # no fg


def test_background_support_tokens_have_no_effect() -> None:
    torch.manual_seed(0)
    stage = MatchingStage(width=16, matching="cosine", temperature=0.1).eval()
    query_map = torch.randn(2, 16, 5, 4)
    support = torch.randn(2, 30, 16)
    fg = torch.zeros(2, 30)
    fg[:, :12] = 1
    priors = torch.rand(2, 2, 5, 4)
    out, distill = stage(query_map, support, fg, priors)
    changed = support.clone()
    changed[:, 12:] = 100 * torch.randn(2, 18, 16)
    out2, distill2 = stage(query_map, changed, fg, priors)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(distill, distill2)
    changed[:, 0] += 1.0  # a foreground token does matter
    out3, _ = stage(query_map, changed, fg, priors)
    assert not torch.allclose(out, out3)
    assert distill.shape == (2, 5, 4)


def test_no_foreground_support_gives_zero_distill_map() -> None:
    torch.manual_seed(0)
    attention = CorrelationAttention(width=8).eval()
    _, distill = attention(torch.randn(1, 6, 8), torch.randn(1, 5, 8), torch.zeros(1, 5))
    torch.testing.assert_close(distill, torch.zeros(1, 6))


def test_cosine_matching_ignores_key_scale_but_dot_does_not() -> None:
    torch.manual_seed(0)
    query, support, fg = torch.randn(1, 10, 16), torch.randn(1, 12, 16), torch.ones(1, 12)
    cases: list[tuple[MatchingKind, bool]] = [("cosine", True), ("dot", False)]
    for matching, invariant in cases:
        attention = CorrelationAttention(16, matching=matching).eval()
        before, _ = attention(query, support, fg)
        with torch.no_grad():
            attention.k_proj.weight.mul_(3.0)
        after, _ = attention(query, support, fg)
        assert torch.allclose(before, after, atol=1e-5) == invariant, matching


def test_matching_temperature_changes_output() -> None:
    torch.manual_seed(0)
    attention = CorrelationAttention(16, temperature=0.1).eval()
    query, support, fg = torch.randn(1, 10, 16), torch.randn(1, 12, 16), torch.ones(1, 12)
    out1, distill1 = attention(query, support, fg)
    attention.temperature = 0.5
    out2, distill2 = attention(query, support, fg)
    assert not torch.allclose(out1, out2)
    torch.testing.assert_close(distill1 * 0.1, distill2 * 0.5)


def test_identical_shots_documented_behaviour() -> None:
    """K copies of one shot: the distillation map is unchanged and the attention update is
    K times the one-shot update (each support column is normalised separately)."""
    torch.manual_seed(0)
    attention = CorrelationAttention(16).eval()
    query, support = torch.randn(1, 10, 16), torch.randn(1, 12, 16)
    fg = (torch.rand(1, 12) > 0.3).float()
    one, distill_one = attention(query, support, fg)
    five, distill_five = attention(query, support.repeat(1, 5, 1), fg.repeat(1, 5))
    torch.testing.assert_close(five, 5 * one)
    torch.testing.assert_close(distill_five, distill_one)


# ------------------------------------------------------------------- decoder
def test_decoder_follows_eq1() -> None:
    torch.manual_seed(0)
    decoder = CoarseToFineDecoder(width=8, num_stages=2).eval()
    fine, coarse = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 3, 3)
    coarse_out = decoder.stage_blocks[1](coarse)
    up = F.interpolate(coarse_out, size=(6, 6), mode="bilinear", align_corners=False)
    expected = decoder.classifier(up + decoder.stage_blocks[0](fine + up))
    torch.testing.assert_close(decoder([fine, coarse]), expected)
    assert expected.shape == (1, 2, 6, 6)
    with pytest.raises(ValueError, match="expected 2 matched maps"):
        decoder([fine])


# -------------------------------------------------------------------- priors
@pytest.mark.parametrize("foreground_only", [False, True])
def test_prior_mask_equals_loop_definition(foreground_only: bool) -> None:
    torch.manual_seed(0)
    query = torch.randn(2, 6, 4, 5)
    support = torch.randn(2, 3, 6, 4, 5)
    masks = (torch.rand(2, 3, 8, 10) > 0.5).float()
    masks[0, 1] = 1  # all foreground: no background cosine 0 in the max
    masks[1, 2] = 0  # empty mask: prior 0 everywhere
    masks[1, 0] = 0
    masks[1, 0, 4:6, 2:4] = 1  # one support position
    prior = prior_mask(query, support, masks, foreground_only=foreground_only)
    assert prior.shape == (2, 1, 4, 5)
    small = F.interpolate(masks.flatten(0, 1)[:, None], size=(4, 5), mode="nearest")
    small = small.reshape(2, 3, 1, 4, 5)
    for b in range(2):
        per_shot = []
        for k in range(3):
            s = (support[b, k] * small[b, k]).reshape(6, -1)  # (C, Ns)
            q = query[b].reshape(6, -1)  # (C, Nq)
            sim = (s.T @ q) / (s.norm(dim=0)[:, None] * q.norm(dim=0)[None, :] + 1e-7)
            per_shot.append(sim.max(dim=0).values)
        expected = torch.stack(per_shot).mean(0).reshape(4, 5)
        torch.testing.assert_close(prior[b, 0], expected)


def test_foreground_only_prior_equals_the_official_order() -> None:
    torch.manual_seed(1)
    query = torch.randn(1, 16, 9, 7)
    support = torch.randn(1, 5, 16, 9, 7)
    masks = (torch.rand(1, 5, 36, 28) > 0.7).float()
    masks[0, 3] = 0
    fast = prior_mask(query, support, masks, foreground_only=True)
    official = prior_mask(query, support, masks, foreground_only=False)
    torch.testing.assert_close(fast, official, rtol=1e-6, atol=1e-6)
    # every foreground cosine negative: 0 from the background wins, unless there is none
    query = torch.rand(1, 2, 3, 3) + 0.1
    support = -(torch.rand(1, 1, 2, 3, 3) + 0.1)
    partial = torch.zeros(1, 1, 3, 3)
    partial[..., :2, :] = 1
    for mask, negative in ((partial, False), (torch.ones(1, 1, 3, 3), True)):
        fast = prior_mask(query, support, mask, foreground_only=True)
        torch.testing.assert_close(fast, prior_mask(query, support, mask, foreground_only=False))
        assert bool((fast < 0).all()) is negative


def test_prior_mask_is_one_where_query_matches_foreground() -> None:
    torch.manual_seed(0)
    support = torch.rand(1, 1, 4, 3, 3) + 0.1  # positive features
    query = torch.rand(1, 4, 3, 3) + 0.1
    query[0, :, 1, 1] = 2.5 * support[0, 0, :, 0, 2]  # same direction as a fg support pixel
    mask = torch.zeros(1, 1, 3, 3)
    mask[0, 0, 0, 2] = 1
    prior = prior_mask(query, support, mask)
    assert prior[0, 0, 1, 1] == pytest.approx(1.0, abs=1e-5)
    changed = support.clone()
    changed[0, 0, :, 2, 2] = 5.0  # a background support pixel: no effect
    torch.testing.assert_close(prior_mask(query, changed, mask), prior)


def test_masked_average_prototype() -> None:
    features = torch.arange(8.0).reshape(1, 2, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    proto = masked_average_prototype(features, mask)
    expected = torch.tensor([(0 + 3) / (2 + 5e-4), (4 + 7) / (2 + 5e-4)])
    torch.testing.assert_close(proto.flatten(), expected)


# ------------------------------------------------------------------ ensemble
def test_gram_matrix_and_scene_difference() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 5, 4, 4)
    gram = gram_matrix(features)
    torch.testing.assert_close(torch.diagonal(gram, dim1=1, dim2=2), torch.ones(2, 5))
    support = torch.stack([features, torch.randn(2, 5, 4, 4)], dim=1)  # (B, K=2, C, h, w)
    difference = scene_difference(features, support)
    assert difference.shape == (2, 2)
    torch.testing.assert_close(difference[:, 0], torch.zeros(2))
    expected = (gram - gram_matrix(support[:, 1])).flatten(1).norm(dim=1) / 5
    torch.testing.assert_close(difference[:, 1], expected)


def test_base_foreground_map_excludes_background_and_episode_class() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 3)
    probs = logits.softmax(1)
    torch.testing.assert_close(base_foreground_map(logits)[:, 0], 1 - probs[:, 0])
    excluded = base_foreground_map(logits, torch.tensor([2, 0]))[:, 0]
    torch.testing.assert_close(excluded[0], probs[0, 1] + probs[0, 3])
    torch.testing.assert_close(excluded[1], 1 - probs[1, 0])


def test_ensemble_starts_as_meta_probabilities() -> None:
    """Merges start at [1, 0]: the final output is the meta softmax until trained."""
    torch.manual_seed(0)
    ensemble = BaseLearnerEnsemble(shots=1)
    meta = torch.randn(2, 2, 5, 5)
    final = ensemble(meta, torch.randn(2, 16, 5, 5), torch.rand(2, 1))
    torch.testing.assert_close(final, meta.softmax(1))
    with torch.no_grad():
        ensemble.base_merge.weight.copy_(torch.tensor([1.0, -1.0]).reshape(1, 2, 1, 1))
    base = torch.randn(2, 16, 5, 5)
    final = ensemble(meta, base, torch.rand(2, 1))
    torch.testing.assert_close(final[:, 0:1], meta.softmax(1)[:, :1] - base_foreground_map(base))


def test_kshot_weighting_official_quirk_and_fix() -> None:
    """Official: weights stay in sorted order, so the result depends on the shot order.
    Fixed: un-sorted weights make the result invariant to permuting the shots."""
    torch.manual_seed(0)
    official = BaseLearnerEnsemble(shots=3, kshot_weighting="official")
    fixed = BaseLearnerEnsemble(shots=3, kshot_weighting="fixed")
    fixed.load_state_dict(official.state_dict())
    differences = torch.tensor([[0.9, 0.1, 0.5]])
    permuted = differences[:, [1, 2, 0]]
    sorted_values = differences.sort(dim=1).values
    with torch.no_grad():
        a, b = official.combined_difference(differences), official.combined_difference(permuted)
        assert not torch.allclose(a, b)
        c, d = fixed.combined_difference(differences), fixed.combined_difference(permuted)
        torch.testing.assert_close(c, d)
        # On already sorted input both agree.
        torch.testing.assert_close(
            official.combined_difference(sorted_values), fixed.combined_difference(sorted_values)
        )
        # K identical shots: the weighted difference equals the single value.
        same = torch.full((1, 3), 0.4)
        torch.testing.assert_close(official.combined_difference(same), torch.tensor([0.4]))
    assert sum(p.numel() for p in BaseLearnerEnsemble(5).parameters()) == 4 + 27
    with pytest.raises(ValueError, match="expected 3 shots"):
        official.combined_difference(torch.rand(1, 2))
