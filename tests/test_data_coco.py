"""COCO-20i preparation on a tiny COCO 2014 tree (JSON with polygon, RLE and crowd)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_formats import (
    make_coco_split,
    polygon_of_rect,
    rle_of_mask,
    uncompressed_rle_of_mask,
    write_jpeg,
)

from hdmnet_core.data.coco import CLASS_OF_CATEGORY, CocoSource, prepare_coco
from hdmnet_core.data.prepared import verify_prepared
from hdmnet_core.data.source import DataError, SegmentationSource

H, W = 48, 64
# Categories listed out of order on purpose: class ids follow the sorted category ids.
CATEGORIES = [(90, "toothbrush"), (1, "person"), (3, "car"), (18, "dog")]


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    region = np.zeros((H, W), dtype=bool)
    region[y0:y1, x0:x1] = True
    return region


def make_coco(tmp_path: Path) -> Path:
    base = tmp_path / "coco_in"
    train_annotations: list[dict[str, object]] = [
        # image 1: a person polygon, then a car (compressed RLE) overlapping it, then a crowd
        # of dogs (uncompressed RLE) partly under the person.
        {"image_id": 1, "category_id": 1, "segmentation": polygon_of_rect(0, 40, 0, 60)},
        {"image_id": 1, "category_id": 3, "segmentation": rle_of_mask(box(30, 48, 50, 64))},
        {
            "image_id": 1,
            "category_id": 18,
            "iscrowd": 1,
            "segmentation": uncompressed_rle_of_mask(box(36, 48, 0, 20)),
        },
        # image 2: one toothbrush polygon made of two parts.
        {
            "image_id": 2,
            "category_id": 90,
            "segmentation": polygon_of_rect(0, 10, 0, 10) + polygon_of_rect(20, 30, 20, 30),
        },
    ]
    # image 3 has no annotation: not in the list.
    make_coco_split(
        base, "train2014", [(1, H, W), (2, H, W), (3, H, W)], train_annotations, CATEGORIES
    )
    make_coco_split(
        base,
        "val2014",
        [(7, H, W)],
        [{"image_id": 7, "category_id": 3, "segmentation": polygon_of_rect(0, 48, 0, 64)}],
        CATEGORIES,
    )
    return base


def test_category_mapping_is_sorted_category_order() -> None:
    assert CLASS_OF_CATEGORY[1] == 1
    assert CLASS_OF_CATEGORY[18] == 17
    assert CLASS_OF_CATEGORY[90] == 80
    assert sorted(CLASS_OF_CATEGORY.values()) == list(range(1, 81))


@pytest.mark.parametrize("crowd", ["class", "ignore"])
def test_prepare_coco_masks_lists_and_areas(tmp_path: Path, crowd: str) -> None:
    base = make_coco(tmp_path)
    marker = prepare_coco(tmp_path / "data", coco=str(base), crowd=crowd, progress=False)  # type: ignore[arg-type]
    train = CocoSource(tmp_path / "data", "train")
    val = CocoSource(tmp_path / "data", "val")
    assert isinstance(train, SegmentationSource)
    assert [train.image_name(i) for i in range(len(train))] == [
        "COCO_train2014_000000000001",
        "COCO_train2014_000000000002",
    ]
    assert marker["counts"] == {"train": 2, "val": 1}

    expected = np.zeros((H, W), dtype=np.uint8)
    expected[box(0, 40, 0, 60)] = 1  # person
    expected[box(30, 48, 50, 64)] = 3  # car overwrites the person where they overlap
    dogs = box(36, 48, 0, 20)
    if crowd == "class":
        expected[dogs] = 17  # the crowd is painted last, over the person
    else:
        expected[dogs & (expected == 0)] = 255  # only where no object is
    np.testing.assert_array_equal(train.load_mask(0), expected)
    areas = {1: int((expected == 1).sum()), 3: 18 * 14}
    if crowd == "class":
        areas[17] = 12 * 20
    assert train.class_areas(0) == areas

    toothbrush = np.zeros((H, W), dtype=np.uint8)
    toothbrush[box(0, 10, 0, 10) | box(20, 30, 20, 30)] = 80
    np.testing.assert_array_equal(train.load_mask(1), toothbrush)
    assert val.class_areas(0) == {3: H * W}
    assert train.load_image(0).shape == (H, W, 3)

    interleaved = marker["pairs"]["COCO-20i interleaved folds (official default)"]
    contiguous = marker["pairs"]["COCO-20i contiguous folds (PANet style)"]
    assert interleaved["fold 2"]["val 3"] == 1  # class 3 is novel in interleaved fold 2
    assert contiguous["fold 0"]["val 3"] == 1  # ... and in contiguous fold 0
    # Person covers >= 2048 px of image 1: a training pair unless a novel class is there too.
    assert interleaved["fold 1"]["train 1"] == 1  # novel 2, 6, ...: none in image 1
    assert interleaved["fold 2"]["train 1"] == 0  # novel 3, 7, ...: the car filters image 1
    assert contiguous["fold 3"]["train 1"] == 1  # novel 61..80
    lists = tmp_path / "data" / "coco" / "lists"
    fold1 = json.loads((lists / "interleaved_fold1_train_classes.json").read_text())
    assert fold1["1"] == ["COCO_train2014_000000000001"]
    assert json.loads((lists / "contiguous_fold0_val_classes.json").read_text())["3"] == [
        "COCO_val2014_000000000007"
    ]
    assert verify_prepared(tmp_path / "data", "coco") == []


def test_prepare_coco_from_zips(tmp_path: Path) -> None:
    base = make_coco(tmp_path)
    zips = tmp_path / "zips"
    zips.mkdir()
    for split in ("train2014", "val2014"):
        with zipfile.ZipFile(zips / f"{split}.zip", "w") as bundle:
            for path in sorted((base / split).glob("*.jpg")):
                bundle.write(path, f"{split}/{path.name}")
    with zipfile.ZipFile(zips / "annotations_trainval2014.zip", "w") as bundle:
        for path in sorted((base / "annotations").glob("*.json")):
            bundle.write(path, f"annotations/{path.name}")
    prepare_coco(tmp_path / "data", coco=str(zips), progress=False)
    train = CocoSource(tmp_path / "data" / "coco", "train")
    assert len(train) == 2
    assert not Path(train._entries[0].image).is_absolute()  # images live under raw/
    assert (tmp_path / "data" / "coco" / "raw" / "train2014" / "train2014").is_dir()


def test_bad_coco_inputs_are_named(tmp_path: Path) -> None:
    base = make_coco(tmp_path)
    path = base / "annotations" / "instances_val2014.json"
    content = json.loads(path.read_text())
    content["annotations"].append(
        {"id": 99, "image_id": 7, "category_id": 12, "segmentation": [], "iscrowd": 0}
    )
    content["images"].append(
        {"id": 8, "file_name": "COCO_val2014_000000000008.jpg", "height": H, "width": W}
    )
    content["annotations"].append({"id": 100, "image_id": 8, "category_id": 1, "segmentation": []})
    path.write_text(json.dumps(content))
    with pytest.raises(DataError) as caught:
        prepare_coco(tmp_path / "data", coco=str(base), progress=False)
    message = str(caught.value)
    assert "annotation 99: unknown category_id 12" in message
    assert "COCO_val2014_000000000008.jpg: image of annotated entry 8 is missing" in message
    assert not (tmp_path / "data" / "coco" / ".staging").exists()


def test_image_size_must_match_the_annotation_file(tmp_path: Path) -> None:
    base = make_coco(tmp_path)
    write_jpeg(base / "val2014" / "COCO_val2014_000000000007.jpg", H + 1, W)
    with pytest.raises(
        DataError, match=r"000000000007\.jpg: image is 49x64 but the annotation file says 48x64"
    ):
        prepare_coco(tmp_path / "data", coco=str(base), progress=False)


def test_empty_polygon_is_a_named_error(tmp_path: Path) -> None:
    base = make_coco(tmp_path)
    path = base / "annotations" / "instances_val2014.json"
    content = json.loads(path.read_text())
    content["annotations"][0]["segmentation"] = [[1.0, 2.0]]
    path.write_text(json.dumps(content))
    with pytest.raises(
        DataError, match="annotation 1: polygon annotation without any 3-point polygon"
    ):
        prepare_coco(tmp_path / "data", coco=str(base), progress=False)


def test_conversion_with_worker_processes_gives_the_same_tree(tmp_path: Path) -> None:
    base = make_coco(tmp_path)
    prepare_coco(tmp_path / "one", coco=str(base), workers=1, progress=False)
    prepare_coco(tmp_path / "two", coco=str(base), workers=2, progress=False)
    for split in ("train", "val"):
        one, two = CocoSource(tmp_path / "one", split), CocoSource(tmp_path / "two", split)
        assert [one.class_areas(i) for i in range(len(one))] == [
            two.class_areas(i) for i in range(len(two))
        ]
        for i in range(len(one)):
            np.testing.assert_array_equal(one.load_mask(i), two.load_mask(i))
