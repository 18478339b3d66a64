"""FSS-1000: 1,000 classes x 10 images, split by HSNet's class lists, and the reader.

On disk (the HSNet download): ``FSS-1000/<class>/<k>.jpg`` with a binary mask
``<k>.png`` beside it (0 / 255, sometimes saved as RGB). HSNet reads a mask as grey
and calls pixels >= 128 foreground; so does :class:`Fss1000Source`.

Splits: HSNet's ``data/splits/fss/{trn,val,test}.txt`` (520 / 240 / 240 class names),
kept verbatim in ``fss1000_classes.json`` (package data). Here they are the sources
``fss1000/train``, ``fss1000/val`` and ``fss1000/test``.

Class ids: the classes of each split sorted by name (as HSNet does), numbered
consecutively train, val, test from 1, **skipping 255** (the ignore label everywhere
else): train 1..254 and 256..521, val 522..761, test 762..1001. HSNet's 0-based id
is ours minus 1 below 255 and minus 2 above. Because ids go past 255, ``load_mask``
returns **uint16** for this dataset (0 = background; no pixel is ever 255). Every image has exactly one class; ``class_areas`` gives its
foreground pixel count (an empty mask gives ``{}``).

The masks are not converted: the index points at the original files, and the
prepare step only checks every file and records sizes and areas.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from hdmnet_core import __version__
from hdmnet_core.data.download import extract_archive
from hdmnet_core.data.prepared import (
    FORMAT_VERSION,
    IndexEntry,
    PreparedSource,
    SplitIndex,
    check_jpeg,
    dataset_folder,
    read_png_values,
    relative_path,
    write_split_index,
)
from hdmnet_core.data.source import DataError
from hdmnet_core.data.staging import (
    ImageCopies,
    begin_staging,
    command_line,
    commit_staging,
    images_record,
    map_items,
    path_flag,
    place_image,
    raise_all,
)

SPLITS: dict[str, str] = {"train": "trn", "val": "val", "test": "test"}
"""Our split name -> HSNet's split file name."""
NUM_CLASSES = 1000
IGNORE_LABEL = 255


def hsnet_class_lists() -> dict[str, list[str]]:
    """HSNet's class names per split (our split names), in the split files' order."""
    text = resources.files("hdmnet_core.data").joinpath("fss1000_classes.json").read_text("utf-8")
    content = json.loads(text)
    return {split: list(content[hsnet]) for split, hsnet in SPLITS.items()}


def class_ids(lists: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Class name -> id (each split sorted by name, train, val, test in turn; 255 skipped)."""
    lists = hsnet_class_lists() if lists is None else lists
    ids: dict[str, int] = {}
    next_id = 1
    for split in SPLITS:
        if not lists.get(split):
            raise DataError(f"FSS-1000 class list for split {split!r} is empty")
        for name in sorted(lists[split]):
            if name in ids:
                raise DataError(f"FSS-1000 class {name!r} is listed twice")
            if next_id == IGNORE_LABEL:
                next_id += 1
            ids[name] = next_id
            next_id += 1
    return ids


def split_class_ids(split: str) -> list[int]:
    """The class ids of one split (the episode classes of ``fss1000/<split>``), ascending."""
    lists = hsnet_class_lists()
    ids = class_ids(lists)
    return sorted(ids[name] for name in lists[split])


def class_names() -> dict[int, str]:
    """Class id -> name."""
    return {class_id: name for name, class_id in class_ids().items()}


class Fss1000Source(PreparedSource):
    """``fss1000/train``, ``fss1000/val`` or ``fss1000/test`` of a prepared tree."""

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: FSS-1000 has {list(SPLITS)}")
        super().__init__(root, "fss1000", split)


# ----------------------------------------------------------------------------- prepare
def find_fss_root(path: Path) -> Path:
    """The folder whose sub-folders are the classes (``FSS-1000/`` or a parent of it)."""
    for candidate in (path, path / "FSS-1000", path / "fewshot_data" / "fewshot_data"):
        if candidate.is_dir() and any(
            (sub / "1.jpg").is_file() for sub in candidate.iterdir() if sub.is_dir()
        ):
            return candidate
    raise DataError(f"{path}: no FSS-1000 class folders (expected FSS-1000/<class>/1.jpg)")


def _check_pair(item: tuple[str, str, str, int]) -> tuple[int, int, int]:
    """Check one image + mask -> (H, W, foreground pixels)."""
    _, image, mask_path, _ = item
    height, width = check_jpeg(Path(image))
    mask = read_png_values(Path(mask_path))
    if mask.shape != (height, width):
        raise DataError(
            f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but image {image} is "
            f"{height}x{width}"
        )
    return height, width, int((mask >= 128).sum())


def prepare_fss1000(
    root: str | os.PathLike[str],
    fss: str | None = None,
    lists: dict[str, list[str]] | None = None,
    progress: bool = True,
    copy_images: bool = False,
) -> dict[str, Any]:
    """Index the FSS-1000 tree of ``root`` (:func:`~.prepared.dataset_folder`) from the
    FSS-1000 folder or zip ``fss`` (default: ``<root>/fss1000/downloads/FSS-1000.zip`` or
    ``raw/FSS-1000``). ``lists`` replaces HSNet's class lists (tests). ``copy_images``
    hard-links (or copies) the images *and* masks into ``images/`` and ``masks/``.
    Returns the written marker."""
    start = time.perf_counter()
    folder = dataset_folder(root, "fss1000")
    folder.mkdir(parents=True, exist_ok=True)
    lists = hsnet_class_lists() if lists is None else lists
    ids = class_ids(lists)
    base = find_fss_root(_resolve_input(fss, folder))

    problems: list[str] = []
    planned: dict[str, list[tuple[str, str, str, int]]] = {}
    for split in SPLITS:
        planned[split] = []
        for class_name in sorted(lists[split]):
            class_dir = base / class_name
            images = sorted(class_dir.glob("*.jpg")) if class_dir.is_dir() else []
            if not images:
                problems.append(f"{class_dir}: class folder missing or without .jpg images")
            for image in images:
                mask = image.with_suffix(".png")
                if not mask.is_file():
                    problems.append(f"{mask}: mask of {image.name} is missing")
                name = f"{class_name}/{image.stem}"
                planned[split].append((name, str(image), str(mask), ids[class_name]))
    raise_all(problems, "FSS-1000 class lists point to missing files")

    options = {"fss": str(base), "copy_images": copy_images}
    staging = begin_staging(folder, options)
    copies = ImageCopies() if copy_images else None
    indexes = {}
    for split, items in planned.items():
        index = SplitIndex("fss1000", split, "binary_png", NUM_CLASSES)
        results = map_items(_check_pair, items, 1, f"fss1000 {split}", progress)
        for (name, image_path, mask_path, class_id), (height, width, area) in zip(
            items, results, strict=True
        ):
            areas = {class_id: area} if area > 0 else {}
            image_file = relative_path(Path(image_path), folder)
            mask_file = relative_path(Path(mask_path), folder)
            if copies is not None:
                image_file, mask_file = f"images/{name}.jpg", f"masks/{name}.png"
                copies.add(place_image(Path(image_path), staging / image_file))
                place_image(Path(mask_path), staging / mask_file)
            index.entries.append(
                IndexEntry(name, image_file, mask_file, height, width, areas, class_id)
            )
        write_split_index(staging, folder, index)
        indexes[split] = index
    flags = [*path_flag("--fss", fss), *(["--copy-images"] if copy_images else [])]
    marker = {
        "format": FORMAT_VERSION,
        "dataset": "fss1000",
        "package_version": __version__,
        "counts": {split: len(index.entries) for split, index in indexes.items()},
        "options": options,
        "command": command_line("fss1000", folder.parent, flags),
        "images": images_record(copies, [base]),
        "stats": {
            "classes per split": {split: len(lists[split]) for split in SPLITS},
            "images with an empty mask": sum(
                1 for index in indexes.values() for e in index.entries if not e.areas
            ),
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    commit_staging(folder, marker)
    return marker


def _resolve_input(given: str | None, folder: Path) -> Path:
    if given is not None:
        path = Path(given)
        if path.is_dir():
            return path.resolve()
        if path.is_file():
            return extract_archive(path, folder / "raw" / "FSS-1000")
        raise DataError(f"{path}: no such file or folder")
    archive = folder / "downloads" / "FSS-1000.zip"
    if archive.is_file():
        return extract_archive(archive, folder / "raw" / "FSS-1000")
    if (folder / "raw" / "FSS-1000").is_dir():
        return folder / "raw" / "FSS-1000"
    raise DataError(
        f"FSS-1000 not found: pass --fss PATH (the zip from the HSNet README's Google Drive "
        f"link, or its extracted folder), or put FSS-1000.zip in {folder / 'downloads'}"
    )
