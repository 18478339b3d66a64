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


def upsample_map(values: Any, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map bilinearly resized to ``size`` (H, W) for drawing over an image."""
    tensor = torch.as_tensor(
        np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values),
        dtype=torch.float32,
    )
    if tensor.ndim != 2:
        raise ValueError(f"expected a (h, w) map, got shape {tuple(tensor.shape)}")
    resized = torch.nn.functional.interpolate(
        tensor[None, None], size=size, mode="bilinear", align_corners=False
    )
    return resized[0, 0].numpy()


def show_heatmaps(
    maps: Sequence[Any],
    titles: Sequence[str],
    images: Sequence[Any | None] | None = None,
    size: float = 1.9,
    cmap: str = "magma",
    alpha: float = 0.65,
    shared_scale: bool = False,
    colorbar: bool = True,
    columns: int | None = None,
) -> Figure:
    """(h, w) maps in rows of ``columns`` (default: one row), each drawn over its image
    when ``images`` gives one.

    Maps are resized to their image (bilinear); ``shared_scale`` uses one colour range
    for the row, else each panel has its own (its colour bar says which).
    """
    count = len(maps)
    if len(titles) != count or (images is not None and len(images) != count):
        raise ValueError("show_heatmaps: maps, titles and images must have the same length")
    arrays = [
        np.asarray(m.detach().cpu() if isinstance(m, torch.Tensor) else m, dtype=np.float64)
        for m in maps
    ]
    low = min(float(a.min()) for a in arrays) if shared_scale else None
    high = max(float(a.max()) for a in arrays) if shared_scale else None
    columns = columns or count
    rows = -(-count // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(size * columns, size * 1.05 * rows), squeeze=False
    )
    for ax in axes.ravel()[count:]:
        ax.axis("off")
    for i, (values, title) in enumerate(zip(arrays, titles, strict=True)):
        ax = axes[i // columns, i % columns]
        image = None if images is None else images[i]
        if image is not None:
            picture = to_uint8_image(image)
            ax.imshow(picture, interpolation="nearest")
            values = upsample_map(values, picture.shape[:2])
        drawn = ax.imshow(
            values,
            cmap=cmap,
            alpha=alpha if image is not None else 1.0,
            vmin=low,
            vmax=high,
            interpolation="nearest",
        )
        if colorbar:
            fig.colorbar(drawn, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def feature_pca_rgb(feature_maps: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """(C, h, w) maps -> (h, w, 3) pictures of their first three principal components.

    One basis for all maps (fitted on their tokens together), so equal colours mean
    similar features across the maps; each component scaled to 0..1 over all maps.
    """
    if not feature_maps:
        raise ValueError("feature_pca_rgb: no feature maps")
    channels = {int(m.shape[0]) for m in feature_maps}
    if len(channels) != 1:
        raise ValueError(f"feature_pca_rgb: maps have different channel counts {sorted(channels)}")
    tokens = torch.cat([m.detach().float().cpu().flatten(1).T for m in feature_maps])  # (N, C)
    centred = tokens - tokens.mean(dim=0)
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)  # rows: principal axes
    count = min(3, basis.shape[0])
    axes = basis[:count]
    # a deterministic sign per axis: its largest-magnitude entry is positive
    axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    projected = centred @ axes.T  # (N, count)
    if count < 3:
        projected = torch.cat([projected, projected.new_zeros(len(projected), 3 - count)], dim=1)
    low, high = projected.amin(dim=0), projected.amax(dim=0)
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    pictures, start = [], 0
    for m in feature_maps:
        h, w = m.shape[-2:]
        pictures.append(scaled[start : start + h * w].reshape(h, w, 3).numpy())
        start += h * w
    return pictures


# ------------------------------------------------ training, evaluation, ablations (06-08)
def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over ``window`` rows (the first rows average what they have)."""
    if window <= 1 or len(values) < 2:
        return values
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (
        cumulative[1:] - cumulative[np.maximum(np.arange(1, len(values) + 1) - window, 0)]
    ) / counts


def plot_training_curves(
    metrics: dict[str, np.ndarray], losses: Sequence[str], title: str = "", smooth: int = 5
) -> Figure:
    """Loss terms, learning rates and validation scores of one ``metrics.csv`` (columns).

    Loss rows are drawn thin as logged and thick as a running mean of ``smooth`` rows.
    """
    step = metrics["step"]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 2.8))
    train_rows = ~np.isnan(metrics[losses[0]]) if losses else np.ones_like(step, dtype=bool)
    for name in losses:
        values = metrics[name][train_rows]
        (line,) = axes[0].plot(step[train_rows], values, linewidth=0.5, alpha=0.4)
        axes[0].plot(step[train_rows], _smooth(values, smooth), color=line.get_color(),
                     label=name.removeprefix("train/"))  # fmt: skip
    axes[0].set_title("loss terms", fontsize=9)
    axes[0].legend(fontsize=7)
    for name in [k for k in metrics if "lr_group" in k]:
        rows = ~np.isnan(metrics[name]) & (metrics[name] > 0)  # log scale: the last lr is 0
        axes[1].plot(step[rows], metrics[name][rows], label=name.removeprefix("train/"))
    axes[1].set_yscale("log")
    axes[1].set_title("learning rate (poly)", fontsize=9)
    axes[1].legend(fontsize=7)
    for name in [k for k in metrics if k.startswith("val/") and k != "val/score"]:
        rows = ~np.isnan(metrics[name])
        axes[2].plot(step[rows], metrics[name][rows], marker="o", label=name.removeprefix("val/"))
    axes[2].set_title("validation", fontsize=9)
    if any(k.startswith("val/") and k != "val/score" for k in metrics):
        axes[2].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_runs(runs: dict[str, dict[str, np.ndarray]], smooth: int = 5) -> Figure:
    """Total loss and validation score of several runs (``{label: metrics columns}``)."""
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 2.6))
    for label, metrics in runs.items():
        step = metrics["step"]
        total = metrics.get("train/total")
        if total is not None:
            rows = ~np.isnan(total)
            axes[0].plot(step[rows], _smooth(total[rows], smooth), label=label)
        score = metrics.get("val/score")
        if score is not None:
            rows = ~np.isnan(score)
            axes[1].plot(step[rows], score[rows], marker="o", label=label)
    axes[0].set_title("total loss (running mean)", fontsize=9)
    axes[1].set_title("validation score (selection split)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_seed_values(
    values: dict[str, Sequence[float]], seeds: Sequence[int], title: str = ""
) -> Figure:
    """One dot per seed for each output, with the mean ± std bar and the best circled."""
    fig, ax = plt.subplots(figsize=(5.0, 2.8))
    for x, seed_values in enumerate(values.values()):
        points = 100 * np.asarray(seed_values, dtype=np.float64)
        ax.scatter(np.full(len(points), x), points, s=14, color="tab:blue", zorder=3)
        std = float(points.std(ddof=1)) if len(points) > 1 else 0.0
        ax.errorbar(x + 0.15, points.mean(), yerr=std, fmt="s", color="black", capsize=4)
        best = int(np.argmax(points))
        ax.scatter([x], [points[best]], s=90, facecolors="none", edgecolors="tab:red", zorder=4)
        ax.annotate(f"best: seed {seeds[best]}", (x, points[best]), fontsize=6,
                    xytext=(4, 4), textcoords="offset points")  # fmt: skip
    ax.set_xticks(range(len(values)), list(values), fontsize=8)
    ax.set_ylabel("mIoU (%)", fontsize=8)
    ax.set_title(title or "per seed (dots), mean ± std (square), best (circle)", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    errors: dict[str, Sequence[float]] | None = None,
    ylabel: str = "IoU (%)",
    title: str = "",
    width: float = 6.0,
) -> Figure:
    """Bars of several series per group (e.g. per-class IoU of final and meta), values in %."""
    fig, ax = plt.subplots(figsize=(width, 2.8))
    positions = np.arange(len(groups))
    bar = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        yerr = None if errors is None or label not in errors else 100 * np.asarray(errors[label])
        ax.bar(positions + i * bar, 100 * np.asarray(values, dtype=np.float64), bar,
               yerr=yerr, capsize=2, label=label)  # fmt: skip
    ax.set_xticks(positions + bar * (len(series) - 1) / 2, list(groups), fontsize=7, rotation=30)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def show_failure_cases(
    queries: Sequence[Any],
    truths: Sequence[Any],
    predictions: Sequence[Any],
    supports: Sequence[Any],
    support_masks: Sequence[Any],
    titles: Sequence[str],
    size: float = 1.9,
) -> Figure:
    """One column per episode: support with its mask, query with the truth, the prediction."""
    count = len(queries)
    fig, axes = plt.subplots(3, count, figsize=(size * count, size * 3.1), squeeze=False)
    for i in range(count):
        axes[0, i].imshow(overlay_mask(to_uint8_image(supports[i]), support_masks[i]))
        axes[1, i].imshow(overlay_mask(to_uint8_image(queries[i]), truths[i]))
        axes[2, i].imshow(overlay_mask(to_uint8_image(queries[i]), predictions[i]))
        axes[0, i].set_title(titles[i], fontsize=7)
    for row, label in enumerate(("support", "query: truth", "query: prediction")):
        axes[row, 0].set_ylabel(label, fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
