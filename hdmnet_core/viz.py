"""Plots for the notebooks: episodes, masks, predictions.

All functions take numpy arrays or tensors in the project's conventions (images
``(3,H,W)`` normalised or ``(H,W,3)`` uint8; masks with 255 = ignore) and return the
matplotlib ``Figure`` so notebooks can show or save it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from hdmnet_core.data.transforms import denormalize

FOREGROUND_COLOUR = (0.1, 0.8, 0.2)
IGNORE_COLOUR = (1.0, 1.0, 1.0)


def to_uint8_image(image: Any) -> np.ndarray:
    """A displayable ``(H,W,3)`` uint8 image from a normalised ``(3,H,W)`` tensor or a uint8 array."""
    if (
        isinstance(image, np.ndarray)
        and image.ndim == 3
        and image.shape[0] == 3
        and image.dtype != np.uint8
    ):
        image = torch.from_numpy(image)
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] == 3 and image.dtype != torch.uint8:
            image = denormalize(image.detach().float().cpu()).permute(
                1, 2, 0
            )  # (3,H,W) -> (H,W,3), 0..255
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an image of shape (3,H,W) or (H,W,3), got {image.shape}")
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def overlay_mask(
    image: np.ndarray,
    mask: Any,
    colour: tuple[float, float, float] = FOREGROUND_COLOUR,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend ``colour`` over the foreground (mask == 1) of ``image``; ignore pixels (255) in white."""
    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    out = image.astype(np.float64) / 255.0
    foreground = mask == 1
    ignore = mask == 255
    out[foreground] = (1 - alpha) * out[foreground] + alpha * np.array(colour)
    out[ignore] = (1 - alpha) * out[ignore] + alpha * np.array(IGNORE_COLOUR)
    return (out * 255).round().astype(np.uint8)


def colour_class_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A class-index mask as an RGB picture: one colour per class, black background, white ignore."""
    palette = (
        plt.get_cmap("tab20", max(num_classes, 1))(np.arange(max(num_classes, 1)))[:, :3] * 255
    ).astype(np.uint8)
    rgb = np.zeros((*mask.shape, 3), dtype=np.uint8)
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        rgb[mask == class_id] = (
            (255, 255, 255) if class_id == 255 else palette[(int(class_id) - 1) % len(palette)]
        )
    return rgb


def show_episode(
    batch: dict[str, Any],
    index: int = 0,
    class_names: Sequence[str] | None = None,
    prediction: Any = None,
    size: float = 2.6,
) -> Figure:
    """Supports (with masks) on the left, the query (with its mask) and an optional prediction.

    Every panel is ``size`` x ``size`` inches whatever the number of shots, and pixels
    are drawn unsmoothed, so a figure saved at a fixed dpi shows every image at one scale.
    """
    supports = batch["support_images"][index]  # (K,3,H,W)
    support_masks = batch["support_masks"][index]  # (K,H,W)
    shots = supports.shape[0]
    columns = shots + 1 + (prediction is not None)
    fig, axes = plt.subplots(1, columns, figsize=(size * columns, size), squeeze=False)
    class_id = int(batch["class_id"][index])
    name = class_names[class_id - 1] if class_names else f"class {class_id}"
    for k in range(shots):
        axes[0, k].imshow(
            overlay_mask(to_uint8_image(supports[k]), support_masks[k]), interpolation="nearest"
        )
        axes[0, k].set_title(f"support {k + 1}")
    query = to_uint8_image(batch["query_image"][index])
    axes[0, shots].imshow(overlay_mask(query, batch["query_mask"][index]), interpolation="nearest")
    axes[0, shots].set_title("query + ground truth")
    if prediction is not None:
        axes[0, shots + 1].imshow(
            overlay_mask(query, prediction, colour=(0.9, 0.3, 0.1)), interpolation="nearest"
        )
        axes[0, shots + 1].set_title("prediction")
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(f"{shots}-shot episode: segment '{name}'")
    fig.tight_layout()
    return fig


def blank_panel(text: str, columns: int = 2, size: float = 2.6) -> Figure:
    """A figure the size of a ``columns``-panel :func:`show_episode` holding only ``text``
    (shown instead of a stale picture when there is nothing to draw)."""
    fig = plt.figure(figsize=(size * columns, size))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="0.4")
    return fig


def show_images_with_masks(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    num_classes: int,
    titles: Sequence[str],
    size: float = 2.4,
) -> Figure:
    """A grid: images on the top row, their coloured class masks below."""
    count = len(images)
    fig, axes = plt.subplots(2, count, figsize=(size * count, size * 2), squeeze=False)
    for i, (image, mask, title) in enumerate(zip(images, masks, titles, strict=True)):
        axes[0, i].imshow(image)
        axes[0, i].set_title(title, fontsize=7)
        axes[1, i].imshow(colour_class_mask(mask, num_classes))
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    return fig
