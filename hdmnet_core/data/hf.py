"""Prepared splits as Hugging Face datasets: ``export-hf`` writes them, :class:`HFSource`
reads them back as a :class:`~hdmnet_core.data.source.SegmentationSource`.

Why: labs share prepared data (the official lists and weights lived on hosts that
stopped answering, reference section 8). ``python -m hdmnet_core export-hf --dataset
pascal --root data --out pascal-hf`` writes a ``datasets.DatasetDict`` with
``save_to_disk`` (one ``datasets.Dataset`` per split), ready for ``push_to_hub``.

Columns of every split (one row per image, in the prepared order):

| column | feature | content |
|---|---|---|
| ``name`` | string | the image name of the source |
| ``image`` | Image | the original JPEG bytes (not re-encoded; synthetic: lossless PNG) |
| ``mask`` | Image | the prepared mask PNG bytes (FSS-1000: the original 0/255 mask) |
| ``height``, ``width`` | int32 | size at prepare time (checked when decoding) |
| ``class_ids``, ``class_pixels`` | list of int | the class areas (foreground classes, pixels) |
| ``class_id`` | int32 | FSS-1000: the class of the binary mask's foreground (else 0) |
| ``folds`` | list of int8 | the folds whose official list holds the image: on a training split the fold's base classes with the novel-image filter, on an evaluation split its novel classes (area rule of the dataset) |
| ``folds_contiguous`` | list of int8 | COCO only: the same for the contiguous fold convention |

Dataset facts (dataset, split, number of classes, mask kind, area rule) are JSON in
each split's ``info.description``. The episode sampler never reads ``folds``: it
rebuilds the lists from the class areas, so the same episodes come out of the
original tree and of its export (``tests/test_hf_export.py``).

Reading: ``data.root = "hf:<folder>"`` (with ``data.dataset`` naming the dataset) makes
:func:`hdmnet_core.data.datasets.open_source` return an :class:`HFSource`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hdmnet_core.data.source import DataError, SegmentationSource
from hdmnet_core.data.splits import CocoConvention

HF_PREFIX = "hf:"
"""``data.root`` of this form reads an exported folder instead of a prepared tree."""
EXPORT_FORMAT = 1
EXPORT_DATASETS: tuple[str, ...] = ("synthetic", "pascal", "coco", "fss1000")
SPLITS: dict[str, tuple[str, ...]] = {
    "synthetic": ("train", "val"),
    "pascal": ("train", "val"),
    "coco": ("train", "val"),
    "fss1000": ("train", "val", "test"),
}
NUM_CLASSES = {"synthetic": 20, "pascal": 20, "coco": 80, "fss1000": 1000}


# ----------------------------------------------------------------------------- export
def open_split(dataset: str, root: str | os.PathLike[str], split: str) -> SegmentationSource:
    """The source of one split of a prepared (or, synthetic, generated) tree."""
    if dataset == "synthetic":
        from hdmnet_core.data.synthetic import SyntheticSource

        return SyntheticSource(root, split)
    from hdmnet_core.data.prepared import PreparedSource

    return PreparedSource(root, dataset, split)


def fold_memberships(
    dataset: str,
    source: SegmentationSource,
    split: str,
    convention: CocoConvention = "interleaved",
) -> list[list[int]]:
    """Per image, the folds whose official list holds it (see the module docstring);
    FSS-1000 has class lists instead of folds: all empty."""
    from hdmnet_core.data import splits

    folds: list[list[int]] = [[] for _ in range(len(source))]
    if dataset == "fss1000":
        return folds
    min_area = _min_area(dataset, source)
    for fold in range(splits.NUM_FOLDS[dataset]):
        novel = set(splits.novel_classes(dataset, fold, convention))
        base = set(splits.base_classes(dataset, fold, convention))
        for i in range(len(source)):
            areas = source.class_areas(i)
            if split == "train":
                listed = not novel.intersection(areas) and any(
                    areas.get(c, 0) >= min_area for c in base
                )
            else:
                listed = any(areas.get(c, 0) >= min_area for c in novel)
            if listed:
                folds[i].append(fold)
    return folds


def _min_area(dataset: str, source: SegmentationSource) -> int:
    """The dataset's usable-pair area rule (synthetic: scaled to its image size)."""
    from hdmnet_core.data.prepared import MIN_PAIR_AREA

    if dataset == "synthetic":
        from hdmnet_core.data.synthetic import scaled_min_area

        return scaled_min_area(int(source.load_mask(0).shape[0])) if len(source) else 0
    return MIN_PAIR_AREA


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _file_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from error


def _rows(dataset: str, root: str, split: str) -> Iterator[dict[str, Any]]:
    """The rows of one split (a ``datasets`` generator: reopens the source itself)."""
    source = open_split(dataset, root, split)
    folds = fold_memberships(dataset, source, split)
    contiguous = (
        fold_memberships(dataset, source, split, "contiguous") if dataset == "coco" else None
    )
    for i in range(len(source)):
        areas = sorted(source.class_areas(i).items())
        row: dict[str, Any] = {
            "name": source.image_name(i),
            "class_ids": [c for c, _ in areas],
            "class_pixels": [n for _, n in areas],
            "folds": folds[i],
        }
        if dataset == "synthetic":
            image, mask = source.load_image(i), source.load_mask(i)
            row |= {
                "image": {"bytes": _png_bytes(image), "path": None},
                "mask": {"bytes": _png_bytes(mask), "path": None},
                "height": int(mask.shape[0]),
                "width": int(mask.shape[1]),
                "class_id": 0,
            }
        else:
            from hdmnet_core.data.prepared import PreparedSource

            assert isinstance(source, PreparedSource)
            entry = source.index.entries[i]
            row |= {
                "image": {"bytes": _file_bytes(source.image_path(i)), "path": None},
                "mask": {"bytes": _file_bytes(source.mask_path(i)), "path": None},
                "height": entry.height,
                "width": entry.width,
                "class_id": entry.class_id,
            }
        if contiguous is not None:
            row["folds_contiguous"] = contiguous[i]
        yield row


def _features(dataset: str) -> Any:
    import datasets

    columns: dict[str, Any] = {
        "name": datasets.Value("string"),
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "height": datasets.Value("int32"),
        "width": datasets.Value("int32"),
        "class_ids": datasets.List(datasets.Value("int32")),
        "class_pixels": datasets.List(datasets.Value("int64")),
        "class_id": datasets.Value("int32"),
        "folds": datasets.List(datasets.Value("int8")),
    }
    if dataset == "coco":
        columns["folds_contiguous"] = datasets.List(datasets.Value("int8"))
    return datasets.Features(columns)


def _split_facts(dataset: str, root: str, split: str) -> dict[str, Any]:
    source = open_split(dataset, root, split)
    mask_kind = "binary_png" if dataset == "fss1000" else "class_png"
    return {
        "hdmnet_export_format": EXPORT_FORMAT,
        "dataset": dataset,
        "split": split,
        "images": len(source),
        "num_classes": NUM_CLASSES[dataset],
        "mask_kind": mask_kind,
        "min_class_area_of_folds": _min_area(dataset, source),
    }


def export_hf(
    dataset: str, root: str | os.PathLike[str], out: str | os.PathLike[str], progress: bool = True
) -> Path:
    """Write every split of ``dataset`` under ``root`` to ``out`` (a new folder, made
    whole: written beside it, then renamed). An existing ``out`` is never overwritten."""
    import datasets

    if dataset not in EXPORT_DATASETS:
        raise DataError(f"dataset {dataset!r}: export-hf knows {list(EXPORT_DATASETS)}")
    out = Path(out)
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new --out (nothing is overwritten)")
    for split in SPLITS[dataset]:
        open_split(dataset, root, split)  # a missing or unprepared tree fails here, clearly
    bars_were_on = datasets.is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        return _write_export(dataset, Path(root), out)
    except OSError as error:  # read-only or full disk: one line naming the file
        where = error.filename if error.filename is not None else out
        raise DataError(f"{where}: {error.strerror or error} (while writing {out})") from error
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


def _write_export(dataset: str, root: Path, out: Path) -> Path:
    """The splits to ``.<out>.partial`` (from generators cached beside it), then renamed."""
    import datasets

    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted export of ours (hidden name)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.cache.") as cache:
        parts = {}
        for split in SPLITS[dataset]:
            facts = _split_facts(dataset, str(root), split)
            features = _features(dataset)
            parts[split] = datasets.Dataset.from_generator(
                _rows,
                features=features,
                gen_kwargs={"dataset": dataset, "root": str(root.resolve()), "split": split},
                cache_dir=cache,
                info=datasets.DatasetInfo(description=json.dumps(facts), features=features),
                split=datasets.Split(split),
            )
        datasets.DatasetDict(parts).save_to_disk(str(partial))
        del parts
    os.replace(partial, out)
    return out


# ----------------------------------------------------------------------------- reading
def read_facts(folder: Path, split: str, dataset: str | None = None) -> dict[str, Any]:
    """The dataset facts of an exported split (``info.description``), checked.

    A copy that lost the description (``push_to_hub`` keeps the columns and features but
    not ``info.description``; ``load_dataset(...).save_to_disk(...)`` then has none) is
    read when ``dataset`` names its dataset: the facts follow from it.
    """
    info_path = folder / split / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        splits = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        raise DataError(
            f"{folder}: no exported split {split!r} here (have {splits}); make one with "
            f"python -m hdmnet_core export-hf"
        ) from error
    except (OSError, ValueError) as error:
        raise DataError(f"{info_path}: unreadable ({error})") from error
    try:
        facts = json.loads(info["description"])
    except (ValueError, KeyError, TypeError):
        facts = None
    if isinstance(facts, dict) and facts.get("hdmnet_export_format") == EXPORT_FORMAT:
        return facts
    if dataset in EXPORT_DATASETS:
        return {
            "hdmnet_export_format": EXPORT_FORMAT,
            "dataset": dataset,
            "split": split,
            "images": None,  # unknown: every row is taken
            "num_classes": NUM_CLASSES[dataset],
            "mask_kind": "binary_png" if dataset == "fss1000" else "class_png",
        }
    raise DataError(
        f"{info_path}: no export-hf description of format {EXPORT_FORMAT} (a copy from the "
        f"Hub?); name its dataset (data.dataset, or HFSource(..., dataset=...))"
    )


class HFSource:
    """One split of an ``export-hf`` folder as a :class:`SegmentationSource`.

    Names, sizes and class areas are read once; image and mask bytes are read per item
    from the memory-mapped Arrow file and decoded with Pillow exactly as
    :class:`~hdmnet_core.data.prepared.PreparedSource` decodes the files, so pixels are
    identical. The table is opened on first use in each process (DataLoader workers).
    """

    def __init__(
        self, folder: str | os.PathLike[str], split: str, dataset: str | None = None
    ) -> None:
        from hdmnet_core.data.prepared import IndexEntry

        self.folder = Path(folder)
        facts = read_facts(self.folder, split, dataset)
        if dataset is not None and facts["dataset"] != dataset:
            raise DataError(
                f"{self.folder}: exported from dataset {facts['dataset']!r}, not {dataset!r}"
            )
        self.dataset: str = facts["dataset"]
        self.split = split
        self.name = f"{self.dataset}/{split}"
        self._mask_kind: str = facts["mask_kind"]
        self._num_classes = int(facts["num_classes"])
        table = self._open_table()
        columns = {
            name: table.column(name).to_pylist()
            for name in ("name", "height", "width", "class_ids", "class_pixels", "class_id")
        }
        self._entries = [
            IndexEntry(
                name=columns["name"][i],
                image=f"{self.folder / split}[{i}].image",
                mask=f"{self.folder / split}[{i}].mask",
                height=columns["height"][i],
                width=columns["width"][i],
                areas=dict(zip(columns["class_ids"][i], columns["class_pixels"][i], strict=True)),
                class_id=columns["class_id"][i],
            )
            for i in range(table.num_rows)
        ]
        if facts["images"] is not None and len(self._entries) != int(facts["images"]):
            raise DataError(
                f"{self.folder / split}: {len(self._entries)} rows, its description says "
                f"{facts['images']} (incomplete copy?)"
            )
        self._table: tuple[int, Any] | None = (os.getpid(), table)

    def _open_table(self) -> Any:
        """The split's ``pyarrow.Table`` (memory-mapped by ``datasets``)."""
        import datasets

        path = self.folder / self.split
        try:
            return datasets.load_from_disk(str(path)).data.table
        except (FileNotFoundError, ValueError, OSError) as error:
            raise DataError(f"{path}: unreadable exported split ({error})") from error

    def _columns(self) -> Any:
        if self._table is None or self._table[0] != os.getpid():
            self._table = (os.getpid(), self._open_table())
        return self._table[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_table"] = None  # each process maps the file itself
        return state

    def __len__(self) -> int:
        return len(self._entries)

    def _index(self, index: int) -> int:
        if not -len(self._entries) <= index < len(self._entries):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} images")
        return index % len(self._entries)

    def _bytes(self, column: str, index: int) -> io.BytesIO:
        cell = self._columns().column(column)[index]
        data = cell["bytes"].as_py()
        if not data:
            raise DataError(f"{self._entries[index].image[:-5]}{column}: no bytes stored")
        return io.BytesIO(data)

    def image_name(self, index: int) -> str:
        return self._entries[self._index(index)].name

    def load_image(self, index: int) -> np.ndarray:
        from hdmnet_core.data.prepared import decode_image

        i = self._index(index)
        entry = self._entries[i]
        return decode_image(self._bytes("image", i), entry.image, entry)

    def load_mask(self, index: int) -> np.ndarray:
        from hdmnet_core.data.prepared import decode_mask

        i = self._index(index)
        entry = self._entries[i]
        return decode_mask(
            self._bytes("mask", i), entry.mask, entry, self._mask_kind, self._num_classes
        )

    def class_areas(self, index: int) -> dict[int, int]:
        return dict(self._entries[self._index(index)].areas)


def hf_folder(root: str) -> Path | None:
    """The folder of an ``hf:<folder>`` data root, else ``None``."""
    return Path(root[len(HF_PREFIX) :]) if root.startswith(HF_PREFIX) else None


# ----------------------------------------------------------------------------- CLI
HELP = "write a prepared dataset's splits as Hugging Face datasets (save_to_disk)"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export-hf",
        help=HELP,
        description=(
            "Write every split of a prepared dataset (synthetic: a generated one) as a "
            "datasets.Dataset folder (DatasetDict.save_to_disk), ready for push_to_hub. "
            "Read it back with data.root='hf:OUT'."
        ),
    )
    parser.add_argument("--dataset", required=True, choices=EXPORT_DATASETS)
    parser.add_argument("--root", default="data", help="data root (default: data)")
    parser.add_argument("--out", required=True, help="new folder to write (never overwritten)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    out = export_hf(args.dataset, args.root, args.out, progress=not args.quiet)
    for split in SPLITS[args.dataset]:
        print(f"{args.dataset}/{split}: {read_facts(out, split)['images']} images")
    print(f"wrote {out} (load with datasets.load_from_disk, or data.root='hf:{out}')")
    return 0
