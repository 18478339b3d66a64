import pytest

from hdmnet_core.data import splits


def test_pascal_folds_follow_the_reference():
    assert splits.novel_classes("pascal", 0) == [1, 2, 3, 4, 5]
    assert splits.novel_classes("pascal", 3) == [16, 17, 18, 19, 20]
    assert splits.base_classes("pascal", 1) == [1, 2, 3, 4, 5, *range(11, 21)]


def test_pascal_folds_partition_the_classes():
    novel = [c for fold in range(4) for c in splits.novel_classes("pascal", fold)]
    assert sorted(novel) == list(range(1, 21))


def test_coco_interleaved_is_the_official_use_split_coco():
    assert splits.novel_classes("coco", 0) == list(range(1, 81, 4))
    assert splits.novel_classes("coco", 3) == [
        4,
        8,
        12,
        16,
        20,
        24,
        28,
        32,
        36,
        40,
        44,
        48,
        52,
        56,
        60,
        64,
        68,
        72,
        76,
        80,
    ]
    assert splits.novel_classes("coco", 0, "interleaved")[:3] == [1, 5, 9]


def test_coco_contiguous_is_panet_style():
    assert splits.novel_classes("coco", 1, "contiguous") == list(range(21, 41))
    assert len(splits.base_classes("coco", 2, "contiguous")) == 60


@pytest.mark.parametrize("convention", ["interleaved", "contiguous"])
def test_coco_folds_partition_the_80_classes(convention):
    novel = [c for fold in range(4) for c in splits.novel_classes("coco", fold, convention)]
    assert sorted(novel) == list(range(1, 81))


def test_coco_ids_and_names_line_up():
    assert len(splits.COCO_CATEGORY_IDS) == len(splits.COCO_CLASSES) == 80
    assert list(splits.COCO_CATEGORY_IDS) == sorted(splits.COCO_CATEGORY_IDS)
    assert splits.COCO_CLASSES[splits.COCO_CATEGORY_IDS.index(90)] == "toothbrush"
    assert splits.COCO_CLASSES[splits.COCO_CATEGORY_IDS.index(1)] == "person"


def test_synthetic_folds_are_like_pascal():
    assert splits.novel_classes("synthetic", 2) == [11, 12, 13, 14, 15]
    assert len(splits.class_names("synthetic")) == 20


def test_base_learner_labels_renumber_base_classes_and_zero_novel():
    mapping = splits.base_learner_label_map("pascal", 0)
    assert [mapping[c] for c in range(1, 6)] == [0] * 5
    assert [mapping[c] for c in range(6, 21)] == list(range(1, 16))
    assert mapping[0] == 0 and mapping[255] == 255


def test_bad_fold_and_dataset_are_named():
    with pytest.raises(ValueError, match="fold 4 out of range for pascal"):
        splits.novel_classes("pascal", 4)
    with pytest.raises(ValueError, match="unknown dataset"):
        splits.novel_classes("voc", 0)
    with pytest.raises(ValueError, match="unknown COCO fold convention"):
        splits.novel_classes("coco", 0, "random")  # type: ignore[arg-type]
