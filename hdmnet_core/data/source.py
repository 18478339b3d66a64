"""What every dataset reader provides, so that the episode sampler is one piece of code.

A *source* is one split of one prepared dataset (``synthetic/train``, ``pascal/val``,
...). It is a sequence of (image, class-index mask) pairs plus, for every image, the
pixel area of each class it contains. Areas are computed once when the data is
prepared, so building fold lists never decodes a mask.

Conventions (reference section 1):
- images: ``(H, W, 3)`` uint8 RGB numpy arrays, values 0..255;
- masks: ``(H, W)`` uint8 numpy arrays of dataset class ids, 0 = background,
  255 = ignore (e.g. VOC's object borders); uint16 for FSS-1000, whose 1,000 class ids
  do not fit in a byte (its ids skip 255 so that 255 still means ignore);
- class areas: ``{class_id: pixel_count}`` for every foreground class present
  (0 and 255 are never keys), at the original resolution.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Protocol, runtime_checkable

import numpy as np


class DataError(RuntimeError):
    """A dataset file is missing, truncated, unreadable or inconsistent.

    The message always names the file and the problem.
    """


@runtime_checkable
class SegmentationSource(Protocol):
    name: str
    """e.g. ``"synthetic/train"`` or ``"pascal/val"``."""
    dataset: str
    """``"synthetic"``, ``"pascal"``, ``"coco"`` or ``"fss1000"``."""

    def __len__(self) -> int: ...

    def image_name(self, index: int) -> str:
        """A stable, human-readable id of image ``index`` (file stem or key)."""
        ...

    def load_image(self, index: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        ...

    def load_mask(self, index: int) -> np.ndarray:
        """``(H, W)`` uint8 (FSS-1000: uint16) class ids, 0 background, 255 ignore."""
        ...

    def class_areas(self, index: int) -> dict[int, int]:
        """Pixel count of each foreground class in image ``index`` (no decoding)."""
        ...


def compute_class_areas(mask: np.ndarray) -> dict[int, int]:
    """``{class_id: pixels}`` for the foreground classes of a class-index mask."""
    values, counts = np.unique(mask, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v not in (0, 255)}


def name_problem(name: str) -> str | None:
    """Why a name read from a file (list line, annotation, manifest, archive member)
    cannot be a path inside a folder: empty, absolute, or with a ``..`` part (else None)."""
    if not name or "\x00" in name:
        return "empty name or a NUL byte"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "its path has a '..' part"
    return None


def safe_join(root: str | os.PathLike[str], name: str, where: str) -> Path:
    """``root / name`` for a ``name`` read from an untrusted file named by ``where`` (e.g.
    ``"lists/train.txt:12"``): :class:`DataError` when it would address a file outside
    ``root`` (absolute, ``..``, or a symbolic link in the tree that leads out)."""
    root = Path(root)
    path = root / name
    problem = name_problem(name)
    if problem is None and not path.resolve().is_relative_to(root.resolve()):
        problem = "a symbolic link on its way leads out of the folder"
    if problem is not None:
        raise DataError(
            f"{where}: name {name!r} would address a file outside {root} ({problem}); "
            "the file is not trusted: prepare the data again from the official source"
        )
    return path
