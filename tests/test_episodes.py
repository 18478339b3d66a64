"""Fold lists and episode sampling on a tiny in-memory source (reference section 1)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hdmnet_core.config import Config
from hdmnet_core.data.episodes import (
    EpisodeDataset,
    build_episode_dataset,
    build_fold_index,
    collate_episodes,
)
from hdmnet_core.data.fss1000 import split_class_ids
from hdmnet_core.data.source import DataError, SegmentationSource, compute_class_areas
from hdmnet_core.data.transforms import EvalTransform


class FakeSource:
    """Masks given as {class_id: pixel count}, painted row-major on a 4 x 4 grid; the
    first row's last pixel is 255 (ignore) in every image."""

    dataset = "synthetic"

    def __init__(
        self, layouts: list[dict[int, int]], name: str = "fake/train", dtype: type = np.uint8
    ) -> None:
        self.name = name
        self.masks = []
        for layout in layouts:
            flat: np.ndarray = np.zeros(16, dtype=dtype)
            position = 0
            for class_id, area in layout.items():
                flat[position : position + area] = class_id
                position += area
            flat[3] = 255
            self.masks.append(flat.reshape(4, 4))
        self.decoded = 0

    def __len__(self) -> int:
        return len(self.masks)

    def image_name(self, index: int) -> str:
        return f"img{index}"

    def load_image(self, index: int) -> np.ndarray:
        self.decoded += 1
        image = np.zeros((4, 4, 3), dtype=np.uint8)
        image[..., 0] = (self.masks[index].astype(np.int64) * 10 % 256).astype(np.uint8)
        image[..., 1] = index  # lets a test recognise the image
        return image

    def load_mask(self, index: int) -> np.ndarray:
        self.decoded += 1
        return self.masks[index].copy()

    def class_areas(self, index: int) -> dict[int, int]:
        return compute_class_areas(self.masks[index])


# Base classes {1, 2}, novel {3}; the area rule is 4 pixels (pixel 3 is 255, so layouts
# place at most 3 class pixels before it; areas count only class pixels).
LAYOUTS = [
    {1: 7},  # 0: base list (class 1)
    {1: 7, 3: 1},  # 1: has a novel pixel -> dropped by filter_intersection
    {2: 9},  # 2: base list (class 2)
    {1: 2, 2: 6},  # 3: base list via class 2; class 1 present but below the area rule
    {1: 5, 2: 5},  # 4: both
    {3: 9},  # 5: novel list
    {3: 5, 1: 5},  # 6: novel list; dropped from training by the filter
    {},  # 7: background only
    {3: 3},  # 8: class 3 below the rule
]
BASE_MAP = {0: 0, 255: 255, 1: 1, 2: 2, 3: 0}


def make_dataset(
    mode: Literal["train", "val"] = "train",
    classes: tuple[int, ...] = (1, 2),
    seed: int = 0,
    **kwargs: Any,
) -> EpisodeDataset:
    source = FakeSource(LAYOUTS)
    return EpisodeDataset(
        source, list(classes), 1, mode, EvalTransform(4), seed=seed,
        min_class_area=4, base_label_map=BASE_MAP, **kwargs,
    )  # fmt: skip


def test_fake_source_satisfies_protocol() -> None:
    assert isinstance(FakeSource(LAYOUTS), SegmentationSource)


def test_fold_lists_by_hand() -> None:
    source = FakeSource(LAYOUTS)
    train = build_fold_index(source, [1, 2], min_class_area=4, filter_intersection=True)
    assert train.images == (0, 2, 3, 4)
    assert train.class_images == {1: (0, 4), 2: (2, 3, 4)}
    assert train.present[3] == (1, 2)  # class 1 is drawable in image 3 (no area rule)
    unfiltered = build_fold_index(source, [1, 2], min_class_area=4, filter_intersection=False)
    assert unfiltered.images == (0, 1, 2, 3, 4, 6)
    assert unfiltered.class_images[1] == (0, 1, 4, 6)
    novel = build_fold_index(source, [3], min_class_area=4)
    assert novel.images == (5, 6) and novel.class_images == {3: (5, 6)}
    assert source.decoded == 0  # lists come from class_areas only


def test_filter_intersection_defaults_follow_the_mode() -> None:
    assert make_dataset("train").index.images == (0, 2, 3, 4)
    assert make_dataset("train", filter_intersection=False).index.images == (0, 1, 2, 3, 4, 6)
    # evaluation list of the base classes: no filter by default
    assert make_dataset("val").index.images == (0, 1, 2, 3, 4, 6)


def test_episodes_follow_the_sampling_rules() -> None:
    dataset = make_dataset("train")
    index = dataset.index
    queries = []
    for epoch in range(30):
        dataset.set_epoch(epoch)
        epoch_queries = []
        for i in range(len(dataset)):
            spec = dataset.episode_spec(i)
            epoch_queries.append(spec.query)
            assert spec.class_id in index.present[spec.query]
            assert spec.query not in spec.supports
            assert all(s in index.class_images[spec.class_id] for s in spec.supports)
        assert sorted(epoch_queries) == [0, 2, 3, 4]  # each list image once per epoch
        queries.append(tuple(epoch_queries))
    assert len(set(queries)) > 1  # the order is reshuffled per epoch


def test_class_is_uniform_among_present_classes() -> None:
    dataset = make_dataset("val", episodes=6 * 400)  # list (0,1,2,3,4,6), cycled
    counts = Counter(dataset.episode_spec(i).class_id for i in range(4, len(dataset), 6))
    assert set(counts) == {1, 2}  # image 4 holds both classes
    assert abs(counts[1] - counts[2]) < 80  # 400 draws, binomial sd 10


def test_evaluation_cycles_the_list_in_order() -> None:
    dataset = make_dataset("val", classes=(3,), episodes=5)
    assert [dataset.episode_spec(i).query for i in range(5)] == [5, 6, 5, 6, 5]
    assert [dataset.episode_spec(i).supports for i in range(2)] == [(6,), (5,)]


def test_episode_tensors_and_masks() -> None:
    dataset = make_dataset("train")
    item = dataset[0]
    spec = dataset.episode_spec(0)
    raw = dataset.source.load_mask(spec.query)
    expected = np.where(raw == spec.class_id, 1, 0)
    expected[raw == 255] = 255
    assert torch.equal(item["query_mask"], torch.from_numpy(expected).long())
    assert torch.equal(item["query_original_mask"], torch.from_numpy(expected).long())
    assert item["query_base_label"].tolist() == np.vectorize(BASE_MAP.get)(raw).tolist()
    assert item["base_channel"] == BASE_MAP[spec.class_id] > 0
    support_raw = dataset.source.load_mask(spec.supports[0])
    assert set(item["support_masks"][0].unique().tolist()) <= {0, 1, 255}
    assert int((item["support_masks"][0] == 1).sum()) == int((support_raw == spec.class_id).sum())
    assert item["query_name"] == f"img{spec.query}"
    green = item["query_image"][1] * (0.224 * 255) + 0.456 * 255  # channel 1 = image index
    assert torch.allclose(green, torch.full((4, 4), float(spec.query)), atol=1e-3)
    assert item["support_names"] == [f"img{spec.supports[0]}"]

    novel = make_dataset("val", classes=(3,), episodes=2)
    assert novel[0]["base_channel"] == 0  # novel class -> channel 0
    assert novel[1]["query_base_label"].max() == 255 and 3 not in novel[1]["query_base_label"]


def test_collate_shapes_and_dtypes() -> None:
    dataset = make_dataset("val", episodes=3)
    batch = collate_episodes([dataset[i] for i in range(3)])
    assert (
        batch["query_image"].shape == (3, 3, 4, 4) and batch["query_image"].dtype == torch.float32
    )
    assert batch["query_mask"].shape == (3, 4, 4) and batch["query_mask"].dtype == torch.int64
    assert batch["support_images"].shape == (3, 1, 3, 4, 4)
    assert batch["support_masks"].shape == (3, 1, 4, 4)
    assert batch["class_id"].dtype == torch.int64 and batch["class_id"].shape == (3,)
    assert batch["base_channel"].tolist() == [BASE_MAP[c] for c in batch["class_id"].tolist()]
    assert batch["query_base_label"].shape == (3, 4, 4)
    assert len(batch["query_original_mask"]) == 3 and len(batch["support_names"]) == 3


def _episodes_through_loader(
    seed: int, workers: int
) -> list[tuple[list[str], list[list[str]], torch.Tensor]]:
    dataset = make_dataset("train", seed=seed)
    dataset.set_epoch(3)
    loader = DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_episodes)
    return [(b["query_name"], b["support_names"], b["query_image"]) for b in loader]


def test_same_seed_same_episodes_with_0_and_2_workers() -> None:
    in_process = _episodes_through_loader(seed=5, workers=0)
    with_workers = _episodes_through_loader(seed=5, workers=2)
    assert [b[:2] for b in in_process] == [b[:2] for b in with_workers]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(in_process, with_workers, strict=True))
    specs = {
        s: [make_dataset("val", seed=s, episodes=60).episode_spec(i) for i in range(60)]
        for s in (5, 6)
    }
    assert specs[5] != specs[6]


def test_error_on_classes_without_enough_supports() -> None:
    source = FakeSource(LAYOUTS)
    with pytest.raises(DataError, match=r"class 3: 2 usable image\(s\).*need 3"):
        EpisodeDataset(source, [3], 2, "val", EvalTransform(4), min_class_area=4)
    # area rule 5: class 1 is usable in image 0 only, but drawable in images 0 and 3
    with pytest.raises(DataError, match="class 1: 1 usable"):
        EpisodeDataset(source, [1, 2], 1, "train", EvalTransform(4), min_class_area=5)
    skipped = EpisodeDataset(
        source, [1, 2], 1, "train", EvalTransform(4), min_class_area=5, small_classes="skip"
    )
    assert skipped.index.classes == (2,) and skipped.index.images == (2, 3, 4)


def test_error_on_empty_fold_list_names_source_and_classes() -> None:
    source = FakeSource(LAYOUTS, name="fake/empty")
    with pytest.raises(DataError, match=r"fake/empty.*\[3\]"):
        EpisodeDataset(source, [3], 1, "val", EvalTransform(4), min_class_area=100)


def test_build_episode_dataset_reads_the_config() -> None:
    # synthetic fold 1: novel 6..10, base the rest (11 -> base label 6, 12 -> 7)
    layouts = [{6: 8}, {6: 9}, {11: 8}, {11: 6, 6: 1}, {12: 8}, {11: 8}, {12: 9}]
    source = FakeSource(layouts)
    cfg = Config.from_profile(
        "cpu-tiny", **{"data.fold": 1, "data.min_class_area": 4, "eval.episodes": 7,
                       "data.train_size": 32, "data.eval_size": 40}
    )  # fmt: skip
    val = build_episode_dataset(cfg, "val", source)
    assert val.index.images == (0, 1) and len(val) == 7  # image 3: class 6 below the rule
    assert val.seed == cfg.eval.seed_generator
    assert val[0]["query_image"].shape == (3, 40, 40)
    train = build_episode_dataset(cfg, "train", source)
    assert train.index.images == (2, 4, 5, 6)  # image 3 dropped: it has a novel pixel
    assert train.seed == cfg.train.seed and len(train) == 4
    item = train[0]
    assert item["query_image"].shape == (3, 32, 32)
    assert item["base_channel"] == {11: 6, 12: 7}[item["class_id"]]
    with pytest.raises(DataError, match=r"synthetic fold 1 \(val\): fake/train: no image"):
        build_episode_dataset(cfg.with_overrides(min_class_area=100), "val", source)
    unfiltered = build_episode_dataset(
        cfg.with_overrides(filter_intersection=False), "train", source
    )
    assert unfiltered.index.images == (2, 3, 4, 5, 6)


def test_build_episode_dataset_for_fss1000_uses_the_split_classes() -> None:
    first, second = split_class_ids("test")[:2]  # ids above 255: uint16 masks
    layouts = [{first: 3}, {first: 2}, {second: 1}, {second: 5}, {split_class_ids("train")[0]: 4}]
    source = FakeSource(layouts, name="fss1000/test", dtype=np.uint16)
    cfg = Config.from_profile("cpu-tiny", **{"data.dataset": "fss1000", "eval.episodes": 4})
    dataset = build_episode_dataset(cfg, "val", source)
    assert dataset.index.images == (0, 1, 2, 3)  # no area rule; image 4 is not a test class
    item = dataset[2]
    assert item["class_id"] == second and item["support_names"] == ["img3"]
    assert int((item["query_mask"] == 1).sum()) > 0 and item["base_channel"] == 0
