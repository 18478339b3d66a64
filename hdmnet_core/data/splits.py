"""Fold definitions of every benchmark, in one place (reference section 1).

Class ids are the dataset's foreground ids (1-based, 0 = background, 255 = ignore).
A fold's *novel* classes are its test classes; its *base* classes are the rest and
are the only ones seen in training.

- PASCAL-5i: VOC2012 ids 1..20; fold i novel = {5i+1, ..., 5i+5}.
- COCO-20i: 80 categories mapped in sorted category-id order to 1..80.
  ``interleaved`` (official default, BAM's "use_split_coco"): fold k novel =
  range(k+1, 81, 4). ``contiguous`` (PANet style): fold k novel = {20k+1, ..., 20k+20}.
- synthetic: 20 appearance classes, folds like PASCAL-5i.
- FSS-1000: one split (HSNet's class lists), see :mod:`hdmnet_core.data.fss1000`.
"""

from __future__ import annotations

from typing import Literal

CocoConvention = Literal["interleaved", "contiguous"]

PASCAL_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

# COCO 2014 category ids in sorted order; position + 1 is the class id used here.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77,
    78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip

SYNTHETIC_NUM_CLASSES = 20
NUM_FOLDS = {"pascal": 4, "coco": 4, "synthetic": 4, "fss1000": 1}
NUM_CLASSES = {"pascal": 20, "coco": 80, "synthetic": SYNTHETIC_NUM_CLASSES}


def novel_classes(
    dataset: str, fold: int, coco_convention: CocoConvention = "interleaved"
) -> list[int]:
    """Test classes of ``fold`` (sorted ascending)."""
    _check_fold(dataset, fold)
    if dataset in ("pascal", "synthetic"):
        return list(range(5 * fold + 1, 5 * fold + 6))
    if dataset == "coco":
        if coco_convention == "interleaved":
            return list(range(fold + 1, 81, 4))
        if coco_convention == "contiguous":
            return list(range(20 * fold + 1, 20 * fold + 21))
        raise ValueError(
            f"unknown COCO fold convention {coco_convention!r}; use 'interleaved' or 'contiguous'"
        )
    raise ValueError(
        f"dataset {dataset!r} has no class-id folds (FSS-1000 uses class lists, see data.fss1000)"
    )


def base_classes(
    dataset: str, fold: int, coco_convention: CocoConvention = "interleaved"
) -> list[int]:
    """Training classes of ``fold``: every class that is not novel, sorted ascending."""
    novel = set(novel_classes(dataset, fold, coco_convention))
    return [c for c in range(1, NUM_CLASSES[dataset] + 1) if c not in novel]


def class_names(dataset: str) -> tuple[str, ...]:
    """Names indexed by ``class_id - 1``."""
    if dataset == "pascal":
        return PASCAL_CLASSES
    if dataset == "coco":
        return COCO_CLASSES
    if dataset == "synthetic":
        from hdmnet_core.data.synthetic import SYNTHETIC_CLASSES

        return SYNTHETIC_CLASSES
    raise ValueError(f"unknown dataset {dataset!r}")


def base_learner_label_map(
    dataset: str, fold: int, coco_convention: CocoConvention = "interleaved"
) -> dict[int, int]:
    """Dataset class id -> base-learner label: base classes renumbered 1..|base| in
    ascending order; novel classes map to 0 (background). 0 and 255 are kept."""
    mapping = {0: 0, 255: 255}
    for new_id, class_id in enumerate(base_classes(dataset, fold, coco_convention), start=1):
        mapping[class_id] = new_id
    for class_id in novel_classes(dataset, fold, coco_convention):
        mapping[class_id] = 0
    return mapping


def _check_fold(dataset: str, fold: int) -> None:
    if dataset not in NUM_FOLDS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(NUM_FOLDS)}")
    if not 0 <= fold < NUM_FOLDS[dataset]:
        raise ValueError(f"fold {fold} out of range for {dataset}: 0..{NUM_FOLDS[dataset] - 1}")
