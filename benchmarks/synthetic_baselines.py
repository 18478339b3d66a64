"""How hard is the synthetic benchmark? Training-free baselines per fold.

For each fold: choose each baseline's threshold on base-class episodes of the train
split (images with novel pixels filtered out, as in training), then score novel-class
episodes of the val split (class-wise mIoU and FB-IoU, percent). A trained HDMNet must
beat these; the benchmark leaves headroom when they stay well below 80.

    .venv/bin/python benchmarks/synthetic_baselines.py            # 4 folds, 300 episodes
    .venv/bin/python benchmarks/synthetic_baselines.py --folds 0 --episodes 100

Prints one table per fold and writes ``benchmarks/results/synthetic_baselines.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from hdmnet_core.baselines import (
    DEFAULT_GRID,
    BaselineName,
    best_threshold,
    evaluate_baseline,
    make_scores_fn,
    threshold_curve,
)
from hdmnet_core.benchmark import write_benchmark_json
from hdmnet_core.config import Config, parse_overrides
from hdmnet_core.data.episodes import EpisodeDataset, collate_episodes
from hdmnet_core.data.splits import base_classes, novel_classes
from hdmnet_core.data.synthetic import SyntheticSource, ensure_synthetic, scaled_min_area
from hdmnet_core.data.transforms import EvalTransform

RESULTS = Path(__file__).resolve().parent / "results" / "synthetic_baselines.json"
METHODS: tuple[BaselineName, ...] = ("prior", "prototype")


def episode_batches(
    source: SyntheticSource,
    classes: list[int],
    *,
    shots: int,
    episodes: int,
    seed: int,
    size: int,
    filter_intersection: bool,
    batch_size: int = 8,
) -> list[dict[str, Any]]:
    """A fixed list of collated episode batches (reused by every method and threshold)."""
    dataset = EpisodeDataset(
        source,
        classes,
        shots,
        "val",
        EvalTransform(size),
        seed=seed,
        episodes=episodes,
        min_class_area=scaled_min_area(size),
        filter_intersection=filter_intersection,
    )
    return list(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_episodes))


def run_fold(fold: int, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    base, novel = base_classes("synthetic", fold), novel_classes("synthetic", fold)
    common = {"shots": args.shots, "seed": args.seed, "size": args.size}
    base_batches = episode_batches(
        SyntheticSource(tree, "train"),
        base,
        episodes=args.base_episodes,
        filter_intersection=True,
        **common,
    )
    novel_batches = episode_batches(
        SyntheticSource(tree, "val"),
        novel,
        episodes=args.episodes,
        filter_intersection=False,
        **common,
    )
    rows: dict[str, Any] = {}
    for method in METHODS:
        start = time.perf_counter()
        scores_fn = make_scores_fn(method)
        curve = threshold_curve(scores_fn, base_batches, DEFAULT_GRID)
        threshold = best_threshold(curve)
        result = evaluate_baseline(scores_fn, novel_batches, threshold, novel)
        rows[method] = {
            "threshold": threshold,
            "base_miou": 100 * curve[threshold],
            "novel_miou": 100 * result["miou"],
            "novel_fbiou": 100 * result["fbiou"],
            "per_class_iou": {str(c): 100 * v for c, v in result["per_class_iou"].items()},
            "seconds": time.perf_counter() - start,
        }
    # Chance reference: every query pixel called foreground.
    everything = evaluate_baseline(make_scores_fn("prototype"), novel_batches, -2.0, novel)
    rows["all-foreground"] = {
        "threshold": None,
        "base_miou": None,
        "novel_miou": 100 * everything["miou"],
        "novel_fbiou": 100 * everything["fbiou"],
        "per_class_iou": {str(c): 100 * v for c, v in everything["per_class_iou"].items()},
        "seconds": 0.0,
    }
    return rows


def print_fold(fold: int, rows: dict[str, Any]) -> None:
    novel = novel_classes("synthetic", fold)
    header = f"{'method':<15} {'thr':>6} {'base':>6} {'novel':>6} {'FB-IoU':>7}  " + " ".join(
        f"{c:>5}" for c in novel
    )
    print(f"\nfold {fold} (novel classes {novel[0]}..{novel[-1]}; mIoU %, 1 decimal)")
    print(header)
    for method, row in rows.items():
        thr = "-" if row["threshold"] is None else f"{row['threshold']:.3f}"
        base = "-" if row["base_miou"] is None else f"{row['base_miou']:.1f}"
        per_class = " ".join(f"{row['per_class_iou'][str(c)]:>5.1f}" for c in novel)
        print(
            f"{method:<15} {thr:>6} {base:>6} {row['novel_miou']:>6.1f} {row['novel_fbiou']:>7.1f}  {per_class}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help="data root (default: the cpu-tiny profile's)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--episodes", type=int, default=300, help="novel episodes per fold")
    parser.add_argument(
        "--base-episodes", type=int, default=200, help="base episodes for the threshold"
    )
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a busy 2-core machine)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="K=V",
        help="cpu-tiny setting, e.g. data.synthetic_images_train=200",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    overrides = {"data.synthetic_image_size": args.size, **parse_overrides(args.overrides)}
    config = Config.from_profile("cpu-tiny", **overrides)
    root = args.root if args.root is not None else config.data.root
    tree = ensure_synthetic(root, config.data, progress=True)
    results: dict[str, Any] = {
        "settings": {
            "folds": args.folds,
            "episodes": args.episodes,
            "base_episodes": args.base_episodes,
            "shots": args.shots,
            "image_size": args.size,
            "seed": args.seed,
            "min_class_area": scaled_min_area(args.size),
            "synthetic_seed": config.data.synthetic_seed,
            "synthetic_images": [
                config.data.synthetic_images_train,
                config.data.synthetic_images_val,
            ],
            "threshold_grid": [DEFAULT_GRID[0], DEFAULT_GRID[-1], len(DEFAULT_GRID)],
            "features": "FixedFeatures() (colour + Gabor energy filter bank, stride 2)",
        },
        "folds": {},
    }
    for fold in args.folds:
        rows = run_fold(fold, tree, args)
        results["folds"][str(fold)] = rows
        print_fold(fold, rows)
    means = {
        method: sum(results["folds"][str(f)][method]["novel_miou"] for f in args.folds)
        / len(args.folds)
        for method in (*METHODS, "all-foreground")
    }
    results["mean_novel_miou"] = means
    print("\nmean novel mIoU over folds " + ", ".join(f"{m} {v:.1f}" for m, v in means.items()))
    write_benchmark_json(args.out, "synthetic_baselines", results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
