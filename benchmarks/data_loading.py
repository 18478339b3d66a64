"""Episodes per second per worker from a prepared tree (can loading keep a GPU fed?).

    python benchmarks/data_loading.py                      # a made PASCAL-like tree
    python benchmarks/data_loading.py --root data --dataset pascal --split train

Without ``--root``, a PASCAL-format tree of ``--images`` VOC-sized images (500 x 375
JPEGs with smooth content, palette PNG masks) is written to a temporary folder and
prepared with the real ``prepare_pascal``. Three measurements, each in one process
(= one DataLoader worker), ``--episodes`` episodes of ``--shots`` shots:

- ``decode``: load_image + load_mask of the query and its supports (no transform);
- ``train episode``: ``EpisodeDataset`` in training mode (official augmentation, crop
  ``--size``), i.e. what one DataLoader worker produces;
- ``val episode``: ``EpisodeDataset`` in evaluation mode (direct resize to ``--size``).

Each is measured twice: on the prepared tree (``PreparedSource``: JPEG and PNG files)
and on its ``export-hf`` copy (``HFSource``: the same bytes in a memory-mapped Arrow
file), so that sharing data as a Hugging Face dataset is known to keep loading speed
(``--no-hf`` skips the export).

Prints a table and writes ``benchmarks/results/data_loading.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from hdmnet_core.benchmark import write_benchmark_json  # noqa: E402
from hdmnet_core.benchmark_report import render_data_loading  # noqa: E402
from hdmnet_core.data import splits  # noqa: E402
from hdmnet_core.data.episodes import EpisodeDataset  # noqa: E402
from hdmnet_core.data.hf import HFSource, export_hf  # noqa: E402
from hdmnet_core.data.prepared import PreparedSource  # noqa: E402
from hdmnet_core.data.source import SegmentationSource  # noqa: E402
from hdmnet_core.data.transforms import EvalTransform, TrainTransform  # noqa: E402

RESULTS = PROJECT / "benchmarks" / "results" / "data_loading.json"


def make_pascal_like_tree(folder: Path, images: int, seed: int = 0) -> Path:
    """A VOC2012 + SBD tree of ``images`` 375 x 500 images, then ``prepare_pascal`` on it."""
    from hdmnet_core.data.pascal import prepare_pascal

    rng = np.random.default_rng(seed)
    voc = folder / "VOCdevkit" / "VOC2012"
    sbd = folder / "benchmark_RELEASE" / "dataset"
    for sub in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets/Segmentation"):
        sub.mkdir(parents=True, exist_ok=True)
    (sbd / "cls").mkdir(parents=True, exist_ok=True)
    names = [f"2010_{i:06d}" for i in range(images)]
    height, width = 375, 500
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for i, name in enumerate(names):
        phase = rng.uniform(0, 6.28, size=3)
        smooth = 127 + 100 * np.sin(x[..., None] / 37.0 + y[..., None] / 53.0 + phase)
        pixels = np.clip(smooth + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{name}.jpg", quality=90)
        mask = np.zeros((height, width), dtype=np.uint8)
        for class_id in (1 + i % 20, 1 + (i * 7 + 3) % 20):  # two classes, >= 2048 px each
            y0, x0 = rng.integers(0, height - 120), rng.integers(0, width - 160)
            mask[y0 : y0 + 110, x0 : x0 + 150] = class_id
        png = Image.fromarray(mask, mode="P")
        png.putpalette([v for k in range(256) for v in (k, (k * 7) % 256, (k * 13) % 256)])
        png.save(voc / "SegmentationClass" / f"{name}.png")
    half = images // 2
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(names[:half]) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(names[half:]) + "\n")
    (sbd / "train.txt").write_text("\n")
    (sbd / "val.txt").write_text("\n")
    (sbd / "train_noval.txt").write_text(names[0] + "\n")
    prepare_pascal(
        folder / "data", voc=str(voc), sbd=str(sbd), train_set="official", progress=False
    )
    return folder / "data"


def time_decode(source: SegmentationSource, episodes: int, shots: int) -> float:
    """Episodes/s of raw decoding: 1 + shots (image, mask) pairs per episode."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(episodes):
        for i in rng.integers(0, len(source), size=1 + shots):
            source.load_image(int(i))
            source.load_mask(int(i))
    return episodes / (time.perf_counter() - start)


def time_episodes(dataset: EpisodeDataset, episodes: int) -> float:
    count = min(episodes, len(dataset))
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return count / (time.perf_counter() - start)


def time_dataloader(dataset: EpisodeDataset, episodes: int, workers: int) -> float:
    """Total episodes/s through a ``DataLoader`` with ``workers`` processes (batch 4),
    timed from the first batch on (worker start-up excluded)."""
    from torch.utils.data import DataLoader

    from hdmnet_core.data.episodes import collate_episodes

    loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_episodes)
    batches = iter(loader)
    next(batches)  # workers started, first batch ready
    count = 0
    start = time.perf_counter()
    for batch in batches:
        count += len(batch["query_name"])
        if count >= episodes:
            break
    return count / (time.perf_counter() - start)


def fold_of(dataset: str) -> tuple[list[int], list[int]]:
    return splits.base_classes(dataset, 0), splits.novel_classes(dataset, 0)


def episode_sets(
    train: SegmentationSource, val: SegmentationSource, dataset_name: str, args: argparse.Namespace
) -> tuple[EpisodeDataset, EpisodeDataset]:
    base, novel = fold_of(dataset_name)
    train_set = EpisodeDataset(
        train, base, args.shots, "train", TrainTransform(args.size), small_classes="skip"
    )
    val_set = EpisodeDataset(
        val, novel, args.shots, "val", EvalTransform(args.size),
        episodes=args.episodes, small_classes="skip",
    )  # fmt: skip
    return train_set, val_set


def measure(
    sources: dict[str, tuple[SegmentationSource, SegmentationSource]],
    dataset_name: str,
    args: argparse.Namespace,
) -> dict[str, float]:
    """Episodes/s of each measurement, the sources interleaved (one measurement for
    every source before the next one), so that a busy moment hits them alike."""
    sets = {kind: episode_sets(*pair, dataset_name, args) for kind, pair in sources.items()}
    timings: dict[str, Callable[[str], float]] = {
        "decode": lambda kind: time_decode(sources[kind][0], args.episodes, args.shots),
        "train episode": lambda kind: time_episodes(sets[kind][0], args.episodes),
        "val episode": lambda kind: time_episodes(sets[kind][1], args.episodes),
    }
    if args.workers > 0:  # total, not per worker: shows a source works inside workers
        timings[f"train, DataLoader {args.workers} workers (total)"] = lambda kind: time_dataloader(
            sets[kind][0], args.episodes, args.workers
        )
    rows = {}
    for name, timing in timings.items():
        for kind in sources:
            rows[f"{kind}: {name}"] = timing(kind)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # one DataLoader worker = one core
    with tempfile.TemporaryDirectory() as tmp:
        if args.root is None:
            start = time.perf_counter()
            root = make_pascal_like_tree(Path(tmp), args.images)
            seconds = time.perf_counter() - start
            made = f"made PASCAL-like tree, {args.images} images 375x500 ({seconds:.1f} s)"
            dataset_name, train_split, val_split = "pascal", "train", "val"
        else:
            root, made = Path(args.root), f"prepared tree {args.root}"
            dataset_name, train_split, val_split = args.dataset, args.split, "val"
        sources: dict[str, tuple[SegmentationSource, SegmentationSource]] = {
            "prepared tree": (
                PreparedSource(root, dataset_name, train_split),
                PreparedSource(root, dataset_name, val_split),
            )
        }
        if args.hf:
            start = time.perf_counter()
            exported = export_hf(dataset_name, root, Path(tmp) / "hf", progress=False)
            made += f"; export-hf copy ({time.perf_counter() - start:.1f} s)"
            sources["export-hf"] = (
                HFSource(exported, train_split, dataset_name),
                HFSource(exported, val_split, dataset_name),
            )
        rows = measure(sources, dataset_name, args)
    return {
        "data": made,
        "shots": args.shots,
        "size": args.size,
        "workers": args.workers,
        "episodes": args.episodes,
        "episodes_per_second_per_worker": {k: round(v, 1) for k, v in rows.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", help="data root with a prepared dataset (default: make one)")
    parser.add_argument("--dataset", default="pascal", choices=("pascal", "coco"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=120, help="images in the made tree")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader row (0: skip)")
    parser.add_argument(
        "--no-hf", dest="hf", action="store_false", help="skip the export-hf measurements"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args)
    print(render_data_loading(result))
    write_benchmark_json(args.out, "data_loading", result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
