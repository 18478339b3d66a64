"""FSS-1000: HSNet's class lists as package data, and preparation of a tiny tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_formats import make_fss_tree
from PIL import Image

from hdmnet_core.data.fss1000 import (
    Fss1000Source,
    class_ids,
    class_names,
    hsnet_class_lists,
    prepare_fss1000,
    split_class_ids,
)
from hdmnet_core.data.prepared import verify_prepared
from hdmnet_core.data.source import DataError, SegmentationSource

LISTS = {"train": ["zebra", "apple", "kite"], "val": ["bus"], "test": ["pizza", "coin"]}


def test_hsnet_lists_are_reproduced() -> None:
    lists = hsnet_class_lists()
    assert {k: len(v) for k, v in lists.items()} == {"train": 520, "val": 240, "test": 240}
    everything = [name for names in lists.values() for name in names]
    assert len(set(everything)) == 1000
    # First and last lines of HSNet's trn.txt / val.txt / test.txt, in file order.
    assert lists["train"][0] == "fountain" and lists["train"][-1] == "microwave"
    assert lists["val"][0] == "handcuff" and lists["val"][-1] == "nike_logo"
    assert lists["test"][0] == "bus" and lists["test"][-1] == "tower_pisa"
    assert "abe's_flyingfish" in lists["test"] and "thor's_hammer" in lists["val"]
    ids = class_ids()
    assert ids["ac_wall"] == 1  # first train class by name
    assert ids["zucchini"] == 521  # 520 train classes, id 255 (ignore) skipped
    assert ids["ab_wheel"] == 522  # first val class by name
    assert ids["abe's_flyingfish"] == 762  # first test class by name
    assert sorted(ids.values()) == [*range(1, 255), *range(256, 1002)]
    assert class_names()[522] == "ab_wheel"
    assert split_class_ids("val") == list(range(522, 762))


def test_prepare_fss_tree(tmp_path: Path) -> None:
    make_fss_tree(tmp_path / "in", [n for names in LISTS.values() for n in names], shots=3)
    marker = prepare_fss1000(
        tmp_path / "data", fss=str(tmp_path / "in"), lists=LISTS, progress=False
    )
    assert marker["counts"] == {"train": 9, "val": 3, "test": 6}
    train = Fss1000Source(tmp_path / "data", "train")
    assert isinstance(train, SegmentationSource)
    # Classes sorted by name: apple 1, kite 2, zebra 3; images sorted by file name.
    assert [train.image_name(i) for i in range(4)] == ["apple/1", "apple/2", "apple/3", "kite/1"]
    mask = train.load_mask(4)  # kite/2: a 8-pixel-high band
    assert mask.dtype == np.uint16
    expected = np.zeros((32, 32), dtype=np.uint16)
    expected[:8, :] = 2
    np.testing.assert_array_equal(mask, expected)
    assert train.class_areas(4) == {2: 8 * 32}
    test = Fss1000Source(tmp_path / "data", "test")
    assert test.image_name(0) == "coin/1" and test.class_areas(0) == {5: 4 * 32}
    assert Fss1000Source(tmp_path / "data", "val").class_areas(2) == {4: 12 * 32}
    assert train.load_image(0).shape == (32, 32, 3)
    assert verify_prepared(tmp_path / "data", "fss1000") == []


def test_missing_class_folders_and_masks_are_all_named(tmp_path: Path) -> None:
    base = make_fss_tree(tmp_path / "in", ["zebra", "apple", "bus", "pizza", "coin"], shots=2)
    (base / "apple" / "2.png").unlink()
    with pytest.raises(DataError) as caught:
        prepare_fss1000(tmp_path / "data", fss=str(base), lists=LISTS, progress=False)
    message = str(caught.value)
    assert "kite: class folder missing" in message
    assert "apple/2.png: mask of 2.jpg is missing" in message
    assert not (tmp_path / "data" / "fss1000" / "prepared.json").exists()


def test_empty_class_list_is_a_named_error(tmp_path: Path) -> None:
    make_fss_tree(tmp_path / "in", ["a"], shots=1)
    with pytest.raises(DataError, match="class list for split 'val' is empty"):
        prepare_fss1000(
            tmp_path / "data", fss=str(tmp_path / "in"), lists={**LISTS, "val": []}, progress=False
        )


def test_mask_size_mismatch_is_named(tmp_path: Path) -> None:
    base = make_fss_tree(tmp_path / "in", [n for names in LISTS.values() for n in names], shots=1)
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(base / "bus" / "1.png")
    with pytest.raises(DataError, match=r"bus/1\.png: mask is 30x32 but image .* is 32x32"):
        prepare_fss1000(tmp_path / "data", fss=str(base), lists=LISTS, progress=False)


def test_the_episode_sampler_reads_fss_unchanged(tmp_path: Path) -> None:
    from hdmnet_core.data.episodes import EpisodeDataset
    from hdmnet_core.data.transforms import EvalTransform

    make_fss_tree(tmp_path / "in", [n for names in LISTS.values() for n in names], shots=3)
    prepare_fss1000(tmp_path / "data", fss=str(tmp_path / "in"), lists=LISTS, progress=False)
    source = Fss1000Source(tmp_path / "data", "test")
    episodes = EpisodeDataset(
        source,
        [5, 6],
        shots=2,
        mode="val",
        transform=EvalTransform(16),
        episodes=6,
        min_class_area=1,
    )
    for i in range(6):
        item = episodes[i]
        name = item["query_name"]
        assert item["class_id"] == {"coin": 5, "pizza": 6}[name.split("/")[0]]
        assert all(
            s.split("/")[0] == name.split("/")[0] and s != name for s in item["support_names"]
        )
        band = 4 * int(name.split("/")[1])  # rows of foreground in the original 32 x 32 mask
        assert int(item["query_original_mask"].sum()) == band * 32
        assert set(item["support_masks"].unique().tolist()) == {0, 1}
