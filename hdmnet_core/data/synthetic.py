"""A synthetic few-shot segmentation benchmark that a 2-core CPU can learn.

Twenty appearance classes (ids 1..20), each a *shape family* x *texture pattern* x
*colour pair*, e.g. ``"striped-disc"`` in red/yellow. Folds follow PASCAL-5i
(:func:`hdmnet_core.data.splits.novel_classes`): fold ``j`` holds the classes
``5j+1..5j+5``. Class ``k`` (0-based) has shape ``k % 5`` and texture ``(k // 5 + k % 5) % 4``,
so every fold contains all five shapes and all four textures: a novel class is a new
*combination* of parts seen in training, and a model has to match the support's
appearance rather than recognise a part. Colour pairs are shared by two classes that
differ in both shape and texture, so colour alone never identifies a class.

Each image has 1-4 objects painted in random order on a cluttered, desaturated
background (later objects occlude earlier ones; the mask shows what is visible), with
random size, position, rotation, aspect, texture period/orientation, colour jitter and
shading, then a per-image brightness and colour cast and pixel noise. As in VOC, the
border between two different labels is marked 255 (ignore), one pixel on each side.
Image ``i`` of split ``s`` depends only on ``(seed, s, i)`` (about 300 images/s at
96 x 96 on one core).

Usable (image, class) pairs: the official 2*32*32-pixel rule is too big for small
images; :func:`scaled_min_area` keeps its share of a 473 x 473 image (84 px at 96, 150 px
at the ``cpu-tiny`` profile's 128), which the profile uses as ``data.min_class_area``.

On disk (``write_synthetic``)::

    <root>/synthetic/manifest.json          generator version, seed, size, counts, sha256
    <root>/synthetic/{train,val}/images.npy (N, S, S, 3) uint8
    <root>/synthetic/{train,val}/masks.npy  (N, S, S) uint8, 0 bg, 1..20, 255 ignore
    <root>/synthetic/{train,val}/class_areas.json   [{class_id: pixels}, ...]

One manifest at the top of the tree describes both splits, so the tree is replaced
as a whole. :func:`ensure_synthetic` reuses a tree whose manifest matches the request
and regenerates it otherwise; a tree without a readable manifest of this generator is
never deleted: it raises :class:`DataError`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from hdmnet_core.atomic import atomic_write_json
from hdmnet_core.config import DataConfig
from hdmnet_core.data.source import DataError, compute_class_areas

GENERATOR_NAME = "hdmnet_core.data.synthetic"
GENERATOR_VERSION = 4
"""Bump whenever the images a seed produces change: old trees are then regenerated."""

SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_IDS = {"train": 0, "val": 1}

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "ring", "cross")
TEXTURES: tuple[str, ...] = ("striped", "checkered", "dotted", "zigzag")

# Saturated colours; every one is used by several classes.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 140, 25),
    "yellow": (235, 215, 45),
    "green": (45, 170, 65),
    "cyan": (40, 195, 210),
    "blue": (45, 75, 215),
    "purple": (145, 55, 195),
    "white": (240, 240, 235),
    "black": (25, 25, 30),
}
COLOUR_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "yellow"),
    ("blue", "white"),
    ("green", "purple"),
    ("orange", "blue"),
    ("cyan", "red"),
    ("yellow", "black"),
    ("purple", "white"),
    ("green", "orange"),
    ("cyan", "black"),
    ("red", "blue"),
)


def _class_parts(k: int) -> tuple[int, int, int]:
    """(shape index, texture index, colour-pair index) of 0-based class ``k``."""
    shape = k % 5
    texture = (k // 5 + k % 5) % 4
    pair = k % 10 if k < 10 else (k + 3) % 10  # classes k and k' sharing a pair differ in both
    return shape, texture, pair


SYNTHETIC_CLASSES: tuple[str, ...] = tuple(
    f"{TEXTURES[_class_parts(k)[1]]}-{SHAPES[_class_parts(k)[0]]}" for k in range(20)
)
"""Names indexed by ``class_id - 1``: texture-shape (the colour pair is in :data:`CLASS_COLOURS`)."""

CLASS_COLOURS: tuple[tuple[str, str], ...] = tuple(
    COLOUR_PAIRS[_class_parts(k)[2]] for k in range(20)
)

OFFICIAL_MIN_AREA = 2 * 32 * 32
OFFICIAL_IMAGE_SIZE = 473


def scaled_min_area(image_size: int) -> int:
    """The official 2*32*32-pixel usable-pair rule as a fraction of a 473 x 473 image
    (about 0.92 %), applied to an ``image_size`` x ``image_size`` image (96 -> 84)."""
    fraction = OFFICIAL_MIN_AREA / OFFICIAL_IMAGE_SIZE**2
    return int(round(fraction * image_size * image_size))


# ----------------------------------------------------------------------------- drawing
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)``, each (S,S) float32."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    return y, x


def _rotate(
    y: np.ndarray, x: np.ndarray, cy: float, cx: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame centred at (cy, cx) and turned by ``angle`` radians."""
    dy, dx = y - cy, x - cx
    c, s = np.cos(angle), np.sin(angle)
    return c * dy - s * dx, s * dy + c * dx  # (u along the frame's first axis, v second)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a shape of radius 1 in object coordinates ``(u, v)`` -> (S,S) bool."""
    name = SHAPES[shape]
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.82
    if name == "triangle":  # equilateral, inscribed in the unit circle: three half-planes
        inside = np.ones(u.shape, dtype=bool)
        for angle in (0.5 * np.pi, 0.5 * np.pi + 2 * np.pi / 3, 0.5 * np.pi + 4 * np.pi / 3):
            inside &= u * np.sin(angle) + v * np.cos(angle) <= 0.5
        return inside
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.4) & (av <= 1.0)) | ((av <= 0.4) & (au <= 1.0))
    raise ValueError(f"unknown shape index {shape}")


def _texture_pattern(texture: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-colour pattern in texture coordinates (units of one period) -> (S,S) bool."""
    name = TEXTURES[texture]
    if name == "striped":
        return (a - np.floor(a)) < 0.5
    if name == "checkered":
        return ((np.floor(a) + np.floor(b)) % 2) == 0
    if name == "dotted":
        da, db = a - np.round(a), b - np.round(b)
        return da * da + db * db < 0.32**2
    if name == "zigzag":
        triangle_wave = 2.0 * np.abs(b * 0.5 - np.floor(b * 0.5 + 0.5))  # 0..1, period 2
        shifted = a + 0.9 * triangle_wave
        return (shifted - np.floor(shifted)) < 0.5
    raise ValueError(f"unknown texture index {texture}")


def _background(rng: np.random.Generator, size: int, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Cluttered, desaturated background -> (S,S,3) float32 in 0..255.

    A low-frequency grey field with a faint tint, then 4-9 clutter items: smooth
    ellipses and bars (half grey, half a muted palette colour) and low-contrast grey
    stripe patches. None has a class's look (a saturated two-colour pattern), but
    muted colours mean colour alone cannot separate objects from clutter.
    """
    coarse = rng.uniform(60.0, 190.0, size=(6, 6)).astype(np.float32)
    field = ndimage.zoom(coarse, size / 6.0, order=1, mode="nearest")[:size, :size]
    tint = rng.uniform(-12.0, 12.0, size=3).astype(np.float32)
    image = field[:, :, None] + tint[None, None, :]  # (S,S,3)
    for _ in range(int(rng.integers(4, 10))):
        cy, cx = rng.uniform(0, size, size=2)
        angle = rng.uniform(0, np.pi)
        u, v = _rotate(y, x, cy, cx, angle)
        kind = rng.integers(0, 3)
        if kind == 0:  # smooth ellipse
            ru, rv = rng.uniform(0.05, 0.25, size=2) * size
            inside = (u / ru) ** 2 + (v / rv) ** 2 <= 1.0
        elif kind == 1:  # bar / line
            length, width = rng.uniform(0.2, 0.8) * size, rng.uniform(1.0, 0.05 * size + 1.0)
            inside = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
        else:  # low-contrast grey stripes inside a rectangle
            ru, rv = rng.uniform(0.08, 0.25, size=2) * size
            period = rng.uniform(0.04, 0.12) * size
            stripes = np.sin(2 * np.pi * u / period)
            inside = (np.abs(u) <= ru) & (np.abs(v) <= rv)
            grey = rng.uniform(70.0, 180.0) + rng.uniform(8.0, 25.0) * stripes
            image[inside] = grey[inside][:, None]
            continue
        grey = rng.uniform(40.0, 210.0) + rng.uniform(-15.0, 15.0, size=3)
        hue = np.asarray(list(PALETTE.values())[int(rng.integers(len(PALETTE)))], dtype=np.float64)
        muting = rng.uniform(0.45, 1.0) if rng.random() < 0.5 else 1.0  # 1 = plain grey
        image[inside] = (muting * grey + (1 - muting) * hue).astype(np.float32)
    return image


def _draw_object(
    rng: np.random.Generator,
    class_index: int,
    size: int,
    y: np.ndarray,
    x: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One instance of 0-based class ``class_index`` -> (inside (S,S) bool, colours (S,S,3))."""
    shape, texture, pair = _class_parts(class_index)
    radius = rng.uniform(0.09, 0.28) * size
    cy, cx = rng.uniform(0.12 * size, 0.88 * size, size=2)
    aspect = rng.uniform(0.8, 1.25)
    u, v = _rotate(y, x, cy, cx, rng.uniform(0, 2 * np.pi))
    inside = _shape_mask(shape, u / (radius * aspect), v * aspect / radius)

    period = rng.uniform(0.05, 0.09) * size
    a, b = _rotate(y, x, cy, cx, rng.uniform(0, 2 * np.pi))
    pattern = _texture_pattern(texture, a / period, b / period)

    name_a, name_b = COLOUR_PAIRS[pair]
    jitter = rng.uniform(-32.0, 32.0, size=(2, 3))
    colour_a = np.asarray(PALETTE[name_a], dtype=np.float32) + jitter[0]
    colour_b = np.asarray(PALETTE[name_b], dtype=np.float32) + jitter[1]
    colours = np.where(pattern[:, :, None], colour_a, colour_b)  # (S,S,3)
    # Linear shading across the object, brightness 0.75..1.2.
    gy, gx = rng.normal(size=2) * 0.15 / max(radius, 1.0)
    shading = np.clip(rng.uniform(0.85, 1.1) + gy * (y - cy) + gx * (x - cx), 0.75, 1.2)
    return inside, colours * shading[:, :, None]


def _ignore_border(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different label (one pixel each side) -> (S,S) bool."""
    border = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= vertical
    border[:-1, :] |= vertical
    border[:, 1:] |= horizontal
    border[:, :-1] |= horizontal
    return border


@dataclass
class SyntheticScene:
    """One generated image with what went into it (for tests and figures)."""

    image: np.ndarray
    """(S,S,3) uint8 RGB."""
    mask: np.ndarray
    """(S,S) uint8: visible class ids, 255 on the ignore band."""
    labels: np.ndarray
    """(S,S) uint8: visible class ids before the ignore band was drawn."""
    instance_classes: list[int]
    """Class id of each object, in painting order (later ones occlude earlier ones)."""
    instance_masks: list[np.ndarray]
    """(S,S) bool full extent of each object, occluded parts included."""


def generate_scene(seed: int, split: str, index: int, image_size: int = 96) -> SyntheticScene:
    """Image ``index`` of ``split``; depends only on ``(seed, split, index, image_size)``."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split={split!r}: must be one of {list(SPLITS)}")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    y, x = _grid(image_size)
    image = _background(rng, image_size, y, x)  # (S,S,3) float32
    labels = np.zeros((image_size, image_size), dtype=np.uint8)
    classes: list[int] = []
    extents: list[np.ndarray] = []
    for _ in range(int(rng.integers(1, 5))):
        class_index = int(rng.integers(0, 20))
        inside, colours = _draw_object(rng, class_index, image_size, y, x)
        image[inside] = colours[inside]
        labels[inside] = class_index + 1  # later objects occlude earlier ones
        classes.append(class_index + 1)
        extents.append(inside)
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0.0))  # soften aliasing
    image *= rng.uniform(0.85, 1.15) * rng.uniform(0.9, 1.1, size=3)  # brightness, colour cast
    image += rng.normal(0.0, rng.uniform(2.0, 7.0), size=image.shape).astype(np.float32)
    mask = labels.copy()
    mask[_ignore_border(labels)] = 255
    image_u8 = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return SyntheticScene(image_u8, mask, labels, classes, extents)


def generate_image(
    seed: int, split: str, index: int, image_size: int = 96
) -> tuple[np.ndarray, np.ndarray]:
    """``(image (S,S,3) uint8, mask (S,S) uint8)`` of :func:`generate_scene`."""
    scene = generate_scene(seed, split, index, image_size)
    return scene.image, scene.mask


# ----------------------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())


def _write_split(
    folder: Path, seed: int, split: str, count: int, image_size: int, report: Callable[[str], None]
) -> dict[str, Any]:
    """Generate and save one split into ``folder``; returns its manifest entry."""
    folder.mkdir(parents=True)
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    masks = np.empty((count, image_size, image_size), dtype=np.uint8)
    start = time.perf_counter()
    for i in range(count):
        images[i], masks[i] = generate_image(seed, split, i, image_size)
        if (i + 1) % 500 == 0 or i + 1 == count:
            rate = (i + 1) / max(time.perf_counter() - start, 1e-9)
            report(f"synthetic/{split}: {i + 1}/{count} images ({rate:.0f}/s)")
    areas = [{str(k): v for k, v in compute_class_areas(m).items()} for m in masks]
    _save_npy(folder / "images.npy", images)
    _save_npy(folder / "masks.npy", masks)
    (folder / "class_areas.json").write_text(json.dumps(areas) + "\n", encoding="utf-8")
    return {
        "count": count,
        "sha256": {name: _sha256(folder / name) for name in ("images.npy", "masks.npy")},
    }


def _expected_manifest(
    image_size: int, train_images: int, val_images: int, seed: int
) -> dict[str, Any]:
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "counts": {"train": train_images, "val": val_images},
    }


def write_synthetic(
    root: str | os.PathLike[str],
    *,
    image_size: int = 96,
    train_images: int = 2000,
    val_images: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Generate ``<root>/synthetic`` (replacing any existing tree) and return its path.

    The tree is built in a temporary folder beside it and renamed into place, so a
    reader never sees a partial tree.
    """
    if image_size < 32:
        raise ValueError(f"image_size={image_size}: must be at least 32")
    if train_images < 1 or val_images < 1:
        raise ValueError(f"train_images={train_images}, val_images={val_images}: must be >= 1")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / "synthetic"
    report: Callable[[str], None] = (
        (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
    )
    building = Path(tempfile.mkdtemp(prefix=".synthetic.building-", dir=root))
    try:
        manifest = _expected_manifest(image_size, train_images, val_images, seed)
        manifest["splits"] = {
            split: _write_split(building / split, seed, split, count, image_size, report)
            for split, count in (("train", train_images), ("val", val_images))
        }
        atomic_write_json(building / "manifest.json", manifest)
        _swap_into_place(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an old ``target`` is moved aside first, then deleted."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".synthetic.old-", dir=target.parent))
        os.replace(target, old / "synthetic")
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- checking
def read_manifest(tree: Path) -> dict[str, Any]:
    """The manifest of a synthetic tree; :class:`DataError` if missing, unreadable or not ours."""
    path = tree / "manifest.json"
    if not path.is_file():
        raise DataError(
            f"{path}: missing; {tree} is not a synthetic tree written by write_synthetic"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR_NAME:
        raise DataError(f"{path}: not a manifest of {GENERATOR_NAME} (field 'generator')")
    return manifest


def _split_problem(tree: Path, split: str, count: int, image_size: int) -> str | None:
    """What is wrong with one split's files (None when the shapes and dtypes are right)."""
    expected = {
        "images.npy": ((count, image_size, image_size, 3), np.uint8),
        "masks.npy": ((count, image_size, image_size), np.uint8),
    }
    for name, (shape, dtype) in expected.items():
        path = tree / split / name
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            return f"{path}: cannot be read ({err})"
        if array.shape != shape or array.dtype != dtype:
            return f"{path}: shape {array.shape} {array.dtype}, expected {shape} {np.dtype(dtype)}"
    areas_path = tree / split / "class_areas.json"
    try:
        areas = json.loads(areas_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{areas_path}: cannot be read ({err})"
    if not isinstance(areas, list) or len(areas) != count:
        return f"{areas_path}: expected a list of {count} entries"
    return None


def ensure_synthetic(
    root: str | os.PathLike[str],
    data_config: DataConfig,
    *,
    verify_hashes: bool = False,
    progress: bool = False,
) -> Path:
    """Return ``<root>/synthetic`` matching ``data_config``, generating it when needed.

    - no tree: generate;
    - a tree whose manifest (ours) differs in version, seed, size or counts, or whose
      files are missing or of the wrong shape (or, with ``verify_hashes``, whose sha256
      differ): regenerate it;
    - a folder without a readable manifest of this generator: :class:`DataError`
      (it may hold someone's data, so it is never deleted).
    """
    tree = Path(root) / "synthetic"
    wanted = _expected_manifest(
        data_config.synthetic_image_size,
        data_config.synthetic_images_train,
        data_config.synthetic_images_val,
        data_config.synthetic_seed,
    )
    with _generation_lock(Path(root)):  # two processes (pytest workers, DDP ranks) at once
        if tree.exists():
            manifest = read_manifest(tree)
            if _tree_matches(tree, manifest, wanted, verify_hashes):
                return tree
        return write_synthetic(
            root,
            image_size=wanted["image_size"],
            train_images=wanted["counts"]["train"],
            val_images=wanted["counts"]["val"],
            seed=wanted["seed"],
            progress=progress,
        )


@contextlib.contextmanager
def _generation_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on ``<root>/.synthetic.lock`` while the tree is checked or made:
    the second process waits, then finds the finished tree (no lock on Windows)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; generation stays atomic per tree
        yield
        return
    with open(root / ".synthetic.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tree_matches(
    tree: Path, manifest: dict[str, Any], wanted: dict[str, Any], verify_hashes: bool
) -> bool:
    if any(manifest.get(key) != value for key, value in wanted.items()):
        return False
    for split in SPLITS:
        if _split_problem(tree, split, wanted["counts"][split], wanted["image_size"]) is not None:
            return False
        if verify_hashes:
            hashes = manifest.get("splits", {}).get(split, {}).get("sha256", {})
            for name in ("images.npy", "masks.npy"):
                if hashes.get(name) != _sha256(tree / split / name):
                    return False
    return True


# ----------------------------------------------------------------------------- reading
class SyntheticSource:
    """One split of the synthetic benchmark as a :class:`SegmentationSource`.

    ``root`` is the data root holding ``synthetic/`` or the ``synthetic/`` folder
    itself (what :func:`ensure_synthetic` returns). The arrays are memory-mapped on
    first use in each process, so the object can be sent to DataLoader workers.
    """

    dataset = "synthetic"

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        if split not in _SPLIT_IDS:
            raise ValueError(f"split={split!r}: must be one of {list(SPLITS)}")
        root = Path(root)
        tree = (
            root
            if (root / "manifest.json").is_file() and root.name == "synthetic"
            else root / "synthetic"
        )
        self.folder = tree / split
        self.name = f"synthetic/{split}"
        manifest = read_manifest(tree)
        try:
            count = int(manifest["counts"][split])
            size = int(manifest["image_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"{tree / 'manifest.json'}: no count or size for {split} ({err})"
            ) from err
        problem = _split_problem(tree, split, count, size)
        if problem is not None:
            raise DataError(problem)
        self._count = count
        areas_path = self.folder / "class_areas.json"
        try:
            self._areas = [
                {int(k): int(v) for k, v in entry.items()}
                for entry in json.loads(areas_path.read_text(encoding="utf-8"))
            ]
        except (AttributeError, TypeError, ValueError) as err:
            raise DataError(
                f"{areas_path}: entries must map class ids to pixel counts ({err})"
            ) from err
        self._arrays: tuple[int, np.ndarray, np.ndarray] | None = None  # (pid, images, masks)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        """Memory-map the arrays once per process (a forked worker maps its own)."""
        if self._arrays is None or self._arrays[0] != os.getpid():
            images = np.load(self.folder / "images.npy", mmap_mode="r")
            masks = np.load(self.folder / "masks.npy", mmap_mode="r")
            self._arrays = (os.getpid(), images, masks)
        return self._arrays[1], self._arrays[2]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None  # never pickle the maps
        return state

    def __len__(self) -> int:
        return self._count

    def _check_index(self, index: int) -> int:
        if not -self._count <= index < self._count:
            raise IndexError(f"{self.name}: index {index} out of range for {self._count} images")
        return index % self._count

    def image_name(self, index: int) -> str:
        return f"{self.name.replace('/', '_')}_{self._check_index(index):06d}"

    def load_image(self, index: int) -> np.ndarray:
        return np.array(self._open()[0][self._check_index(index)])  # (S,S,3) uint8 copy

    def load_mask(self, index: int) -> np.ndarray:
        return np.array(self._open()[1][self._check_index(index)])  # (S,S) uint8 copy

    def class_areas(self, index: int) -> dict[int, int]:
        return dict(self._areas[self._check_index(index)])


# ----------------------------------------------------------------------------- CLI
def usable_pairs_per_class(source: SyntheticSource, min_area: int) -> dict[int, int]:
    """Number of images in which each class covers at least ``min_area`` pixels."""
    counts = dict.fromkeys(range(1, 21), 0)
    for i in range(len(source)):
        for class_id, area in source.class_areas(i).items():
            if area >= min_area:
                counts[class_id] += 1
    return counts


def _run_make_synthetic(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        tree = write_synthetic(
            args.root,
            image_size=args.size,
            train_images=args.train,
            val_images=args.val,
            seed=args.seed,
            progress=True,
        )
    except ValueError as err:
        print(f"make-synthetic: {err}", file=sys.stderr)
        return 2
    min_area = scaled_min_area(args.size)
    print(
        f"wrote {tree} in {time.perf_counter() - start:.1f} s (seed {args.seed}, {args.size}x{args.size})"
    )
    print(f"usable (image, class) pairs per class, area >= {min_area} px (scaled 2*32*32 rule):")
    per_split = {
        split: usable_pairs_per_class(SyntheticSource(tree, split), min_area) for split in SPLITS
    }
    print(f"  {'id':>3} {'class':<18} {'colours':<16} {'train':>6} {'val':>6}")
    for class_id in range(1, 21):
        colours = "/".join(CLASS_COLOURS[class_id - 1])
        name = SYNTHETIC_CLASSES[class_id - 1]
        print(
            f"  {class_id:>3} {name:<18} {colours:<16} {per_split['train'][class_id]:>6} {per_split['val'][class_id]:>6}"
        )
    print(f"  images: train {args.train}, val {args.val}")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "make-synthetic",
        help="generate the synthetic few-shot benchmark",
        description="Generate <root>/synthetic (train and val arrays, class areas, manifest).",
    )
    parser.add_argument("--root", default="data", help="data root (default: data)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels (default: 96)")
    parser.add_argument("--train", type=int, default=2000, help="training images (default: 2000)")
    parser.add_argument("--val", type=int, default=500, help="validation images (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    parser.set_defaults(func=_run_make_synthetic)
