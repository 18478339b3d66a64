"""The prepared-data format shared by PASCAL-5i, COCO-20i and FSS-1000, and ``prepare``.

A prepared dataset is one folder ``<root>/<dataset>/``::

    prepared.json          completion marker: format, counts, options, pairs per class
                           per fold. Written LAST; readers refuse a tree without it.
    index/<split>.json     one entry per image: name, image path, mask path, (H, W),
                           class areas {class_id: pixels}, [class id for binary masks]
    lists/<split>.txt      BAM-style "image mask" lines (for people and other code)
    masks/...              converted class-index masks (PASCAL, COCO), 8-bit PNG
    raw/<archive>/         extracted official archives (images are read from here)
    downloads/             official archives (``--download``)

Paths in an index are relative to the dataset folder, or absolute when the source
tree was given elsewhere (``--voc /data/VOCdevkit``).

How a run stays safe: every output goes to ``<dataset>/.staging/`` first (files
written atomically); only when the whole conversion succeeded is the old marker
removed, the staged ``masks``/``index``/``lists`` renamed into place, and the new
marker written. A run stopped half-way leaves the previous tree (or no marker);
nothing half-written is ever trusted. Re-running with the same options reuses the
staged masks already written.

Reading (:class:`PreparedSource`): images are decoded from the original JPEGs with
Pillow (measured in ``benchmarks/data_loading.py``: fast enough to feed a GPU with a
few workers), masks from 8-bit PNGs. Nothing is held open between calls, so a
source is safe to use in forked or spawned DataLoader workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from hdmnet_core.atomic import atomic_write, atomic_write_json, atomic_write_text
from hdmnet_core.data import splits
from hdmnet_core.data.source import DataError

FORMAT_VERSION = 1
"""Bump when the prepared layout changes: older trees are then refused with a message."""
MARKER = "prepared.json"
STAGING = ".staging"
MIN_PAIR_AREA = 2 * 32 * 32
"""Official usable-pair rule (BAM ``make_dataset``): a class must cover >= 2048 pixels."""
DATASETS: tuple[str, ...] = ("pascal", "coco", "fss1000")

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


def read_rgb(path: Path) -> np.ndarray:
    """Full decode -> ``(H, W, 3)`` uint8 RGB; :class:`DataError` on a bad file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))  # writable copy
    except FileNotFoundError as error:
        raise DataError(f"{path}: image file is missing") from error
    except (OSError, SyntaxError, ValueError, Warning) as error:
        raise DataError(f"{path}: corrupt or truncated image ({error})") from error


def read_png_values(path: Path) -> np.ndarray:
    """Raw 8-bit values of a PNG -> ``(H, W)`` uint8.

    Palette PNGs (VOC ``SegmentationClass``) give their palette *indices*, which are the
    class ids; ``L`` PNGs give their grey values; RGB(A) PNGs (FSS-1000 masks saved as
    colour) are turned to grey. :class:`DataError` on a missing or undecodable file.
    """
    try:
        with Image.open(path) as image:
            if image.mode in ("P", "L"):
                return np.array(image)  # writable copy
            if image.mode in ("1", "RGB", "RGBA", "LA", "I", "I;16"):
                return np.array(image.convert("L"))
            raise DataError(f"{path}: unexpected PNG mode {image.mode!r} for a mask")
    except FileNotFoundError as error:
        raise DataError(f"{path}: mask file is missing") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: corrupt or truncated mask ({error})") from error


def check_class_values(mask: np.ndarray, num_classes: int, path: Path) -> None:
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


def write_png(path: Path, mask: np.ndarray) -> None:
    """Atomically write a ``(H, W)`` uint8 array as an 8-bit grey PNG."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L")
    atomic_write(path, lambda handle: image.save(handle, format="PNG", compress_level=1))


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
            entries = [
                IndexEntry(
                    name=data["names"][i],
                    image=data["images"][i],
                    mask=data["masks"][i],
                    height=int(data["sizes"][i][0]),
                    width=int(data["sizes"][i][1]),
                    areas={int(k): int(v) for k, v in data["areas"][i].items()},
                    class_id=int(class_ids[i]),
                )
                for i in range(count)
            ]
            return cls(
                data["dataset"], data["split"], data["mask_kind"], data["num_classes"], entries
            )
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise DataError(f"{path}: malformed index ({error!r})") from error


def write_split_index(folder: Path, index: SplitIndex) -> Path:
    """Write ``folder/index/<split>.json`` (compact) and ``folder/lists/<split>.txt``."""
    path = folder / "index" / f"{index.split}.json"
    atomic_write_text(path, json.dumps(index.to_json(), separators=(",", ":")) + "\n")
    lines = "".join(f"{e.image} {e.mask}\n" for e in index.entries)
    atomic_write_text(folder / "lists" / f"{index.split}.txt", lines)
    return path


def relative_path(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it, else absolute (index paths)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def dataset_folder(root: str | os.PathLike[str], dataset: str) -> Path:
    """``<root>/<dataset>``, or ``root`` itself when it already is that folder."""
    root = Path(root)
    if (root / MARKER).is_file() and root.name == dataset:
        return root
    return root / dataset


def prepare_command(dataset: str, root: Path) -> str:
    extra = {"pascal": " --download", "coco": " --download", "fss1000": " --fss PATH"}[dataset]
    return f"python -m hdmnet_core prepare {dataset} --root {root}{extra}"


def read_marker(folder: Path, dataset: str) -> dict[str, Any]:
    """The completion marker of a prepared tree, or a :class:`DataError` saying what to run."""
    path = folder / MARKER
    hint = prepare_command(dataset, folder.parent)
    if not path.is_file():
        raise DataError(
            f"{folder}: no prepared {dataset} data here ({MARKER} missing); run: {hint}"
        )
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable marker ({error}); run: {hint}") from error
    if marker.get("dataset") != dataset or marker.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{path}: prepared for dataset {marker.get('dataset')!r} format "
            f"{marker.get('format')!r}, expected {dataset!r} format {FORMAT_VERSION}; run: {hint}"
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


# ----------------------------------------------------------------------------- reader
class PreparedSource:
    """One split of a prepared PASCAL / COCO / FSS-1000 tree (a ``SegmentationSource``).

    ``root`` is the data root (holding ``<dataset>/``) or the dataset folder itself.
    Images and masks are checked against the size recorded at prepare time, and mask
    values against the dataset's class range: a bad file raises :class:`DataError`.
    """

    def __init__(self, root: str | os.PathLike[str], dataset: str, split: str) -> None:
        self.folder = dataset_folder(root, dataset)
        self.dataset = dataset
        self.split = split
        self.name = f"{dataset}/{split}"
        self._index = read_split_index(self.folder, dataset, split)
        self._entries = self._index.entries

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, index: int) -> IndexEntry:
        if not -len(self._entries) <= index < len(self._entries):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        return self._entries[index]

    def _path(self, relative: str) -> Path:
        return self.folder / relative  # an absolute ``relative`` stays absolute

    def image_name(self, index: int) -> str:
        return self._entry(index).name

    def image_path(self, index: int) -> Path:
        return self._path(self._entry(index).image)

    def mask_path(self, index: int) -> Path:
        return self._path(self._entry(index).mask)

    def load_image(self, index: int) -> np.ndarray:
        entry = self._entry(index)
        path = self._path(entry.image)
        image = read_rgb(path)  # (H,W,3) uint8
        if image.shape[:2] != (entry.height, entry.width):
            raise DataError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]}, the prepared index says "
                f"{entry.height}x{entry.width} (file changed after prepare? run --verify)"
            )
        return image

    def load_mask(self, index: int) -> np.ndarray:
        """``(H, W)`` class ids (uint8; uint16 for FSS-1000, whose ids reach 1001)."""
        entry = self._entry(index)
        path = self._path(entry.mask)
        values = read_png_values(path)  # (H,W) uint8
        if values.shape != (entry.height, entry.width):
            raise DataError(
                f"{path}: mask is {values.shape[0]}x{values.shape[1]} but its image is "
                f"{entry.height}x{entry.width}"
            )
        if self._index.mask_kind == "binary_png":
            return np.where(values >= 128, entry.class_id, 0).astype(np.uint16)
        check_class_values(values, self._index.num_classes, path)
        return values

    def class_areas(self, index: int) -> dict[int, int]:
        return dict(self._entry(index).areas)


# ----------------------------------------------------------------------------- verify
def verify_prepared(root: str | os.PathLike[str], dataset: str) -> list[str]:
    """Every problem of a prepared tree, one line each (empty list = all good).

    Reads every index, decodes every image and mask in full, and checks existence,
    size, decodability, mask values, mask size == image size, and that the stored
    class areas match the mask. Never writes anything.
    """
    folder = dataset_folder(root, dataset)
    try:
        marker = read_marker(folder, dataset)
    except DataError as error:
        return [str(error)]
    problems: list[str] = []
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
    return problems


# ----------------------------------------------------------------------------- staging
def begin_staging(folder: Path, options: dict[str, Any]) -> tuple[Path, bool]:
    """Create ``folder/.staging`` for a run with ``options``; ``reuse`` is True when a
    previous, interrupted run with the same options left complete files there."""
    staging = folder / STAGING
    state_path = staging / "options.json"
    wanted = json.loads(json.dumps(options, sort_keys=True))
    if state_path.is_file():
        try:
            if json.loads(state_path.read_text(encoding="utf-8")) == wanted:
                return staging, True
        except (OSError, ValueError):
            pass
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    atomic_write_json(state_path, wanted)
    return staging, False


def commit_staging(folder: Path, marker: dict[str, Any]) -> None:
    """Move the staged ``masks``/``index``/``lists`` into place, then write the marker."""
    staging = folder / STAGING
    (folder / MARKER).unlink(missing_ok=True)  # from here until the end: not prepared
    for part in ("masks", "index", "lists"):
        staged = staging / part
        target = folder / part
        if target.exists():
            old = folder / f".{part}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            shutil.rmtree(old)
        if staged.exists():
            os.replace(staged, target)
    shutil.rmtree(staging)
    atomic_write_json(folder / MARKER, marker)


def map_items(
    function: Callable[[Any], Any], items: Sequence[Any], workers: int, desc: str, progress: bool
) -> Iterator[Any]:
    """``function`` over ``items`` in order, with a progress bar; ``workers > 1`` uses
    a process pool (``function`` must then be a module-level function)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
    try:
        if workers <= 1:
            for item in items:
                yield function(item)
                bar.update(1)
        else:
            import multiprocessing

            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for result in pool.imap(function, items, chunksize=32):
                    yield result
                    bar.update(1)
    finally:
        bar.close()


def convert_and_index_split(
    dataset: str,
    split: str,
    num_classes: int,
    convert: Callable[[Any], tuple[str, int, int, dict[int, int]]],
    jobs: Sequence[Any],
    folder: Path,
    staging: Path,
    mask_dir: str,
    workers: int,
    progress: bool,
) -> SplitIndex:
    """Run ``convert`` over ``jobs`` (each with an ``image`` path; it writes
    ``<mask_dir>/<name>.png`` and returns ``(name, height, width, class areas)``), then
    write and return the split's index of class-index PNG masks."""
    index = SplitIndex(dataset, split, "class_png", num_classes)
    results = map_items(convert, jobs, workers, f"{dataset} {split}", progress)
    for job, (name, height, width, areas) in zip(jobs, results, strict=True):
        image = relative_path(Path(job.image), folder)
        index.entries.append(
            IndexEntry(name, image, f"{mask_dir}/{name}.png", height, width, areas)
        )
    write_split_index(staging, index)
    return index


def raise_all(problems: Sequence[str], what: str) -> None:
    """One :class:`DataError` listing every problem (the first 30 in full)."""
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise DataError(f"{what}: {len(problems)} problem(s):\n  {shown}{more}")


# ----------------------------------------------------------------------------- summary
@dataclass
class FoldList:
    """BAM's per-fold lists: ``data_list`` (images with >= 1 usable fold class) and
    ``sub_class_file_list`` (per class, the images where it covers >= the area rule)."""

    images: list[IndexEntry]
    class_images: dict[int, list[IndexEntry]]


def fold_list(
    entries: Sequence[IndexEntry],
    classes: Sequence[int],
    exclude: Sequence[int] = (),
    min_area: int = MIN_PAIR_AREA,
) -> FoldList:
    """The fold list of ``classes``; images holding any pixel of an ``exclude`` class are
    skipped (BAM's ``filter_intersection``: the novel classes, in training)."""
    excluded = set(exclude)
    result = FoldList([], {c: [] for c in classes})
    for entry in entries:
        if excluded.intersection(entry.areas):
            continue
        usable = [c for c in classes if entry.areas.get(c, 0) >= min_area]
        if usable:
            result.images.append(entry)
        for class_id in usable:
            result.class_images[class_id].append(entry)
    return result


def fold_lists(
    dataset: str,
    indexes: dict[str, SplitIndex],
    coco_convention: splits.CocoConvention = "interleaved",
) -> dict[tuple[int, str], FoldList]:
    """``{(fold, "train"|"val"): FoldList}``: base classes with the novel-image filter on
    the train split, novel classes without filter on the val split."""
    result = {}
    for fold in range(splits.NUM_FOLDS[dataset]):
        novel = splits.novel_classes(dataset, fold, coco_convention)
        base = splits.base_classes(dataset, fold, coco_convention)
        result[fold, "train"] = fold_list(indexes["train"].entries, base, exclude=novel)
        result[fold, "val"] = fold_list(indexes["val"].entries, novel)
    return result


def write_fold_lists(folder: Path, lists: dict[tuple[int, str], FoldList], prefix: str) -> None:
    """For inspection (the episode sampler rebuilds them from the class areas):
    ``lists/<prefix>fold<k>_<split>.txt`` ("image mask" lines) and
    ``lists/<prefix>fold<k>_<split>_classes.json`` ({class id: [image names]})."""
    for (fold, split), fold_data in lists.items():
        stem = folder / "lists" / f"{prefix}fold{fold}_{split}"
        atomic_write_text(
            stem.with_suffix(".txt"), "".join(f"{e.image} {e.mask}\n" for e in fold_data.images)
        )
        atomic_write_json(
            stem.with_name(stem.name + "_classes.json"),
            {str(c): [e.name for e in images] for c, images in fold_data.class_images.items()},
        )


def pairs_per_fold(lists: dict[tuple[int, str], FoldList]) -> dict[str, dict[str, int]]:
    """``{"fold k": {"train c": n, "val c": n, "train images": n, "val images": n}}``:
    usable (image, class) pairs per class, and images in each fold list."""
    result: dict[str, dict[str, int]] = {}
    for (fold, split), fold_data in sorted(lists.items()):
        counts = result.setdefault(f"fold {fold}", {})
        counts[f"{split} images"] = len(fold_data.images)
        for class_id, images in fold_data.class_images.items():
            counts[f"{split} {class_id}"] = len(images)
    return result


def format_pairs_table(dataset: str, pairs: dict[str, dict[str, int]]) -> str:
    """Rows = classes, columns = folds; ``*`` marks the fold where the class is novel
    (its count is evaluation pairs), other cells count training pairs."""
    names = splits.class_names(dataset)
    folds = sorted(pairs)
    lines = [f"  {'id':>3} {'class':<16}" + "".join(f"{f:>12}" for f in folds)]
    for class_id in range(1, len(names) + 1):
        cells = []
        for fold in folds:
            if f"val {class_id}" in pairs[fold]:
                cells.append(f"{pairs[fold][f'val {class_id}']:>11}*")
            else:
                cells.append(f"{pairs[fold][f'train {class_id}']:>12}")
        lines.append(f"  {class_id:>3} {names[class_id - 1][:16]:<16}" + "".join(cells))
    for split in ("train", "val"):
        totals = "".join(f"{pairs[fold][f'{split} images']:>12}" for fold in folds)
        lines.append(f"  {'':>3} {'images, ' + split:<16}{totals}")
    return "\n".join(lines)


def print_summary(marker: dict[str, Any]) -> None:
    dataset = marker["dataset"]
    counts = ", ".join(f"{split} {n}" for split, n in marker["counts"].items())
    print(f"{dataset}: images per split: {counts}")
    for line, value in marker.get("stats", {}).items():
        print(f"  {line}: {value}")
    for title, pairs in marker.get("pairs", {}).items():
        print(f"usable (image, class) pairs, area >= {MIN_PAIR_AREA} px, {title}:")
        print("  (* = novel in that fold: evaluation pairs; others: training pairs, novel-free)")
        print(format_pairs_table(dataset, pairs))


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="download, convert and index PASCAL-5i / COCO-20i / FSS-1000",
        description=(
            "Prepare a real dataset under ROOT/<dataset> (see docs/data.md), or check an "
            "existing one with --verify (reads only)."
        ),
    )
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", default="data", help="data root (default: data)")
    parser.add_argument("--download", action="store_true", help="fetch the official archives")
    parser.add_argument(
        "--verify", action="store_true", help="check a prepared tree, change nothing"
    )
    parser.add_argument("--voc", help="PASCAL: VOCtrainval_11-May-2012.tar or its extracted tree")
    parser.add_argument("--sbd", help="PASCAL: SBD benchmark.tgz or its extracted tree")
    parser.add_argument("--sbd-list", help="PASCAL: SBD train_noval.txt (official train list)")
    parser.add_argument(
        "--train-set",
        choices=("official", "trainaug"),
        default="official",
        help="PASCAL train list: 'official' = VOC train + SBD train_noval, duplicates removed "
        "(PFENet/BAM voc_sbd_merge_noduplicate, 5953 images); 'trainaug' = VOC train + all "
        "SBD minus VOC val (10582 images)",
    )
    parser.add_argument(
        "--coco",
        help="COCO: folder with train2014/val2014 (.zip or folders) "
        "and annotations_trainval2014.zip or annotations/",
    )
    parser.add_argument(
        "--crowd",
        choices=("class", "ignore"),
        default="class",
        help="COCO crowd regions: 'class' = painted with their class like any object "
        "(default, as a plain pycocotools conversion does), 'ignore' = 255",
    )
    parser.add_argument("--fss", help="FSS-1000: the zip or the folder of 1000 class folders")
    parser.add_argument("--workers", type=int, default=1, help="conversion processes (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Entry point of ``prepare``: 0 = done, 1 = ``--verify`` found problems, 2 = bad input."""
    root = Path(args.root)
    if args.verify:
        return _run_verify(root, args.dataset)
    try:
        marker = _prepare(args, root)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(marker)
    return 0


def _prepare(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    start = time.perf_counter()
    progress = not args.quiet
    if args.dataset == "pascal":
        from hdmnet_core.data.pascal import prepare_pascal

        marker = prepare_pascal(
            root,
            voc=args.voc,
            sbd=args.sbd,
            sbd_list=args.sbd_list,
            download=args.download,
            train_set=args.train_set,
            workers=args.workers,
            progress=progress,
        )
    elif args.dataset == "coco":
        from hdmnet_core.data.coco import prepare_coco

        marker = prepare_coco(
            root,
            coco=args.coco,
            download=args.download,
            crowd=args.crowd,
            workers=args.workers,
            progress=progress,
        )
    else:
        from hdmnet_core.data.fss1000 import prepare_fss1000

        marker = prepare_fss1000(root, fss=args.fss, progress=progress)
    print(f"prepared {dataset_folder(root, args.dataset)} in {time.perf_counter() - start:.1f} s")
    return marker


def _run_verify(root: Path, dataset: str) -> int:
    problems = verify_prepared(root, dataset)
    folder = dataset_folder(root, dataset)
    if not problems:
        print(f"{folder}: OK, every file present, readable and consistent")
        return 0
    print(f"{folder}: {len(problems)} problem(s):")
    for problem in problems:
        print(f"  {problem}")
    return 1
