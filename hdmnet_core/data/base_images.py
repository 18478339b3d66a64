"""Images with base-learner labels: the data of stage 1 (BAM ``train_base.py``, ``BaseData``).

Every image of the split is used (no area rule, no filter: BAM's base learner trains on the
whole train list); its label maps the fold's base classes to ``1..|base|`` in ascending order
and every other class to 0 (background), 255 kept (``splits.base_learner_label_map``).

Determinism as for episodes (:mod:`.episodes`): image ``i`` of epoch ``e`` draws its
augmentation from ``np.random.default_rng([seed, e, i, 1])`` and the training order from
``np.random.default_rng([seed, e, 0])``, so any number of DataLoader workers gives the same
batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hdmnet_core.data.episodes import IGNORE_INDEX, Mode, episode_rng, label_lookup
from hdmnet_core.data.source import DataError, SegmentationSource
from hdmnet_core.data.transforms import JointTransform

_ORDER_STREAM = 0


class BaseImageDataset(Dataset[dict[str, Any]]):
    """``{"image": (3,S,S) float32, "label": (S,S) int64, "name": str}`` per image.

    Args:
        source: one split of a dataset.
        base_label_map: dataset id -> base label (ids missing from the map are an error).
        transform: :class:`~hdmnet_core.data.transforms.CropTrainTransform` for training,
            :class:`~hdmnet_core.data.transforms.EvalTransform` for validation.
        mode: ``"train"`` shuffles per epoch; ``"val"`` keeps the source order.
        seed: the order and augmentations depend only on ``(seed, epoch, i)``.
        max_images: use the first ``max_images`` images only (quick validation).
    """

    def __init__(
        self,
        source: SegmentationSource,
        base_label_map: Mapping[int, int],
        transform: JointTransform,
        mode: Mode,
        seed: int = 0,
        max_images: int | None = None,
    ) -> None:
        if mode not in ("train", "val"):
            raise ValueError(f"mode={mode!r}: use 'train' or 'val'")
        if len(source) == 0:
            raise DataError(f"{source.name}: the split has no images")
        self.source = source
        self.transform = transform
        self.mode: Mode = mode
        self.seed = seed
        self.epoch = 0
        self.count = len(source) if max_images is None else min(max_images, len(source))
        self._lookup = label_lookup(base_label_map)

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch={epoch}: must be >= 0")
        self.epoch = epoch

    def image_of(self, i: int) -> int:
        """Source position of item ``i`` in the current epoch."""
        if self.mode == "val":
            return i
        order = np.random.default_rng([self.seed, self.epoch, _ORDER_STREAM]).permutation(
            self.count
        )
        return int(order[i])

    def base_label(self, index: int) -> np.ndarray:
        """``(H,W)`` uint8 base-learner label of source image ``index``."""
        raw = self.source.load_mask(index).astype(np.int64)
        label = np.full(raw.shape, -1, dtype=np.int16)
        known = raw < len(self._lookup)
        label[known] = self._lookup[raw[known]]
        label[raw == IGNORE_INDEX] = IGNORE_INDEX
        if (label < 0).any():
            unknown = sorted(set(np.unique(raw[label < 0]).tolist()))
            raise DataError(
                f"{self.source.name}: image {self.source.image_name(index)!r} has class ids "
                f"{unknown} that the base-learner label map does not know"
            )
        return label.astype(np.uint8)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"image {i} out of range 0..{len(self) - 1}")
        index = self.image_of(i)
        rng = episode_rng(self.seed, self.epoch, i)
        image, (label,) = self.transform(
            self.source.load_image(index), [self.base_label(index)], rng
        )
        return {"image": image, "label": label, "name": self.source.image_name(index)}


def collate_base_images(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"image": (B,3,S,S), "label": (B,S,S), "name": [str]}``."""
    if not items:
        raise ValueError("collate_base_images got an empty batch")
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.stack([item["label"] for item in items]),
        "name": [item["name"] for item in items],
    }
