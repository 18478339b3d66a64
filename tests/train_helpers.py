"""Small training settings shared by the engine tests (fast: seconds per stage on CPU)."""

from __future__ import annotations

from pathlib import Path

from hdmnet_core.config import Config

TINY_SETTINGS: dict[str, object] = {
    "data.synthetic_images_train": 200,
    "data.synthetic_images_val": 60,
    "data.synthetic_image_size": 64,
    "data.train_size": 64,
    "data.eval_size": 64,
    "data.min_class_area": 40,
    "train.batch_size": 4,
    "train.max_steps": 6,
    "train.checkpoint_every": 2,
    "train.log_every": 1,
    "train.selection_split": "none",
    "train.device": "cpu",
    "train.base_learner_steps": 4,
    "train.base_learner_batch_size": 4,
    "train.base_learner_crop": 64,
    "train.base_learner_val_every": 2,
    "train.base_learner_val_images": 8,
}
"""cpu-tiny on a small synthetic set (64 px), a few steps, no model selection."""


def tiny_config(data_root: Path, **overrides: object) -> Config:
    """``cpu-tiny`` with :data:`TINY_SETTINGS`, data under ``data_root``, then ``overrides``."""
    return Config.from_profile(
        "cpu-tiny", **{"data.root": str(data_root), **TINY_SETTINGS, **overrides}
    )
