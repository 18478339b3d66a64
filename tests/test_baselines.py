"""Training-free baselines: score formulas, threshold choice, and benchmark headroom."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from hdmnet_core.baselines import (
    FixedFeatures,
    choose_threshold,
    evaluate_baseline,
    make_scores_fn,
    masked_average_prototype,
    prior_mask_scores,
    prototype_scores,
    threshold_curve,
)
from hdmnet_core.data.episodes import EpisodeDataset, collate_episodes
from hdmnet_core.data.splits import base_classes, novel_classes
from hdmnet_core.data.synthetic import SyntheticSource, scaled_min_area, write_synthetic
from hdmnet_core.data.transforms import EvalTransform, normalize

RED, GREEN, GREY = (220.0, 30.0, 30.0), (30.0, 200.0, 40.0), (128.0, 128.0, 128.0)


# ----------------------------------------------------------------------- hand-made episodes
def paint(size: int, boxes: list[tuple[tuple[float, float, float], slice, slice]]) -> Tensor:
    """Normalised (3,S,S) image: grey, with coloured rectangles."""
    image = torch.tensor(GREY).view(3, 1, 1).repeat(1, size, size)
    for colour, rows, cols in boxes:
        image[:, rows, cols] = torch.tensor(colour).view(3, 1, 1)
    return normalize(image)


def colour_one_hot(images: Tensor) -> Tensor:
    """'Perfect' features for painted images: one channel per colour (B,3,H,W)."""
    reference = torch.stack(
        [normalize(torch.tensor(c).view(3, 1, 1))[:, 0, 0] for c in (RED, GREEN, GREY)]
    )
    distance = (images[:, None] - reference[None, :, :, None, None]).abs().sum(2)  # (B,3,H,W)
    return torch.nn.functional.one_hot(distance.argmin(1), 3).permute(0, 3, 1, 2).float()


def hand_made_episode(shots: int = 1) -> dict[str, Any]:
    """Query: red square (target) and green square (other class); supports: red elsewhere."""
    size = 32
    query = paint(size, [(RED, slice(4, 16), slice(4, 16)), (GREEN, slice(18, 30), slice(18, 30))])
    query_mask = torch.zeros(size, size, dtype=torch.int64)
    query_mask[4:16, 4:16] = 1
    supports, support_masks = [], []
    for k in range(shots):
        rows, cols = slice(10 + k, 26 + k), slice(2, 14)
        supports.append(paint(size, [(RED, rows, cols), (GREEN, slice(0, 8), slice(20, 30))]))
        mask = torch.zeros(size, size, dtype=torch.int64)
        mask[rows, cols] = 1
        support_masks.append(mask)
    return {
        "query_image": query[None],
        "query_mask": query_mask[None],
        "support_images": torch.stack(supports)[None],
        "support_masks": torch.stack(support_masks)[None],
        "class_id": torch.tensor([7]),
    }


@pytest.mark.parametrize("method", ["prior", "prototype"])
@pytest.mark.parametrize("shots", [1, 3])
def test_perfect_features_segment_a_hand_made_episode(method: Any, shots: int) -> None:
    episode = hand_made_episode(shots)
    scores_fn = make_scores_fn(method, colour_one_hot)
    result = evaluate_baseline(scores_fn, [episode], threshold=0.5, class_ids=[7])
    assert result["miou"] > 0.95
    assert result["per_class_iou"][7] > 0.95
    # a useless feature (constant) cannot do it
    constant = make_scores_fn(method, lambda x: torch.ones(x.shape[0], 4, *x.shape[-2:]))
    assert evaluate_baseline(constant, [episode], threshold=0.5, class_ids=[7])["miou"] < 0.3


def test_prior_is_the_max_cosine_to_masked_support_pixels() -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 5, 3, 4, generator=generator)
    support = torch.randn(2, 2, 5, 3, 4, generator=generator)
    masks = (torch.rand(2, 2, 3, 4, generator=generator) > 0.5).long()
    masks[0, 0, 0, 0] = 255  # ignore counts as background
    masks[1, 0] = 1  # every support pixel foreground: no zero rows, the max may be negative
    masks[1, 1] = 0  # no foreground at all: prior 0
    scores = prior_mask_scores(query, support, masks)
    assert scores.shape == (2, 3, 4)
    for b in range(2):
        per_shot = []
        for k in range(2):
            fg = (masks[b, k] == 1).flatten()
            s = support[b, k].flatten(1).T * fg[:, None]  # (12,5), zero rows for background
            q = query[b].flatten(1).T  # (12,5)
            cos = (q @ s.T) / (q.norm(dim=1)[:, None] * s.norm(dim=1)[None] + 1e-7)
            per_shot.append(cos.max(dim=1).values)
        expected = torch.stack(per_shot).mean(0).view(3, 4)
        torch.testing.assert_close(scores[b], expected)


def test_prototype_is_the_masked_average_and_cosine() -> None:
    features = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # (1,1,2,2)
    masks = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    torch.testing.assert_close(
        masked_average_prototype(features, masks), torch.tensor([[4.0 / (2 + 5e-4)]])
    )
    query = torch.tensor([[[[1.0, -1.0]], [[0.0, 0.0]]]])  # (1,2,1,2): +x and -x
    support = torch.tensor([[[[[2.0, 2.0]], [[0.0, 0.0]]]]])  # (1,1,2,1,2): +x
    scores = prototype_scores(query, support, torch.ones(1, 1, 1, 2, dtype=torch.long))
    torch.testing.assert_close(scores, torch.tensor([[[1.0, -1.0]]]), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------- threshold choice
def fixed_scores_episodes() -> tuple[Callable[[Mapping[str, Any]], Tensor], list[dict[str, Any]]]:
    """Class 1: large object, fg 0.7 / bg 0.45. Class 2: small object, fg 0.42 / bg 0.35.

    Class-wise mIoU: t=0.4 -> A 300/1024, B 1 (mean 0.646); t=0.5 -> A 1, B 0 (0.5);
    t=0.3 -> both all-foreground. Pixel-pooled IoU would prefer 0.5 (A dominates).
    """
    episodes = []
    for class_id, area, fg, bg in ((1, (15, 20), 0.7, 0.45), (2, (4, 4), 0.42, 0.35)):
        target = torch.zeros(1, 32, 32, dtype=torch.int64)
        target[0, : area[0], : area[1]] = 1
        scores = torch.where(target == 1, fg, bg).float()
        episodes.append(
            {"query_mask": target, "class_id": torch.tensor([class_id]), "scores": scores}
        )
    return (lambda batch: batch["scores"]), episodes


def test_threshold_choice_maximises_class_wise_base_miou() -> None:
    scores_fn, episodes = fixed_scores_episodes()
    grid = [round(0.1 * i, 1) for i in range(1, 10)]
    curve = threshold_curve(scores_fn, episodes, grid)
    assert curve[0.4] == pytest.approx((300 / 1024 + 1.0) / 2)
    assert curve[0.5] == pytest.approx(0.5)
    assert curve[0.3] == pytest.approx((300 / 1024 + 16 / 1024) / 2)
    assert choose_threshold(scores_fn, episodes, grid) == 0.4
    assert choose_threshold(scores_fn, episodes[:1], grid) == 0.5  # class 1 alone: tie 0.5..0.6


def test_threshold_choice_errors_are_named() -> None:
    scores_fn, episodes = fixed_scores_episodes()
    with pytest.raises(ValueError, match="empty"):
        choose_threshold(scores_fn, [], [0.5])
    with pytest.raises(ValueError, match="at least one threshold"):
        choose_threshold(scores_fn, episodes, [])
    bad = dict(episodes[0], query_mask=episodes[0]["query_mask"] * 3)
    with pytest.raises(ValueError, match="0/1/255"):
        choose_threshold(scores_fn, [bad], [0.5])
    with pytest.raises(ValueError, match="method='bogus'"):
        make_scores_fn("bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        FixedFeatures()(torch.zeros(1, 1, 8, 8))


def test_fixed_features_shape_and_standardisation() -> None:
    extractor = FixedFeatures()
    features = extractor(torch.randn(2, 3, 40, 48))
    assert features.shape == (2, extractor.channels, 20, 24)
    torch.testing.assert_close(
        features.mean(dim=(2, 3)), torch.zeros(2, extractor.channels), atol=1e-4, rtol=0
    )


# ----------------------------------------------------------------------- headroom
def test_baselines_leave_headroom_on_the_synthetic_benchmark(tmp_path: Path) -> None:
    """Both baselines beat chance clearly but stay well below 80 % novel mIoU (fold 0)."""
    tree = write_synthetic(
        tmp_path, image_size=96, train_images=160, val_images=120, seed=0, progress=False
    )

    def batches(split: str, classes: list[int], filter_intersection: bool) -> list[dict[str, Any]]:
        dataset = EpisodeDataset(
            SyntheticSource(tree, split),
            classes,
            1,
            "val",
            EvalTransform(96),
            seed=5,
            episodes=40,
            min_class_area=scaled_min_area(96),
            filter_intersection=filter_intersection,
            small_classes="skip",
        )
        return list(DataLoader(dataset, batch_size=8, collate_fn=collate_episodes))

    novel = novel_classes("synthetic", 0)
    base_batches = batches("train", base_classes("synthetic", 0), True)
    novel_batches = batches("val", novel, False)

    def everything(batch: Mapping[str, Any]) -> Tensor:
        return torch.ones(batch["query_mask"].shape)  # every pixel foreground

    chance = evaluate_baseline(everything, novel_batches, 0.5, novel)["miou"]
    assert chance < 0.15
    for method in ("prior", "prototype"):
        scores_fn = make_scores_fn(method)
        threshold = choose_threshold(scores_fn, base_batches, [0.05 * i for i in range(21)])
        miou = evaluate_baseline(scores_fn, novel_batches, threshold, novel)["miou"]
        assert chance + 0.15 < miou < 0.8, (method, miou)
