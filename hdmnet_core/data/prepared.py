"""The prepared-data format shared by PASCAL-5i, COCO-20i and FSS-1000, and its reader.

A prepared dataset is one folder ``<root>/<dataset>/``::

    prepared.json          completion marker: format, counts, options, the command that
                           made it, pairs per class per fold. Written LAST; readers refuse
                           a tree without it.
    prepared_files.txt     every file under masks/ index/ lists/ images/ that prepare
                           wrote (any other file there is the user's and is never deleted)
    index/<split>.json     one entry per image: name, image path, mask path, (H, W),
                           class areas {class_id: pixels}, [class id for binary masks],
                           [fingerprint of the source annotation the mask came from]
    lists/<split>.txt      BAM-style "image mask" lines, paths relative to the folder
    masks/...              converted class-index masks (PASCAL, COCO), 8-bit PNG
    images/...             only with ``--copy-images``: hard links (or copies) of the JPEGs
    raw/<archive>/         extracted official archives (images are read from here)
    downloads/             official archives (``--download``)

Paths in an index are relative to the dataset folder, or absolute when the source
tree was given elsewhere (``--voc /data/VOCdevkit``): without ``--copy-images`` the
prepared tree reads the original JPEGs in place, so moving the source breaks it.

``root`` means the same everywhere (prepare, ``--verify``, readers): the data root that
holds ``<dataset>/``, or that dataset folder itself when its name is the dataset's
(:func:`dataset_folder`).

Reading (:class:`PreparedSource`): images are decoded from the JPEGs with Pillow
(measured in ``benchmarks/data_loading.py``), masks from 8-bit PNGs. Nothing is held
open between calls, so a source is safe in forked or spawned DataLoader workers.

This module imports no dataset module; :mod:`.staging` (writing) builds on it, the
dataset modules on both, and :mod:`.prepare` (the CLI) on all of them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from PIL import Image, PngImagePlugin

from hdmnet_core.atomic import atomic_write, atomic_write_text
from hdmnet_core.data.source import DataError, safe_join

FORMAT_VERSION = 1
"""Bump when the prepared layout changes: older trees are then refused with a message.
(Optional index columns added later, e.g. ``sources``, keep version 1 readable.)"""
MARKER = "prepared.json"
MIN_PAIR_AREA = 2 * 32 * 32
"""Official usable-pair rule (BAM ``make_dataset``): a class must cover >= 2048 pixels."""
DATASETS: tuple[str, ...] = ("pascal", "coco", "fss1000")
SOURCE_DIGEST_KEY = "hdmnet-source-digest"
SOURCE_TREE_OPTIONS: tuple[str, ...] = ("voc", "sbd", "coco", "fss")
"""Marker options naming a source tree that an index may point into."""
"""PNG text chunk of a converted mask: the digest of the annotation it was made from."""

MaskKind = Literal["class_png", "binary_png"]
"""``class_png``: pixel values are dataset class ids (0 bg, 255 ignore).
``binary_png``: FSS-1000 style 0/255 masks; pixels >= 128 are the entry's class."""


# ----------------------------------------------------------------------------- image IO
def check_jpeg(path: Path) -> tuple[int, int]:
    """Decode ``path`` at 1/8 scale (fast, still reads every block) -> original ``(H, W)``.

    Catches missing, empty, truncated and corrupt files with a :class:`DataError`.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except FileNotFoundError as error:
        raise DataError(f"{path}: image file is missing") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: corrupt or truncated image ({error})") from error
    return height, width


def read_rgb(path: Path | IO[bytes], where: str | Path | None = None) -> np.ndarray:
    """Full decode of a file (or open binary stream) -> ``(H, W, 3)`` uint8 RGB.

    ``where`` names the image in errors (default: ``path``).
    """
    name = where if where is not None else path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))  # writable copy
    except FileNotFoundError as error:
        raise DataError(f"{name}: image file is missing") from error
    except (OSError, SyntaxError, ValueError, Warning) as error:
        raise DataError(f"{name}: corrupt or truncated image ({error})") from error


def read_png_values(path: Path | IO[bytes], where: str | Path | None = None) -> np.ndarray:
    """Raw 8-bit values of a PNG (file or open binary stream) -> ``(H, W)`` uint8.

    Palette PNGs (VOC ``SegmentationClass``) give their palette *indices*, which are the
    class ids; ``L`` PNGs give their grey values; RGB(A) PNGs (FSS-1000 masks saved as
    colour) are turned to grey. :class:`DataError` on a missing or undecodable file.
    """
    name = where if where is not None else path
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "L"):
                return np.array(image)  # writable copy
            if image.mode in ("1", "RGB", "RGBA", "LA", "I", "I;16"):
                return np.array(image.convert("L"))
            raise DataError(f"{name}: unexpected PNG mode {image.mode!r} for a mask")
    except FileNotFoundError as error:
        raise DataError(f"{name}: mask file is missing") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{name}: corrupt or truncated mask ({error})") from error


def check_class_values(mask: np.ndarray, num_classes: int, path: Path | str) -> None:
    """:class:`DataError` unless every value is 0..num_classes or 255."""
    allowed = np.zeros(256, dtype=bool)
    allowed[: num_classes + 1] = True
    allowed[255] = True
    bad = ~allowed[mask]
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))
        raise DataError(
            f"{path}: mask has values {values[:10]} outside 0..{num_classes} and 255 "
            f"(a colour PNG instead of class indices?)"
        )


def write_png(path: Path, mask: np.ndarray, source_digest: str | None = None) -> None:
    """Atomically write a ``(H, W)`` uint8 array as an 8-bit grey PNG; ``source_digest``
    (the annotation it was converted from) goes into a text chunk, so that a staged mask
    is reused only while its source is unchanged (:func:`staged_mask`)."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
    info = PngImagePlugin.PngInfo()
    if source_digest is not None:
        info.add_text(SOURCE_DIGEST_KEY, source_digest)
    atomic_write(
        path, lambda handle: image.save(handle, format="PNG", compress_level=1, pnginfo=info)
    )


def png_source_digest(path: Path) -> str | None:
    """The source digest a converted mask was written with (``None``: none, or unreadable)."""
    try:
        with Image.open(path) as image:
            value = image.info.get(SOURCE_DIGEST_KEY)
    except (OSError, SyntaxError, ValueError):
        return None
    return value if isinstance(value, str) else None


def staged_mask(path: Path, source_digest: str) -> np.ndarray | None:
    """The mask at ``path`` if it was converted from a source with this digest, else ``None``
    (missing, unreadable, or made from another version of the annotation: redo it)."""
    if not path.is_file() or png_source_digest(path) != source_digest:
        return None
    try:
        return read_png_values(path)
    except DataError:
        return None


# ----------------------------------------------------------------------------- sources
def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes; :class:`DataError` naming the file if unreadable."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error


def file_fingerprint(path: Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256"}`` of a source file, recorded at prepare time."""
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": file_sha256(path),
    }


def fingerprint_problem(fingerprint: dict[str, Any], what: str) -> str | None:
    """A problem line if the file of ``fingerprint`` changed since it was recorded.

    Fast path: same size and mtime -> unchanged. Otherwise the content hash decides
    (a copy or ``touch`` that kept the bytes is fine). A missing source is no problem
    for the prepared tree (its masks are converted already), so it returns ``None``.
    """
    path = Path(fingerprint["path"])
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_size == fingerprint.get("size") and stat.st_mtime_ns == fingerprint.get("mtime_ns"):
        return None
    if file_sha256(path) == fingerprint.get("sha256"):
        return None
    return f"{path}: {what} changed since prepare (its content differs from the recorded sha256)"


# ----------------------------------------------------------------------------- index
@dataclass
class IndexEntry:
    """One image of a prepared split."""

    name: str
    image: str
    """Path of the JPEG, relative to the dataset folder (or absolute)."""
    mask: str
    height: int
    width: int
    areas: dict[int, int]
    class_id: int = 0
    """Binary masks only: the class of the foreground (0 for class-index masks)."""
    source: dict[str, Any] | None = None
    """The annotation the mask was converted from: a :func:`file_fingerprint` (PASCAL) or
    ``{"sha256": digest of the image's annotation objects}`` (COCO); ``None`` when the
    mask is the original file (FSS-1000)."""


@dataclass
class SplitIndex:
    dataset: str
    split: str
    mask_kind: MaskKind
    num_classes: int
    entries: list[IndexEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        columns: dict[str, list[Any]] = {
            "names": [e.name for e in self.entries],
            "images": [e.image for e in self.entries],
            "masks": [e.mask for e in self.entries],
            "sizes": [[e.height, e.width] for e in self.entries],
            "areas": [{str(k): v for k, v in sorted(e.areas.items())} for e in self.entries],
        }
        if self.mask_kind == "binary_png":
            columns["class_ids"] = [e.class_id for e in self.entries]
        if any(e.source is not None for e in self.entries):
            columns["sources"] = [e.source for e in self.entries]
        return {
            "format": FORMAT_VERSION,
            "dataset": self.dataset,
            "split": self.split,
            "mask_kind": self.mask_kind,
            "num_classes": self.num_classes,
            **columns,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> SplitIndex:
        try:
            count = len(data["names"])
            class_ids = data.get("class_ids", [0] * count)
            sources = data.get("sources", [None] * count)
            entries = [
                IndexEntry(
                    name=data["names"][i],
                    image=data["images"][i],
                    mask=data["masks"][i],
                    height=int(data["sizes"][i][0]),
                    width=int(data["sizes"][i][1]),
                    areas={int(k): int(v) for k, v in data["areas"][i].items()},
                    class_id=int(class_ids[i]),
                    source=sources[i],
                )
                for i in range(count)
            ]
            return cls(
                data["dataset"], data["split"], data["mask_kind"], data["num_classes"], entries
            )
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise DataError(f"{path}: malformed index ({error!r})") from error


def list_line(entry: IndexEntry, folder: Path) -> str:
    """One official "image mask" line, both paths relative to the dataset ``folder``."""
    image = os.path.relpath(folder / entry.image, folder)
    mask = os.path.relpath(folder / entry.mask, folder)
    return f"{image} {mask}\n"


def check_list_paths(entries: list[IndexEntry], folder: Path, what: str) -> None:
    """:class:`DataError` listing the entries whose relative path has white space: the
    official "image mask" list format splits lines at spaces and cannot express them."""
    bad = [
        line.rstrip("\n")
        for line in (list_line(e, folder) for e in entries)
        if len(line.split()) != 2
    ]
    if bad:
        shown = "\n  ".join(bad[:10])
        raise DataError(
            f"{what}: {len(bad)} path(s) contain white space, which the official 'image mask' "
            f"list format cannot express (paths are relative to {folder}):\n  {shown}\n"
            "move the source tree to a path without spaces, or use --copy-images"
        )


def write_split_index(staging: Path, folder: Path, index: SplitIndex) -> Path:
    """Write ``staging/index/<split>.json`` (compact) and ``staging/lists/<split>.txt``
    (paths relative to the dataset ``folder``, where the files are moved on commit)."""
    check_list_paths(index.entries, folder, f"{index.dataset} {index.split} list")
    path = staging / "index" / f"{index.split}.json"
    atomic_write_text(path, json.dumps(index.to_json(), separators=(",", ":")) + "\n")
    lines = "".join(list_line(e, folder) for e in index.entries)
    atomic_write_text(staging / "lists" / f"{index.split}.txt", lines)
    return path


def relative_path(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it, else absolute (index paths)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


# ----------------------------------------------------------------------------- folders
def dataset_folder(root: str | os.PathLike[str], dataset: str) -> Path:
    """The one meaning of ``root`` (prepare, verify, readers): ``<root>/<dataset>``, or
    ``root`` itself when it is named ``<dataset>`` (``--root data/pascal``).

    A folder named ``<dataset>`` that also holds a ``<dataset>/`` sub-folder is ambiguous
    (an older version wrote such nested trees): :class:`DataError` saying what to do.
    """
    root = Path(root)
    if root.name != dataset:
        return root / dataset
    if (root / dataset).exists():
        raise DataError(
            f"{root}: ambiguous --root: it is named {dataset!r} and also holds "
            f"{root / dataset} (a nested tree an older version wrote); pass --root {root.parent} "
            f"to use {root}, or move {root / dataset} out of it"
        )
    return root


def default_prepare_command(dataset: str, root: Path) -> str:
    """What to run when a tree was never prepared (its own command is unknown)."""
    extra = {
        "pascal": " --download (or --voc PATH --sbd PATH)",
        "coco": " --download (or --coco PATH)",
        "fss1000": " --fss PATH",
    }[dataset]
    return f"python -m hdmnet_core prepare {dataset} --root {shlex.quote(str(root))}{extra}"


def read_marker(folder: Path, dataset: str) -> dict[str, Any]:
    """The completion marker of a prepared tree, or a :class:`DataError` saying what to run."""
    path = folder / MARKER
    hint = default_prepare_command(dataset, folder.parent)
    if not path.is_file():
        raise DataError(
            f"{folder}: no prepared {dataset} data here ({MARKER} missing); run: {hint}"
        )
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable marker ({error}); run: {hint}") from error
    if not isinstance(marker, dict):
        raise DataError(f"{path}: unreadable marker (not a JSON object); run: {hint}")
    if marker.get("dataset") != dataset or marker.get("format") != FORMAT_VERSION:
        rerun = marker.get("command") or hint
        raise DataError(
            f"{path}: prepared for dataset {marker.get('dataset')!r} format "
            f"{marker.get('format')!r}, expected {dataset!r} format {FORMAT_VERSION}; run: {rerun}"
        )
    return marker


def read_split_index(folder: Path, dataset: str, split: str) -> SplitIndex:
    marker = read_marker(folder, dataset)
    if split not in marker.get("counts", {}):
        raise DataError(f"{folder}: split {split!r} not prepared; have {sorted(marker['counts'])}")
    path = folder / "index" / f"{split}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: missing or unreadable index ({error})") from error
    index = SplitIndex.from_json(data, path)
    if len(index.entries) != marker["counts"][split]:
        raise DataError(
            f"{path}: {len(index.entries)} entries but {MARKER} says {marker['counts'][split]}"
        )
    return index


def recorded_source_roots(marker: dict[str, Any]) -> list[Path]:
    """The source trees (``--voc``, ``--sbd``, ``--coco``, ``--fss``) prepare read from,
    resolved: the only places outside the dataset folder an index may point to."""
    options = marker.get("options", {})
    given = [options.get(key) for key in SOURCE_TREE_OPTIONS] if isinstance(options, dict) else []
    roots = [Path(value).resolve() for value in given if isinstance(value, str) and value]
    return [root for root in roots if root != Path(root.anchor)]  # never a whole disk


# ----------------------------------------------------------------------------- reader
def decode_mask(
    file: Path | IO[bytes], where: str | Path, entry: IndexEntry, mask_kind: str, num_classes: int
) -> np.ndarray:
    """A stored mask -> ``(H, W)`` class ids, checked against the entry's size and the
    class range (binary masks: pixels >= 128 become ``entry.class_id``, uint16)."""
    values = read_png_values(file, where)  # (H,W) uint8
    if values.shape != (entry.height, entry.width):
        raise DataError(
            f"{where}: mask is {values.shape[0]}x{values.shape[1]} but its image is "
            f"{entry.height}x{entry.width}"
        )
    if mask_kind == "binary_png":
        return np.where(values >= 128, entry.class_id, 0).astype(np.uint16)
    check_class_values(values, num_classes, where)
    return values


def decode_image(file: Path | IO[bytes], where: str | Path, entry: IndexEntry) -> np.ndarray:
    """A stored JPEG -> ``(H, W, 3)`` uint8, checked against the size in the index."""
    image = read_rgb(file, where)  # (H,W,3) uint8
    if image.shape[:2] != (entry.height, entry.width):
        raise DataError(
            f"{where}: image is {image.shape[0]}x{image.shape[1]}, the prepared index says "
            f"{entry.height}x{entry.width} (file changed after prepare? run --verify)"
        )
    return image


class PreparedSource:
    """One split of a prepared PASCAL / COCO / FSS-1000 tree (a ``SegmentationSource``).

    ``root`` is the data root (holding ``<dataset>/``) or the dataset folder itself
    (:func:`dataset_folder`). Images and masks are checked against the size recorded at
    prepare time, and mask values against the dataset's class range: a bad file raises
    :class:`DataError`.
    """

    def __init__(self, root: str | os.PathLike[str], dataset: str, split: str) -> None:
        self.folder = dataset_folder(root, dataset)
        self.dataset = dataset
        self.split = split
        self.name = f"{dataset}/{split}"
        self._index = read_split_index(self.folder, dataset, split)
        self._entries = self._index.entries
        self._source_roots = recorded_source_roots(read_marker(self.folder, dataset))

    @property
    def index(self) -> SplitIndex:
        """The split's index (entries, mask kind, number of classes)."""
        return self._index

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, index: int) -> IndexEntry:
        if not -len(self._entries) <= index < len(self._entries):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        return self._entries[index]

    def _path(self, relative: str) -> Path:
        """An index path: inside the dataset folder, or (absolute) inside a source tree
        that prepare recorded in its marker; anything else is a :class:`DataError`."""
        where = f"{self.folder / 'index' / self.split}.json"
        if not Path(relative).is_absolute():
            return safe_join(self.folder, relative, where)
        path = Path(relative)
        if not any(path.resolve().is_relative_to(root) for root in self._source_roots):
            raise DataError(
                f"{where}: absolute path {relative!r} is outside {self.folder} and outside the "
                f"source trees recorded in {self.folder / MARKER}; prepare the data again"
            )
        return path

    def image_name(self, index: int) -> str:
        return self._entry(index).name

    def image_path(self, index: int) -> Path:
        return self._path(self._entry(index).image)

    def mask_path(self, index: int) -> Path:
        return self._path(self._entry(index).mask)

    def load_image(self, index: int) -> np.ndarray:
        entry = self._entry(index)
        path = self._path(entry.image)
        return decode_image(path, path, entry)

    def load_mask(self, index: int) -> np.ndarray:
        """``(H, W)`` class ids (uint8; uint16 for FSS-1000, whose ids reach 1001)."""
        entry = self._entry(index)
        path = self._path(entry.mask)
        return decode_mask(path, path, entry, self._index.mask_kind, self._index.num_classes)

    def class_areas(self, index: int) -> dict[int, int]:
        return dict(self._entry(index).areas)


def image_bytes(path: Path) -> io.BytesIO:
    """The bytes of ``path`` as a stream (:class:`DataError` naming a missing file)."""
    try:
        return io.BytesIO(path.read_bytes())
    except FileNotFoundError as error:
        raise DataError(f"{path}: file is missing") from error
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error


# ----------------------------------------------------------------------------- verify
def verify_prepared(root: str | os.PathLike[str], dataset: str) -> list[str]:
    """Every problem of a prepared tree, one line each (empty list = all good).

    Reads every index, decodes every image and mask in full, and checks existence,
    size, decodability, mask values, mask size == image size, that the stored class
    areas match the mask, and that no source annotation changed since prepare (size and
    mtime, then sha256). Never writes anything. ``prepare ... --verify --deep`` also
    converts every source annotation again and compares it with the prepared mask.
    """
    try:
        folder = dataset_folder(root, dataset)
        marker = read_marker(folder, dataset)
    except DataError as error:
        return [str(error)]
    problems: list[str] = []
    for fingerprint in marker.get("sources", {}).values():
        problem = fingerprint_problem(fingerprint, "annotation file")
        if problem is not None:
            problems.append(f"{problem}; `--verify --deep` names the masks that differ")
    for split in marker.get("counts", {}):
        try:
            source = PreparedSource(folder, dataset, split)
        except DataError as error:
            problems.append(str(error))
            continue
        for i in range(len(source)):
            problems.extend(_entry_problems(source, i))
    return problems


def _entry_problems(source: PreparedSource, i: int) -> list[str]:
    problems = []
    for path in (source.image_path(i), source.mask_path(i)):
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size == 0:
            problems.append(f"{path}: empty file (0 bytes)")
    if problems:
        return problems
    try:
        source.load_image(i)
    except DataError as error:
        problems.append(str(error))
    try:
        mask = source.load_mask(i)
    except DataError as error:
        return [*problems, str(error)]
    values, counts = np.unique(mask, return_counts=True)
    areas = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v not in (0, 255)}
    if areas != source.class_areas(i):
        problems.append(
            f"{source.mask_path(i)}: class areas {areas} differ from the index "
            f"{source.class_areas(i)} (mask changed after prepare)"
        )
    recorded = source.index.entries[i].source
    if recorded is not None and "path" in recorded:
        problem = fingerprint_problem(recorded, "source annotation")
        if problem is not None:
            problems.append(f"{problem}: {source.mask_path(i)} may be stale")
    return problems
