"""Fold lists, episode sampling and the episode ``Dataset`` (reference section 1).

Official names (BAM/HDMNet ``util/dataset.py``): the fold's list is ``data_list``, the
per-class index is ``sub_class_file_list``, the fold's training classes ``sub_list``,
its test classes ``sub_val_list``; the episode class is ``class_chosen`` and the
base-learner label ``label_b``.

Lists (official ``make_dataset``), from ``SegmentationSource.class_areas`` only:

- an image enters the fold's list when at least one fold class covers at least
  ``min_class_area`` pixels (2*32*32 officially) in it;
- the per-class index of ``c`` holds the images where ``c`` passes that rule;
- ``filter_intersection`` (official: on for training, off for evaluation): an image is
  dropped when any foreground class in it is *not* one of the fold's classes, i.e. a
  training image with any novel-class pixel, whatever its area.

Episode ``i`` (official ``SemData.__getitem__``):

- query: training, position ``i`` of the list shuffled once per epoch; evaluation,
  ``list[i % len(list)]`` (list order, cycled until the episode count is reached);
- class: uniform among the fold classes present in the query (any pixel; no area rule);
- supports: ``K`` distinct images drawn uniformly from that class's index, never the
  query itself;
- masks: episode class = 1, other classes = 0, 255 kept; the query's base-learner label
  maps dataset ids through ``splits.base_learner_label_map``.

Determinism: episode ``i`` draws everything (class, supports, augmentation) from
``np.random.default_rng([seed, epoch, i, 1])`` and the training order from
``np.random.default_rng([seed, epoch, 0])``; never from global RNG state or the worker
id, so any number of DataLoader workers gives the same episodes. Call
:meth:`EpisodeDataset.set_epoch` before each epoch (with ``persistent_workers=True``
the workers keep the epoch they started with).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from hdmnet_core.config import Config
from hdmnet_core.data import splits
from hdmnet_core.data.source import DataError, SegmentationSource
from hdmnet_core.data.transforms import EvalTransform, JointTransform, TrainTransform

Mode = Literal["train", "val"]
SmallClasses = Literal["error", "skip"]
IGNORE_INDEX = 255
OFFICIAL_MIN_CLASS_AREA = 2 * 32 * 32
_ORDER_STREAM = 0  # last entropy word of the per-epoch training order generator
_EPISODE_STREAM = 1  # last entropy word of each episode's generator


# ------------------------------------------------------------------------ fold lists
@dataclass(frozen=True)
class FoldIndex:
    """The fold's list and per-class index (source positions, ascending)."""

    classes: tuple[int, ...]
    """Fold classes that episodes may use (``sub_list`` / ``sub_val_list``)."""
    images: tuple[int, ...]
    """Official ``data_list``: images with at least one usable fold class."""
    class_images: dict[int, tuple[int, ...]]
    """Official ``sub_class_file_list``: images where the class passes the area rule."""
    present: dict[int, tuple[int, ...]]
    """For each listed image, the fold classes with any pixel in it (episode class choice)."""


def build_fold_index(
    source: SegmentationSource,
    fold_classes: Sequence[int],
    min_class_area: int = OFFICIAL_MIN_CLASS_AREA,
    filter_intersection: bool = False,
) -> FoldIndex:
    """Fold list and per-class index from ``source.class_areas`` (no mask decoding)."""
    classes = tuple(sorted(set(int(c) for c in fold_classes)))
    if not classes:
        raise ValueError(f"{source.name}: fold_classes is empty")
    allowed = set(classes)
    images: list[int] = []
    class_images: dict[int, list[int]] = {c: [] for c in classes}
    present: dict[int, tuple[int, ...]] = {}
    for index in range(len(source)):
        areas = source.class_areas(index)
        if filter_intersection and not set(areas) <= allowed:
            continue  # official: label classes must be a subset of sub_list
        usable = [c for c in classes if areas.get(c, 0) >= min_class_area]
        if not usable:
            continue
        images.append(index)
        present[index] = tuple(c for c in classes if areas.get(c, 0) > 0)
        for c in usable:
            class_images[c].append(index)
    return FoldIndex(
        classes, tuple(images), {c: tuple(v) for c, v in class_images.items()}, present
    )


def check_support_pools(
    index: FoldIndex, shots: int, source_name: str, small_classes: SmallClasses = "error"
) -> FoldIndex:
    """Make sure every class an episode can draw has ``shots`` supports besides the query.

    A class present in a listed image needs at least ``shots + 1`` images in its index
    (the query itself may be one of them). ``small_classes="error"`` raises
    :class:`DataError` naming the classes and counts; ``"skip"`` removes them from the
    episode classes (and drops images left without a class); a skipped class then
    never appears in the evaluation (metrics: see ``SegmentationMeter.unseen_classes``).
    """
    drawable = {c for classes in index.present.values() for c in classes}
    too_small = {
        c: len(index.class_images[c])
        for c in sorted(drawable)
        if len(index.class_images[c]) < shots + 1
    }
    if not too_small:
        return index
    if small_classes == "error":
        detail = ", ".join(f"class {c}: {n} usable image(s)" for c, n in too_small.items())
        raise DataError(
            f"{source_name}: cannot draw {shots} support(s) distinct from the query for "
            f"{detail} (need {shots + 1}); lower data.min_class_area or use "
            "small_classes='skip'"
        )
    if small_classes != "skip":
        raise ValueError(f"small_classes={small_classes!r}: use 'error' or 'skip'")
    keep = tuple(c for c in index.classes if c not in too_small)
    present = {i: tuple(c for c in cs if c in keep) for i, cs in index.present.items()}
    images = tuple(i for i in index.images if present[i])
    return FoldIndex(
        keep,
        images,
        {c: index.class_images[c] for c in keep},
        {i: present[i] for i in images},
    )


# ------------------------------------------------------------------- episode draws
@dataclass(frozen=True)
class EpisodeSpec:
    """Which images and class make one episode (source positions)."""

    query: int
    class_id: int
    supports: tuple[int, ...]


def episode_rng(seed: int, epoch: int, episode: int) -> np.random.Generator:
    """The generator of episode ``episode``: depends only on ``(seed, epoch, episode)``."""
    return np.random.default_rng([seed, epoch, episode, _EPISODE_STREAM])


def draw_episode(index: FoldIndex, query: int, shots: int, rng: np.random.Generator) -> EpisodeSpec:
    """Class uniform among the fold classes present in ``query``; ``shots`` distinct
    supports uniform from that class's index, never the query."""
    present = index.present[query]
    class_id = present[int(rng.integers(len(present)))]
    pool = [i for i in index.class_images[class_id] if i != query]
    chosen = rng.choice(len(pool), size=shots, replace=False)
    return EpisodeSpec(query, class_id, tuple(pool[int(k)] for k in chosen))


def binary_mask(mask: np.ndarray, class_id: int) -> np.ndarray:
    """``(H,W)`` uint8: 1 where ``class_id``, 255 where ignore, 0 elsewhere."""
    out = (mask == class_id).astype(np.uint8)
    out[mask == IGNORE_INDEX] = IGNORE_INDEX
    return out


def label_lookup(mapping: Mapping[int, int]) -> np.ndarray:
    """``(256,)`` int16 table for a class-id map; ids outside the map read -1."""
    table = np.full(256, -1, dtype=np.int16)
    for class_id, label in mapping.items():
        table[class_id] = label
    return table


# ------------------------------------------------------------------------ dataset
class EpisodeDataset(Dataset[dict[str, Any]]):
    """Few-shot episodes of one fold, as dicts that :func:`collate_episodes` batches.

    Args:
        source: a :class:`SegmentationSource` (one split of one dataset).
        fold_classes: the classes episodes use: base classes for training, novel for
            evaluation.
        shots: K supports per episode.
        mode: ``"train"`` (one epoch = every list image once as query, shuffled per
            epoch) or ``"val"`` (list order, cycled to ``episodes``).
        transform: joint transform, e.g. :class:`TrainTransform` / :class:`EvalTransform`.
        seed: episodes depend only on ``(seed, epoch, i)``.
        episodes: evaluation episode count (default: one pass over the list); must be
            ``None`` in training mode.
        min_class_area: area rule of the lists (official 2*32*32 pixels).
        filter_intersection: drop images with classes outside ``fold_classes``;
            ``None`` = official (on in training, off in evaluation).
        base_label_map: dataset id -> base-learner label (``splits.base_learner_label_map``);
            ``None``: the base label is all 0 (255 kept) and ``base_channel`` is 0.
        small_classes: see :func:`check_support_pools`.

    Load it with ``DataLoader(..., shuffle=False, collate_fn=collate_episodes)``: the
    dataset orders the training queries itself (per epoch, from the seed).
    """

    def __init__(
        self,
        source: SegmentationSource,
        fold_classes: Sequence[int],
        shots: int,
        mode: Mode,
        transform: JointTransform,
        seed: int = 0,
        episodes: int | None = None,
        *,
        min_class_area: int = OFFICIAL_MIN_CLASS_AREA,
        filter_intersection: bool | None = None,
        base_label_map: Mapping[int, int] | None = None,
        small_classes: SmallClasses = "error",
    ) -> None:
        if mode not in ("train", "val"):
            raise ValueError(f"mode={mode!r}: use 'train' or 'val'")
        if shots < 1:
            raise ValueError(f"shots={shots}: must be at least 1")
        if seed < 0:
            raise ValueError(f"seed={seed}: must be >= 0")
        if mode == "train" and episodes is not None:
            raise ValueError(
                "episodes is for mode='val'; a training epoch is one pass over the list"
            )
        if episodes is not None and episodes < 1:
            raise ValueError(f"episodes={episodes}: must be >= 1")
        if filter_intersection is None:
            filter_intersection = mode == "train"
        self.source = source
        self.shots = shots
        self.mode: Mode = mode
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        index = build_fold_index(source, fold_classes, min_class_area, filter_intersection)
        if not index.images:
            raise DataError(
                f"{source.name}: no image has a class of {list(index.classes)} covering >= "
                f"{min_class_area} pixels (filter_intersection={filter_intersection}); the "
                "fold's list is empty"
            )
        self.index = check_support_pools(index, shots, source.name, small_classes)
        if not self.index.images:
            reasons = ", ".join(
                f"class {c}: {len(index.class_images[c])} usable image(s)" for c in index.classes
            )
            raise DataError(
                f"{source.name}: every class of {list(index.classes)} was skipped "
                f"(small_classes='skip'): an episode needs {shots + 1} usable images of its "
                f"class ({shots} support(s) besides the query, each with >= {min_class_area} "
                f"pixels of it) and {reasons}; lower data.min_class_area or the shots"
            )
        self.episodes = episodes if episodes is not None else len(self.index.images)
        self.base_label_map = dict(base_label_map) if base_label_map is not None else None
        self._base_lookup = label_lookup(self.base_label_map) if self.base_label_map else None
        self._order_epoch = -1
        self._order: np.ndarray = np.arange(len(self.index.images))

    def __len__(self) -> int:
        return len(self.index.images) if self.mode == "train" else self.episodes

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (training order and every episode's draws depend on it)."""
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: must be >= 0")
        self.epoch = epoch

    def query_of(self, i: int) -> int:
        """Source position of episode ``i``'s query."""
        images = self.index.images
        if self.mode == "val":
            return images[i % len(images)]
        if self._order_epoch != self.epoch:
            order_rng = np.random.default_rng([self.seed, self.epoch, _ORDER_STREAM])
            self._order = order_rng.permutation(len(images))
            self._order_epoch = self.epoch
        return images[int(self._order[i])]

    def episode_spec(self, i: int) -> EpisodeSpec:
        """The images and class of episode ``i`` (cheap: no decoding)."""
        if not 0 <= i < len(self):
            raise IndexError(f"episode {i} out of range 0..{len(self) - 1}")
        return draw_episode(
            self.index, self.query_of(i), self.shots, episode_rng(self.seed, self.epoch, i)
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"episode {i} out of range 0..{len(self) - 1}")
        rng = episode_rng(self.seed, self.epoch, i)
        spec = draw_episode(self.index, self.query_of(i), self.shots, rng)
        source = self.source

        raw_mask = source.load_mask(spec.query)
        query_mask = binary_mask(raw_mask, spec.class_id)
        base_label = self._base_label(raw_mask, spec.query)
        query_image, (query_mask_t, base_label_t) = self.transform(
            source.load_image(spec.query), [query_mask, base_label], rng
        )
        support_images, support_masks = [], []
        for s in spec.supports:
            mask = binary_mask(source.load_mask(s), spec.class_id)
            image_t, (mask_t,) = self.transform(source.load_image(s), [mask], rng)
            support_images.append(image_t)
            support_masks.append(mask_t)
        return {
            "query_image": query_image,  # (3,H,W) float32
            "query_mask": query_mask_t,  # (H,W) int64
            "support_images": torch.stack(support_images),  # (K,3,H,W)
            "support_masks": torch.stack(support_masks),  # (K,H,W)
            "class_id": spec.class_id,
            "query_base_label": base_label_t,  # (H,W) int64
            "base_channel": self._base_channel(spec.class_id),
            "query_original_mask": torch.from_numpy(query_mask).to(torch.int64),  # (h,w)
            "query_original_base_label": torch.from_numpy(base_label).to(torch.int64),
            "query_name": source.image_name(spec.query),
            "support_names": [source.image_name(s) for s in spec.supports],
        }

    def _base_label(self, raw_mask: np.ndarray, query: int) -> np.ndarray:
        """``(H,W)`` uint8 base-learner label of the query (official ``label_b``)."""
        if self._base_lookup is None:
            return np.where(raw_mask == IGNORE_INDEX, IGNORE_INDEX, 0).astype(np.uint8)
        codes = raw_mask.astype(np.int64)
        label = np.full(codes.shape, -1, dtype=np.int16)
        known = codes < len(self._base_lookup)
        label[known] = self._base_lookup[codes[known]]
        if (label < 0).any():
            unknown = sorted(set(np.unique(raw_mask[label < 0]).tolist()))
            raise DataError(
                f"{self.source.name}: image {self.source.image_name(query)!r} has class ids "
                f"{unknown} that the base-learner label map does not know"
            )
        return label.astype(np.uint8)

    def _base_channel(self, class_id: int) -> int:
        """Base-learner channel of the episode class: its renumbered id, 0 when novel."""
        if self.base_label_map is None:
            return 0
        return int(self.base_label_map.get(class_id, 0))


def collate_episodes(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch episode dicts into the episode batch of ``docs/architecture.md``.

    Tensors of equal size are stacked (``(B,...)``); original-size masks and names stay
    lists. ``class_id`` and ``base_channel`` become ``(B,)`` int64.
    """
    if not items:
        raise ValueError("collate_episodes got an empty batch")
    stacked = ("query_image", "query_mask", "support_images", "support_masks", "query_base_label")
    batch: dict[str, Any] = {key: torch.stack([item[key] for item in items]) for key in stacked}
    for key in ("class_id", "base_channel"):
        batch[key] = torch.tensor([int(item[key]) for item in items], dtype=torch.int64)
    for key in ("query_original_mask", "query_original_base_label", "query_name", "support_names"):
        batch[key] = [item[key] for item in items]
    return batch


# ------------------------------------------------------------------- from a Config
def fold_classes_for(config: Config, split: Mode, source: SegmentationSource) -> list[int]:
    """Episode classes: the configured fold's base classes for ``"train"``, its novel
    classes for ``"val"``; FSS-1000 (no folds): the classes of the source's own split."""
    d = config.data
    if d.dataset == "fss1000":
        from hdmnet_core.data.fss1000 import split_class_ids

        return split_class_ids(source.name.rpartition("/")[2])
    if split == "train":
        return splits.base_classes(d.dataset, d.fold, d.coco_split)
    return splits.novel_classes(d.dataset, d.fold, d.coco_split)


def build_episode_dataset(
    config: Config,
    split: Mode,
    source: SegmentationSource,
    seed: int | None = None,
    augment: bool | None = None,
) -> EpisodeDataset:
    """The episode dataset of ``config.data`` for ``split`` ("train" or "val").

    ``seed`` defaults to ``config.train.seed`` for training and ``config.eval.seed_generator``
    for evaluation (the evaluation engine passes each run's seed). Evaluation uses
    ``config.eval.episodes`` episodes; ``filter_intersection`` applies to training only
    (official). FSS-1000 follows HSNet: the source split's classes, every image with any
    foreground (no area rule), no base learner (base label 0, ``base_channel`` 0).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: use 'train' or 'val'")
    d = config.data
    fold_classes = fold_classes_for(config, split, source)
    try:
        return _episode_dataset_from_config(
            config,
            split,
            source,
            seed,
            fold_classes,
            split == "train" if augment is None else augment,
        )
    except DataError as err:
        raise DataError(f"{d.dataset} fold {d.fold} ({split}): {err}") from err


def _episode_dataset_from_config(
    config: Config,
    split: Mode,
    source: SegmentationSource,
    seed: int | None,
    fold_classes: list[int],
    augment: bool,
) -> EpisodeDataset:
    d = config.data
    transform: JointTransform
    if augment:
        transform = TrainTransform(d.train_size, d.scale_range, d.rotate_degrees)
    else:
        transform = EvalTransform(d.eval_size)
    if seed is None:
        seed = config.train.seed if split == "train" else config.eval.seed_generator
    if d.dataset == "fss1000":
        base_label_map = None
        min_class_area = 1  # HSNet uses every FSS-1000 image
    else:
        base_label_map = splits.base_learner_label_map(d.dataset, d.fold, d.coco_split)
        min_class_area = d.min_class_area
    return EpisodeDataset(
        source,
        fold_classes,
        d.shots,
        split,
        transform,
        seed=seed,
        episodes=config.eval.episodes if split == "val" else None,
        min_class_area=min_class_area,
        filter_intersection=d.filter_intersection if split == "train" else False,
        base_label_map=base_label_map,
    )
