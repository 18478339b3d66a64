"""PASCAL-5i: VOC2012 + SBD augmented masks -> a prepared tree, and its reader.

Inputs (reference section 1):
- VOC2012 trainval (``VOCdevkit/VOC2012``): ``JPEGImages/*.jpg``, ``SegmentationClass/
  *.png`` (palette PNGs whose palette *indices* are class ids 0..20, 255 = object
  border / ignore), ``ImageSets/Segmentation/{train,val}.txt``.
- SBD (``benchmark_RELEASE/dataset``): ``cls/*.mat`` (a ``GTcls`` struct whose
  ``Segmentation`` field is the class-id mask, no ignore border), ``img/*.jpg``,
  ``train.txt``, ``val.txt``; and Bharath Hariharan's ``train_noval.txt`` (SBD training
  images that are not in VOC2012 val).

Lists:
- ``val``: VOC2012 ``val.txt`` (1,449 images), VOC masks.
- ``train`` with ``train_set="official"`` (default): the list PFENet published and
  BAM/HDMNet use, ``voc_sbd_merge_noduplicate.txt``: SBD ``train_noval.txt`` followed by
  VOC ``train.txt``, duplicates removed, first occurrence kept (5,953 images per the
  PFENet README). ``train_set="trainaug"``: SBD train + val followed by VOC train,
  duplicates and every VOC val image removed (the common 10,582-image "trainaug").
  In both, any VOC val image is dropped from training (counted in the summary).
- Mask of a training image: VOC's own ``SegmentationClass`` PNG when VOC annotates it
  (it has the 255 border), else the SBD ``.mat`` (our choice; the official
  ``SegmentationClassAug`` PNGs were made elsewhere and their rule is not published).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hdmnet_core import __version__
from hdmnet_core.data.download import ARCHIVES, extract_archive, fetch_archive
from hdmnet_core.data.prepared import (
    FORMAT_VERSION,
    PreparedSource,
    SplitIndex,
    check_class_values,
    check_jpeg,
    dataset_folder,
    file_sha256,
    read_png_values,
    staged_mask,
    write_png,
)
from hdmnet_core.data.source import DataError, compute_class_areas, name_problem
from hdmnet_core.data.staging import (
    ConvertResult,
    FoldList,
    ImageCopies,
    begin_staging,
    command_line,
    commit_staging,
    convert_and_index_split,
    fold_lists,
    images_record,
    pairs_per_fold,
    path_flag,
    raise_all,
    write_fold_lists,
)

NUM_CLASSES = 20
TrainSet = Literal["official", "trainaug"]


class PascalSource(PreparedSource):
    """``pascal/train`` or ``pascal/val`` of a prepared tree (see :mod:`.prepared`)."""

    def __init__(self, root: str | os.PathLike[str], split: str) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r}: PASCAL has 'train' and 'val'")
        super().__init__(root, "pascal", split)


# ----------------------------------------------------------------------------- inputs
def find_voc_root(path: Path) -> Path:
    """The folder holding ``JPEGImages``, ``SegmentationClass`` and ``ImageSets``."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "SegmentationClass").is_dir() and (candidate / "JPEGImages").is_dir():
            return candidate
    raise DataError(f"{path}: no VOC2012 tree (expected VOCdevkit/VOC2012/SegmentationClass)")


def find_sbd_root(path: Path) -> Path:
    """The folder holding SBD's ``cls/`` and ``train.txt``."""
    for candidate in (path, path / "dataset", path / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir() and (candidate / "train.txt").is_file():
            return candidate
    raise DataError(f"{path}: no SBD tree (expected benchmark_RELEASE/dataset/cls and train.txt)")


def read_name_list(path: Path) -> list[str]:
    """Image names, one per line (blank lines skipped); :class:`DataError` if missing/empty."""
    if not path.is_file():
        raise DataError(f"{path}: list file is missing")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in lines if name]
    for number, name in enumerate(lines, 1):
        problem = name_problem(name) if name else None
        if problem is not None or (name and "/" in name):
            raise DataError(
                f"{path}:{number}: image name {name!r} is not a plain file name "
                f"({problem or 'it has a folder part'}); the list file is not trusted"
            )
    if not names:
        raise DataError(f"{path}: list file is empty")
    return names


def read_voc_mask(path: Path) -> np.ndarray:
    """A VOC ``SegmentationClass`` palette PNG -> ``(H, W)`` uint8 class ids, checked."""
    mask = read_png_values(path)
    check_class_values(mask, NUM_CLASSES, path)
    return mask


def read_sbd_mask(path: Path) -> np.ndarray:
    """An SBD ``cls/NAME.mat`` (``GTcls.Segmentation``) -> ``(H, W)`` uint8 class ids.

    Every way a ``.mat`` can be bad (missing, empty, truncated, garbled, another struct)
    is a :class:`DataError` naming the file.
    """
    import zlib

    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise DataError(f"{path}: SBD mask file is missing")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: SBD mask file is empty (0 bytes)")
    try:
        content = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        segmentation = np.asarray(content["GTcls"].Segmentation)
    except (KeyError, AttributeError) as error:
        raise DataError(f"{path}: no GTcls.Segmentation field ({error!r})") from error
    except (MatReadError, zlib.error) as error:
        raise DataError(f"{path}: corrupt or truncated .mat file ({error})") from error
    except (OSError, ValueError, TypeError, NotImplementedError, EOFError) as error:
        raise DataError(f"{path}: unreadable .mat file ({error})") from error
    except (IndexError, UnicodeDecodeError, OverflowError, MemoryError) as error:
        # What scipy's parser raises on garbled headers and sizes.
        raise DataError(f"{path}: garbled .mat file ({type(error).__name__}: {error})") from error
    if not np.issubdtype(segmentation.dtype, np.number):
        raise DataError(f"{path}: GTcls.Segmentation is not numeric ({segmentation.dtype})")
    if segmentation.ndim != 2 or segmentation.min() < 0 or segmentation.max() > 255:
        raise DataError(f"{path}: GTcls.Segmentation is not a 2-D class-id array")
    mask = segmentation.astype(np.uint8)
    check_class_values(mask, NUM_CLASSES, path)
    return mask


def read_source_mask(path: Path) -> np.ndarray:
    """The class-id mask of a source annotation: SBD ``.mat`` or VOC palette ``.png``."""
    return read_sbd_mask(path) if path.suffix == ".mat" else read_voc_mask(path)


def _resolve_tree(
    given: str | None, archive_key: str, folder: Path, download: bool, progress: bool
) -> Path:
    """A directory from ``given`` (folder or archive) or from the official download."""
    if given is not None:
        path = Path(given)
        if path.is_dir():
            return path.resolve()
        if path.is_file():
            return extract_archive(path, folder / "raw" / _stem(path.name))
        raise DataError(f"{path}: no such file or folder")
    archive = folder / "downloads" / ARCHIVES[archive_key].filename
    if download:
        archive = fetch_archive(archive_key, folder / "downloads", progress=progress)
    if archive.is_file():
        return extract_archive(archive, folder / "raw" / _stem(archive.name))
    extracted = folder / "raw" / _stem(archive.name)
    if extracted.is_dir():
        return extracted
    raise DataError(
        f"{ARCHIVES[archive_key].filename}: not found in {folder / 'downloads'}; "
        f"pass --download or its path"
    )


def _stem(filename: str) -> str:
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


# ----------------------------------------------------------------------------- lists
@dataclass
class PascalLists:
    """Which images go where, and which annotation each mask comes from."""

    train: list[str]
    val: list[str]
    voc_annotated: set[str]
    duplicates_removed: int
    val_images_removed: int


def build_lists(
    voc_train: Sequence[str],
    voc_val: Sequence[str],
    sbd_names: Sequence[str],
) -> PascalLists:
    """Merge SBD names then VOC train names, keep first occurrences, drop VOC val images."""
    val_set = set(voc_val)
    seen: set[str] = set()
    train: list[str] = []
    duplicates = removed = 0
    for name in [*sbd_names, *voc_train]:
        if name in seen:
            duplicates += 1
            continue
        seen.add(name)
        if name in val_set:
            removed += 1
            continue
        train.append(name)
    return PascalLists(
        train=train,
        val=list(voc_val),
        voc_annotated=set(voc_train) | val_set,
        duplicates_removed=duplicates,
        val_images_removed=removed,
    )


# ----------------------------------------------------------------------------- convert
@dataclass(frozen=True)
class _Job:
    name: str
    image: str
    image_copy: str
    """Path below ``images/`` with ``--copy-images``."""
    mask_source: str
    output: str


def _convert(job: _Job) -> ConvertResult:
    """Check the JPEG, convert the mask (or reuse a staged one made from the same
    source bytes) -> (name, H, W, areas, source fingerprint)."""
    height, width = check_jpeg(Path(job.image))
    source, output = Path(job.mask_source), Path(job.output)
    sha256 = file_sha256(source)
    digest = f"pascal-{source.suffix.lstrip('.')}:{sha256}"
    mask = staged_mask(output, digest)
    reused = mask is not None
    if mask is None:
        mask = read_source_mask(source)
    if mask.shape != (height, width):
        raise DataError(
            f"{job.mask_source}: mask is {mask.shape[0]}x{mask.shape[1]} but image "
            f"{job.image} is {height}x{width}"
        )
    if not reused:
        write_png(output, mask, digest)
    stat = source.stat()
    fingerprint = {
        "path": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
    }
    return job.name, height, width, compute_class_areas(mask), fingerprint


def prepare_pascal(
    root: str | os.PathLike[str],
    voc: str | None = None,
    sbd: str | None = None,
    sbd_list: str | None = None,
    download: bool = False,
    train_set: TrainSet = "official",
    workers: int = 1,
    progress: bool = True,
    copy_images: bool = False,
) -> dict[str, Any]:
    """Build the PASCAL tree of ``root`` (:func:`~.prepared.dataset_folder`; see the module
    docstring); returns the written marker. ``copy_images`` hard-links (or copies) the
    JPEGs into the tree so that it does not depend on the source folders."""
    if train_set not in ("official", "trainaug"):
        raise ValueError(f"train_set={train_set!r}: use 'official' or 'trainaug'")
    start = time.perf_counter()
    folder = dataset_folder(root, "pascal")
    folder.mkdir(parents=True, exist_ok=True)
    voc_root = find_voc_root(_resolve_tree(voc, "voc2012", folder, download, progress))
    sbd_root = find_sbd_root(_resolve_tree(sbd, "sbd", folder, download, progress))
    voc_sets = voc_root / "ImageSets" / "Segmentation"
    voc_train = read_name_list(voc_sets / "train.txt")
    voc_val = read_name_list(voc_sets / "val.txt")
    if train_set == "official":
        sbd_names = read_name_list(_sbd_train_list(sbd_list, sbd_root, folder, download, progress))
    else:
        sbd_names = read_name_list(sbd_root / "train.txt") + read_name_list(sbd_root / "val.txt")
    lists = build_lists(voc_train, voc_val, sbd_names)

    problems: list[str] = []
    planned = {
        split: _plan(names, lists, voc_root, sbd_root, problems)
        for split, names in (("train", lists.train), ("val", lists.val))
    }
    raise_all(problems, "PASCAL list entries point to missing files")
    options = {
        "train_set": train_set,
        "voc": str(voc_root),
        "sbd": str(sbd_root),
        "copy_images": copy_images,
    }
    staging = begin_staging(folder, options)
    jobs = {
        split: [
            _Job(name, str(image), f"{name}.jpg", str(mask), str(staging / "masks" / f"{name}.png"))
            for name, image, mask in items
        ]
        for split, items in planned.items()
    }
    copies = ImageCopies() if copy_images else None
    indexes = {}
    for split, split_jobs in jobs.items():
        indexes[split] = convert_and_index_split(
            "pascal",
            split,
            NUM_CLASSES,
            _convert,
            split_jobs,
            folder,
            staging,
            "masks",
            workers,
            progress,
            copies,
        )
    folds = fold_lists("pascal", indexes)
    write_fold_lists(staging, folder, folds, prefix="")
    flags = [
        *path_flag("--voc", voc),
        *path_flag("--sbd", sbd),
        *path_flag("--sbd-list", sbd_list),
        *(["--download"] if download else []),
        *(["--train-set", train_set] if train_set != "official" else []),
        *(["--copy-images"] if copy_images else []),
    ]
    marker = _marker(indexes, lists, options, folds, time.perf_counter() - start)
    marker["command"] = command_line("pascal", folder.parent, flags)
    marker["images"] = images_record(
        copies, sorted({Path(job.image).parent for js in jobs.values() for job in js})
    )
    commit_staging(folder, marker)
    return marker


def _sbd_train_list(
    given: str | None, sbd_root: Path, folder: Path, download: bool, progress: bool
) -> Path:
    """``train_noval.txt``: given, already beside SBD / in downloads, or downloaded."""
    if given is not None:
        return Path(given)
    for candidate in (
        sbd_root / "train_noval.txt",
        folder / "downloads" / ARCHIVES["sbd_train_noval"].filename,
    ):
        if candidate.is_file():
            return candidate
    if download:
        return fetch_archive("sbd_train_noval", folder / "downloads", progress=progress)
    raise DataError(
        f"train_noval.txt (SBD training images not in VOC val) not found in {sbd_root} or "
        f"{folder / 'downloads'}: pass --sbd-list PATH, --download, or --train-set trainaug"
    )


def _plan(
    names: Sequence[str],
    lists: PascalLists,
    voc_root: Path,
    sbd_root: Path,
    problems: list[str],
) -> list[tuple[str, Path, Path]]:
    """``(name, image, mask source)`` per name (the source is a VOC ``.png`` or an SBD
    ``.mat``); each missing input is appended to ``problems`` (reported all at once,
    before anything is written)."""
    plan = []
    for name in names:
        image = voc_root / "JPEGImages" / f"{name}.jpg"
        if not image.is_file() and (sbd_root / "img" / f"{name}.jpg").is_file():
            image = sbd_root / "img" / f"{name}.jpg"
        from_voc = name in lists.voc_annotated
        mask = (
            voc_root / "SegmentationClass" / f"{name}.png"
            if from_voc
            else sbd_root / "cls" / f"{name}.mat"
        )
        for path, what in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                problems.append(f"{path}: {what} of list entry {name!r} is missing")
        plan.append((name, image, mask))
    return plan


def _marker(
    indexes: dict[str, SplitIndex],
    lists: PascalLists,
    options: dict[str, Any],
    folds: dict[tuple[int, str], FoldList],
    seconds: float,
) -> dict[str, Any]:
    from_sbd = sum(1 for name in lists.train if name not in lists.voc_annotated)
    return {
        "format": FORMAT_VERSION,
        "dataset": "pascal",
        "package_version": __version__,
        "counts": {split: len(index.entries) for split, index in indexes.items()},
        "options": options,
        "stats": {
            "train masks from SBD .mat": from_sbd,
            "train masks from VOC PNG": len(lists.train) - from_sbd,
            "duplicates removed from the merged train list": lists.duplicates_removed,
            "VOC val images removed from train": lists.val_images_removed,
            "seconds": round(seconds, 1),
        },
        "pairs": {"PASCAL-5i": pairs_per_fold(folds)},
    }


# ----------------------------------------------------------------------------- verify
def deep_problems(source: PreparedSource) -> list[str]:
    """Convert every source annotation of ``source`` again and name each prepared mask
    that differs from it (``prepare pascal --verify --deep``); reads only."""
    problems = []
    for i, entry in enumerate(source.index.entries):
        if entry.source is None or "path" not in entry.source:
            continue
        annotation = Path(entry.source["path"])
        if not annotation.is_file():
            continue  # the prepared mask is all that is left; nothing to compare with
        try:
            expected = read_source_mask(annotation)
            mask = source.load_mask(i)
        except DataError as error:
            problems.append(str(error))
            continue
        if expected.shape != mask.shape:
            problems.append(
                f"{source.mask_path(i)}: {mask.shape[0]}x{mask.shape[1]}, its source "
                f"{annotation} is {expected.shape[0]}x{expected.shape[1]}"
            )
        elif (differ := int((expected != mask).sum())) > 0:
            problems.append(
                f"{source.mask_path(i)}: {differ} pixel(s) differ from its source annotation "
                f"{annotation} (changed after prepare)"
            )
    return problems
