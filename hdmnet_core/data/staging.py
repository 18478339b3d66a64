"""Writing a prepared tree safely: staging, commit, image copies, fold lists, the summary.

Shared by :mod:`.pascal`, :mod:`.coco` and :mod:`.fss1000`; imports no dataset module
(the format itself is :mod:`.prepared`).

How a run stays safe:

- every output goes to ``<dataset>/.staging/`` first (files written atomically);
- a converted mask carries the digest of the annotation it came from (a PNG text
  chunk), so an interrupted run's staged mask is reused only while its source is
  provably unchanged (:func:`hdmnet_core.data.prepared.staged_mask`);
- only when the whole conversion succeeded is the old marker removed, the staged files
  moved into place one by one, the old files *this project wrote* that are not part of
  the new tree removed, and the new marker written (:func:`commit_staging`). Files
  that prepare did not write (``prepared_files.txt`` lists the ones it did) are never
  deleted; one that sits where a new file must go stops the run before anything moves.
  A run stopped half-way leaves the previous tree, or no marker, never a half-trusted one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hdmnet_core.atomic import atomic_write_json, atomic_write_text
from hdmnet_core.data import splits
from hdmnet_core.data.prepared import (
    MARKER,
    MIN_PAIR_AREA,
    IndexEntry,
    SplitIndex,
    list_line,
    relative_path,
    write_split_index,
)
from hdmnet_core.data.source import DataError, name_problem, safe_join

STAGING = ".staging"
RECORD = "prepared_files.txt"
"""Every file under :data:`PARTS` that prepare wrote, relative to the dataset folder."""
PARTS: tuple[str, ...] = ("masks", "index", "lists", "images")
"""The folders prepare writes into (``raw/`` and ``downloads/`` are only ever added to)."""
_FOLD_LIST_NAME = re.compile(
    r"^(?:(?:interleaved|contiguous)_)?fold\d+_(?:train|val)(?:\.txt|_classes\.json)$"
)


# ----------------------------------------------------------------------------- staging
def begin_staging(folder: Path, options: dict[str, Any]) -> Path:
    """``folder/.staging`` for a run with ``options``: kept when a previous, interrupted
    run used the same options (its masks are reused where their sources are unchanged),
    else emptied. ``.staging`` belongs to this project: nothing of the user's is there."""
    staging = folder / STAGING
    state_path = staging / "options.json"
    wanted = json.loads(json.dumps(options, sort_keys=True))
    if state_path.is_file():
        try:
            if json.loads(state_path.read_text(encoding="utf-8")) == wanted:
                return staging
        except (OSError, ValueError):
            pass
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    atomic_write_json(state_path, wanted)
    return staging


def _files_under(base: Path) -> set[str]:
    """Paths (relative to ``base``, ``/``-separated) of the files under ``base``'s parts."""
    found = set()
    for part in PARTS:
        top = base / part
        if not top.is_dir():
            continue
        for directory, _, names in os.walk(top):
            for name in names:
                found.add((Path(directory) / name).relative_to(base).as_posix())
    return found


def project_files(folder: Path) -> set[str]:
    """The files under ``folder``'s parts that prepare wrote (from :data:`RECORD`; for a
    tree prepared before the record existed, rebuilt from its marker and index)."""
    record = folder / RECORD
    if record.is_file():
        lines = record.read_text(encoding="utf-8").splitlines()
        return {
            _recorded_file(folder, line, f"{record}:{n}") for n, line in enumerate(lines, 1) if line
        }
    return _files_of_unrecorded_tree(folder)


def _recorded_file(folder: Path, line: str, where: str) -> str:
    """One line of :data:`RECORD`: a file under one of :data:`PARTS` of ``folder`` (these
    files may be deleted, so a name leading anywhere else is a :class:`DataError`)."""
    safe_join(folder, line, where)
    if line.split("/", 1)[0] not in PARTS:
        raise DataError(
            f"{where}: {line!r} is not under {', '.join(PARTS)}; {RECORD} lists only files "
            f"prepare wrote there (remove {folder / RECORD} if it was edited by hand)"
        )
    return line


def _files_of_unrecorded_tree(folder: Path) -> set[str]:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        splits_done = list(marker.get("counts", {}))
    except (OSError, ValueError, AttributeError):
        return set()
    files: set[str] = set()
    for split in splits_done:
        files |= {f"index/{split}.json", f"lists/{split}.txt"}
        try:
            index = json.loads((folder / "index" / f"{split}.json").read_text(encoding="utf-8"))
            files |= {
                m
                for m in index.get("masks", [])
                if m.startswith("masks/") and name_problem(m) is None
            }
        except (OSError, ValueError, AttributeError):
            pass
    if (folder / "lists").is_dir():
        files |= {
            f"lists/{p.name}" for p in (folder / "lists").iterdir() if _FOLD_LIST_NAME.match(p.name)
        }
    return files


def commit_staging(folder: Path, marker: dict[str, Any]) -> None:
    """Move the staged files into place, remove the old files prepare wrote that the new
    tree does not have, then write the marker. A user's file is never deleted; one in
    the way of a new file is a :class:`DataError` raised before anything changes."""
    staging = folder / STAGING
    staged = _files_under(staging)
    old = project_files(folder)
    in_the_way = sorted((_files_under(folder) - old) & staged)
    if in_the_way:
        shown = "\n  ".join(str(folder / p) for p in in_the_way[:20])
        raise DataError(
            f"{folder}: {len(in_the_way)} file(s) that prepare did not write are where it "
            f"must write its own; move them elsewhere and run again (nothing was changed):"
            f"\n  {shown}"
        )
    record = folder / RECORD
    atomic_write_text(record, "".join(f"{p}\n" for p in sorted(old | staged)))
    (folder / MARKER).unlink(missing_ok=True)  # from here until the end: not prepared
    made: set[Path] = set()
    for relative in sorted(staged):
        target = folder / relative
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        os.replace(staging / relative, target)
    for relative in sorted(old - staged):
        _remove_project_file(folder, relative)
    atomic_write_text(record, "".join(f"{p}\n" for p in sorted(staged)))
    shutil.rmtree(staging)
    atomic_write_json(folder / MARKER, marker)


def _remove_project_file(folder: Path, relative: str) -> None:
    """Delete one file prepare wrote, then its folders up to the part if left empty."""
    path = folder / relative
    path.unlink(missing_ok=True)
    top = folder / relative.split("/", 1)[0]
    parent = path.parent
    while parent != top and parent.is_relative_to(top):
        try:
            parent.rmdir()  # only succeeds when empty: a user's file keeps its folder
        except OSError:
            break
        parent = parent.parent


# ----------------------------------------------------------------------------- images
ImagePlacement = Literal["link", "copy"]


def place_image(source: Path, target: Path) -> ImagePlacement:
    """Hard-link ``source`` to ``target`` where the file system allows, else copy it
    (atomically, keeping the mtime); an identical ``target`` already there is kept."""
    if target.is_file():
        have, want = target.stat(), source.stat()
        if (have.st_dev, have.st_ino) == (want.st_dev, want.st_ino):
            return "link"
        if (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
            return "copy"
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
        placement: ImagePlacement = "link"
    except OSError:  # another file system, or links not allowed: a real copy
        shutil.copy2(source, temporary)
        placement = "copy"
    os.replace(temporary, target)
    return placement


@dataclass
class ImageCopies:
    """What ``--copy-images`` did in one run (for the marker and the summary)."""

    links: int = 0
    copies: int = 0

    def add(self, placement: ImagePlacement) -> None:
        if placement == "link":
            self.links += 1
        else:
            self.copies += 1


def images_record(copies: ImageCopies | None, sources: Sequence[Path]) -> dict[str, Any]:
    """The marker's ``images`` entry: where the tree reads its JPEGs from."""
    if copies is not None:
        return {"mode": "copied", "hard links": copies.links, "copies": copies.copies}
    return {"mode": "in place", "from": sorted({str(p.resolve()) for p in sources})}


# ----------------------------------------------------------------------------- convert
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


ConvertResult = tuple[str, int, int, dict[int, int], dict[str, Any]]
"""``(name, height, width, class areas, source record of the mask)``."""


def convert_and_index_split(
    dataset: str,
    split: str,
    num_classes: int,
    convert: Callable[[Any], ConvertResult],
    jobs: Sequence[Any],
    folder: Path,
    staging: Path,
    mask_dir: str,
    workers: int,
    progress: bool,
    copies: ImageCopies | None = None,
) -> SplitIndex:
    """Run ``convert`` over ``jobs`` (each with an ``image`` path; it writes
    ``<mask_dir>/<name>.png`` and returns a :data:`ConvertResult`), then write and return
    the split's index of class-index PNG masks. With ``copies``, each image is linked or
    copied to ``images/<its path below the source images folder>`` and indexed there."""
    index = SplitIndex(dataset, split, "class_png", num_classes)
    results = map_items(convert, jobs, workers, f"{dataset} {split}", progress)
    for job, (name, height, width, areas, source) in zip(jobs, results, strict=True):
        image = relative_path(Path(job.image), folder)
        if copies is not None:
            image = f"images/{job.image_copy}"
            copies.add(place_image(Path(job.image), staging / image))
        index.entries.append(
            IndexEntry(name, image, f"{mask_dir}/{name}.png", height, width, areas, source=source)
        )
    write_split_index(staging, folder, index)
    return index


def raise_all(problems: Sequence[str], what: str) -> None:
    """One :class:`DataError` listing every problem (the first 30 in full)."""
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise DataError(f"{what}: {len(problems)} problem(s):\n  {shown}{more}")


def command_line(dataset: str, root: Path, flags: Sequence[str]) -> str:
    """The ``prepare`` command that rebuilds a tree (recorded in its marker; quoted)."""
    words = ["python", "-m", "hdmnet_core", "prepare", dataset, "--root", str(root.resolve())]
    return shlex.join([*words, *flags])


def path_flag(flag: str, value: str | None) -> list[str]:
    """``[flag, absolute value]``, or nothing when the option was not given."""
    return [] if value is None else [flag, str(Path(value).resolve())]


# ----------------------------------------------------------------------------- folds
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


def write_fold_lists(
    staging: Path, folder: Path, lists: dict[tuple[int, str], FoldList], prefix: str
) -> None:
    """For inspection (the episode sampler rebuilds them from the class areas):
    ``lists/<prefix>fold<k>_<split>.txt`` ("image mask" lines, relative to ``folder``) and
    ``lists/<prefix>fold<k>_<split>_classes.json`` ({class id: [image names]})."""
    for (fold, split), fold_data in lists.items():
        stem = staging / "lists" / f"{prefix}fold{fold}_{split}"
        atomic_write_text(
            stem.with_suffix(".txt"), "".join(list_line(e, folder) for e in fold_data.images)
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


# ----------------------------------------------------------------------------- summary
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


def images_summary(marker: dict[str, Any]) -> str:
    """One sentence on where the tree reads its images (and what breaks it)."""
    images = marker.get("images", {})
    if images.get("mode") == "copied":
        return (
            f"images: copied into the tree ({images['hard links']} hard links, "
            f"{images['copies']} copies): the source folders may be moved or deleted"
        )
    places = ", ".join(images.get("from", [])) or "the source folders"
    return (
        f"images: read in place from {places}; moving or deleting them breaks this tree "
        "(prepare again with --copy-images for a self-contained one)"
    )


def print_summary(marker: dict[str, Any]) -> None:
    dataset = marker["dataset"]
    counts = ", ".join(f"{split} {n}" for split, n in marker["counts"].items())
    print(f"{dataset}: images per split: {counts}")
    for line, value in marker.get("stats", {}).items():
        print(f"  {line}: {value}")
    print(images_summary(marker))
    for title, pairs in marker.get("pairs", {}).items():
        print(f"usable (image, class) pairs, area >= {MIN_PAIR_AREA} px, {title}:")
        print("  (* = novel in that fold: evaluation pairs; others: training pairs, novel-free)")
        print(format_pairs_table(dataset, pairs))
