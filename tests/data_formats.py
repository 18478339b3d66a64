"""Tiny dataset trees in the real on-disk formats, for tests (nothing is downloaded).

- VOC2012: ``VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation}``
  with palette ("P" mode) PNGs using the VOC colour map;
- SBD: ``benchmark_RELEASE/dataset/{cls/*.mat (GTcls struct), img/*.jpg, train.txt,
  val.txt}`` and ``train_noval.txt``;
- COCO 2014: ``{train2014,val2014}/COCO_<split>_<12-digit id>.jpg`` and
  ``annotations/instances_<split>.json`` with polygon, RLE and crowd annotations;
- FSS-1000: ``<class>/<k>.jpg`` + ``<class>/<k>.png`` (0/255 masks, saved as RGB).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def rect_mask(
    height: int, width: int, rects: list[tuple[int, int, int, int, int]], border: bool = False
) -> np.ndarray:
    """``(H, W)`` uint8 mask with ``(class, y0, y1, x0, x1)`` rectangles painted in order;
    ``border=True`` sets a 1-pixel 255 frame around each rectangle, like VOC."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for class_id, y0, y1, x0, x1 in rects:
        mask[y0:y1, x0:x1] = class_id
        if border:
            mask[y0, x0:x1] = mask[y1 - 1, x0:x1] = 255
            mask[y0:y1, x0] = mask[y0:y1, x1 - 1] = 255
    return mask


def write_jpeg(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def voc_palette() -> list[int]:
    """The VOC colour map (bit-interleaved), 256 RGB entries flattened."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_voc_png(path: Path, mask: np.ndarray) -> None:
    """A palette PNG whose indices are the class ids (as VOC's SegmentationClass)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    image.save(path, format="PNG")


def make_voc_tree(
    root: Path,
    masks: dict[str, np.ndarray],
    train: list[str],
    val: list[str],
    extra_images: dict[str, tuple[int, int]] | None = None,
) -> Path:
    """``root/VOCdevkit/VOC2012`` with a JPEG and a palette PNG for every ``masks`` entry
    (plus JPEG-only ``extra_images`` of given (H, W), e.g. images only SBD annotates)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for seed, (name, mask) in enumerate(sorted(masks.items())):
        write_jpeg(voc / "JPEGImages" / f"{name}.jpg", *mask.shape, seed=seed)
        write_voc_png(voc / "SegmentationClass" / f"{name}.png", mask)
    for seed, (name, (h, w)) in enumerate(sorted((extra_images or {}).items()), start=100):
        write_jpeg(voc / "JPEGImages" / f"{name}.jpg", h, w, seed=seed)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (sets / "val.txt").write_text("".join(f"{n}\n" for n in val))
    return voc


def write_sbd_mat(path: Path, mask: np.ndarray) -> None:
    """SBD ``cls/NAME.mat``: a ``GTcls`` struct with Boundaries, Segmentation, CategoriesPresent."""
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.array(sorted(int(v) for v in np.unique(mask) if v != 0), dtype=np.uint8)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(mask.shape, dtype=np.uint8)
    savemat(
        str(path),
        {
            "GTcls": {
                "Boundaries": boundaries,
                "Segmentation": mask.astype(np.uint8),
                "CategoriesPresent": present,
            }
        },
    )


def make_sbd_tree(
    root: Path,
    masks: dict[str, np.ndarray],
    train: list[str],
    val: list[str],
    train_noval: list[str] | None = None,
) -> Path:
    """``root/benchmark_RELEASE/dataset`` (+ ``train_noval.txt`` beside it when given)."""
    dataset = root / "benchmark_RELEASE" / "dataset"
    for seed, (name, mask) in enumerate(sorted(masks.items()), start=50):
        write_sbd_mat(dataset / "cls" / f"{name}.mat", mask)
        write_jpeg(dataset / "img" / f"{name}.jpg", *mask.shape, seed=seed)
    (dataset / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (dataset / "val.txt").write_text("".join(f"{n}\n" for n in val))
    if train_noval is not None:
        (dataset / "train_noval.txt").write_text("".join(f"{n}\n" for n in train_noval))
    return dataset


def make_tar(source: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith(("gz", "tgz")) else "w") as bundle:
        bundle.add(source, arcname=arcname)
    return archive


def polygon_of_rect(y0: int, y1: int, x0: int, x1: int) -> list[list[float]]:
    """COCO polygon covering pixels ``[y0, y1) x [x0, x1)``."""
    return [
        [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]
    ]


def rle_of_mask(binary: np.ndarray) -> dict[str, object]:
    """Compressed COCO RLE (``counts`` as a string) of a boolean mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle_of_mask(binary: np.ndarray) -> dict[str, object]:
    """Uncompressed RLE (``counts`` as a list, column-major), the form crowd annotations use."""
    flat = binary.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": list(binary.shape), "counts": counts}


def make_coco_split(
    root: Path,
    split: str,
    images: list[tuple[int, int, int]],
    annotations: list[dict[str, object]],
    categories: list[tuple[int, str]],
) -> None:
    """``root/<split>/COCO_<split>_<id>.jpg`` for ``(id, H, W)`` and
    ``root/annotations/instances_<split>.json`` with the given annotation dicts."""
    records = []
    for image_id, height, width in images:
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        write_jpeg(root / split / file_name, height, width, seed=image_id)
        records.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    for number, annotation in enumerate(annotations, start=1):
        annotation.setdefault("id", number)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", 1.0)
        annotation.setdefault("bbox", [0, 0, 1, 1])
    content = {
        "info": {},
        "licenses": [],
        "images": records,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "x"} for i, n in categories],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def make_fss_tree(root: Path, classes: list[str], shots: int = 3, size: int = 32) -> Path:
    """``root/FSS-1000/<class>/<k>.jpg|png`` for k = 1..shots; mask k of every class
    has a k*4-pixel-high foreground band (0/255, saved as RGB like the originals)."""
    base = root / "FSS-1000"
    for c, name in enumerate(classes):
        for k in range(1, shots + 1):
            write_jpeg(base / name / f"{k}.jpg", size, size, seed=1000 * c + k)
            mask = np.zeros((size, size), dtype=np.uint8)
            mask[: 4 * k, :] = 255
            Image.fromarray(np.stack([mask] * 3, axis=-1)).save(base / name / f"{k}.png")
    return base
