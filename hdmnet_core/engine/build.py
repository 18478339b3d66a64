"""Models and devices built from a :class:`~hdmnet_core.config.Config`: one place for training,
evaluation, checkpoints and notebooks.

- :func:`num_base_classes`: the base learner's foreground classes for the configured fold
  (PASCAL 15, COCO 60, synthetic 15).
- :func:`build_base_learner`: the stage-1 PSPNet (``num_base_classes + 1`` channels).
- :func:`build_meta_model`: the stage-2 HDMNet for ``config.data.shots`` shots.
- :func:`resolve_device`: ``auto|cpu|cuda|mps`` -> a ``torch.device``, never hard-coded.
"""

from __future__ import annotations

import torch

from hdmnet_core.config import Config, ConfigError
from hdmnet_core.data import splits
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.pspnet import PSPNet

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")


def num_base_classes(config: Config) -> int:
    """Foreground classes of the base learner: the fold's base classes (reference §1)."""
    d = config.data
    if d.dataset == "fss1000":
        raise ConfigError(
            "data.dataset='fss1000': FSS-1000 has no base/novel folds and no base learner; "
            "train on PASCAL, COCO or synthetic data and evaluate on FSS-1000"
        )
    return len(splits.base_classes(d.dataset, d.fold, d.coco_split))


def build_base_learner(config: Config) -> PSPNet:
    """Stage 1: the PSPNet base learner of ``config`` (random weights, trainable)."""
    return PSPNet(config.model.backbone, num_base_classes(config) + 1)


def build_meta_model(config: Config) -> HDMNet:
    """Stage 2: HDMNet for ``config.data.shots`` shots (frozen PSPNet inside, random weights)."""
    return HDMNet(config.model, num_base_classes(config), config.data.shots)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an unavailable device is an error."""
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"device={name!r}: choose one of {list(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda': no CUDA device is available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps': Apple MPS is not available here; use --device cpu")
    return torch.device(name)
