"""Evaluation speed with and without the feature cache, and the projected protocol times.

Setting: the synthetic benchmark rendered at ``--size`` (473 x 473 by default, the PASCAL
evaluation size), HDMNet with the ``--backbone`` (ResNet-50 by default), random weights
(speed does not depend on their values), ``inference_copy`` (the evaluation default),
batch 1, ``--threads`` CPU threads (or ``--device cuda``). For each shot count, in the
same run:

1. the feature cache for the timed episodes is built; its time per image (query image
   or support pair) is ``build_s_per_image``;
2. the same episodes are evaluated uncached and cached, interleaved episode by episode
   (so that load from other processes on a shared machine hits both alike), timing the
   model alone ("model only"); both give the same intersection and union sums, which is
   checked;
3. ``evaluate_episodes`` runs the same episodes uncached and cached end to end (loading,
   forward, scoring at the original size): the episodes/s a user sees. A cached call
   first checks once that the cache holds this model's frozen weights (a hash of them,
   ``check_s``, about 0.4 s for ResNet-50); that is a cost per call (per seed), not per
   episode, so it is timed on its own and taken out of the per-episode time;
4. the 10-seed protocol (end-to-end times): uncached it costs ``seeds x episodes x
   uncached``; cached it costs ``images x build + seeds x check + seeds x episodes x
   cached``, where ``images`` is counted by planning the protocol's episodes on the
   synthetic val set (``--protocol-episodes`` per seed; no features computed). The
   speed-up is their ratio.

Projected wall times of the full protocols on this machine (what ``python -m hdmnet_core
evaluate`` would take), from the measured per-episode and per-image times: PASCAL-5i
4 folds x 1,000 episodes x 10 seeds at 473, COCO-20i 4 folds x 10,000 episodes x 10 seeds
at 633. The cached projection counts every query image and support pair a fold can use at
most once (PASCAL: at most the 1,449 VOC2012 val images as queries and, conservatively,
as many support pairs; COCO: the first 10,000 list images as queries and at most the
40,137 val images as support pairs), so it overestimates the build. COCO times are scaled
from ``--size`` by the pixel count (633^2 / size^2) unless ``--size 633`` is measured, and
its cache size says whether it fits the default budget (16 GB; else evaluate falls back to
the uncached path).

    .venv/bin/python benchmarks/evaluation_speed.py                  # ResNet-50, 473, 1/5-shot
    .venv/bin/python benchmarks/evaluation_speed.py --backbone tiny --size 96 --width 32

Prints a table and writes ``benchmarks/results/evaluation_speed.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hdmnet_core.benchmark import write_benchmark_json  # noqa: E402
from hdmnet_core.benchmark_report import render_evaluation_speed  # noqa: E402
from hdmnet_core.config import Config  # noqa: E402
from hdmnet_core.data.datasets import open_source  # noqa: E402
from hdmnet_core.data.episodes import (  # noqa: E402
    EpisodeDataset,
    build_episode_dataset,
    collate_episodes,
)
from hdmnet_core.data.synthetic import scaled_min_area  # noqa: E402
from hdmnet_core.engine.evaluate import (  # noqa: E402
    CachedEpisodes,
    cached_forward,
    collate_cached,
    evaluate_episodes,
    evaluation_model,
    protocol_seeds,
    score_batch,
)
from hdmnet_core.engine.feature_cache import (  # noqa: E402
    GB,
    FeatureCache,
    build_feature_cache,
    plan_feature_cache,
)
from hdmnet_core.metrics import BaseLearnerMeter, SegmentationMeter  # noqa: E402
from hdmnet_core.model.hdmnet import HDMNet  # noqa: E402

PASCAL = {"folds": 4, "episodes": 1000, "seeds": 10, "size": 473, "val_images": 1449}
COCO = {"folds": 4, "episodes": 10000, "seeds": 10, "size": 633, "val_images": 40137}


def benchmark_config(args: argparse.Namespace, shots: int, root: Path) -> Config:
    return Config.from_profile(
        "pascal-r50",
        **{
            "data.dataset": "synthetic",
            "data.root": str(root),
            "data.shots": shots,
            "data.synthetic_images_train": 20,
            "data.synthetic_images_val": args.synthetic_images,
            "data.synthetic_image_size": args.size,
            "data.eval_size": args.size,
            "data.min_class_area": scaled_min_area(args.size),
            "model.backbone": args.backbone,
            "model.width": args.width,
            "eval.episodes": args.episodes,
        },
    )


def synchronized_clock(device: torch.device) -> float:
    """``time.perf_counter()`` after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed_episodes(
    runner: HDMNet, dataset: EpisodeDataset, cache: FeatureCache, count: int, device: torch.device
) -> tuple[list[float], list[float], bool]:
    """Per-episode seconds uncached and cached (interleaved) and whether the counts agree."""
    classes = list(dataset.index.classes)
    meters = [
        (
            SegmentationMeter(classes),
            SegmentationMeter(classes),
            BaseLearnerMeter(runner.num_base_classes + 1),
        )  # fmt: skip
        for _ in range(2)
    ]
    cached_items = CachedEpisodes(dataset, list(range(count)))
    uncached_s, cached_s = [], []
    with torch.no_grad():
        for i in range(count):
            batch = collate_episodes([dataset[i]])  # loading is not timed (workers do it)
            inputs = [
                batch[k].to(device) for k in ("query_image", "support_images", "support_masks")
            ]
            start = synchronized_clock(device)
            out = runner(*inputs)
            uncached_s.append(synchronized_clock(device) - start)
            score_batch(out, batch, *meters[0])
            light = collate_cached([cached_items[i]])
            start = synchronized_clock(device)
            out = cached_forward(runner, cache, light, device)
            cached_s.append(synchronized_clock(device) - start)
            score_batch(out, light, *meters[1])
    same = all(
        torch.equal(a.state_tensor(), b.state_tensor())
        for a, b in zip(meters[0], meters[1], strict=True)
    )
    return uncached_s, cached_s, same


def protocol_images(
    runner: HDMNet, config: Config, seeds: int, episodes: int, device: torch.device
) -> tuple[int, int, float]:
    """Query images and support pairs of a ``seeds`` x ``episodes`` protocol (planned on
    the synthetic val set) and the cache size in GB."""
    small = config.with_overrides(**{"eval.episodes": episodes})
    source = open_source(small, "val")
    datasets = [
        build_episode_dataset(small, "val", source, seed=s) for s in protocol_seeds(123, seeds)
    ]
    plan = plan_feature_cache(runner, datasets, device=device)
    return len(plan.queries), len(plan.supports), plan.nbytes / GB


def projection(
    protocol: dict[str, int],
    shots: int,
    uncached: float,
    cached: float,
    build: float,
    scale: float,
    bytes_per_image: float,
    check: float,
) -> dict[str, Any]:
    """Projected wall time (hours) of a full protocol, uncached and cached (``check``: the
    cache's frozen-weight check, once per fold and seed)."""
    runs = protocol["folds"] * protocol["seeds"] * protocol["episodes"]
    queries = min(protocol["episodes"], protocol["val_images"])
    pairs = min(protocol["seeds"] * protocol["episodes"] * shots, protocol["val_images"])
    images = protocol["folds"] * (queries + pairs)
    cache_gb = (queries + pairs) * bytes_per_image * scale / GB
    return {
        "episodes_total": runs,
        "uncached_hours": runs * uncached * scale / 3600,
        "cached_hours": (images * build + runs * cached) * scale / 3600
        + protocol["folds"] * protocol["seeds"] * check / 3600,
        "cache_images_per_fold_at_most": queries + pairs,
        "cache_gb_per_fold_at_most": cache_gb,
        "fits_default_budget": cache_gb <= Config().eval.cache_budget_gb,
        "time_scale_from_measured_size": scale,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--episodes", type=int, default=3, help="timed episodes per shot count")
    parser.add_argument("--seeds", type=int, default=10, help="seeds of the projected protocol")
    parser.add_argument("--protocol-episodes", type=int, default=1000)
    parser.add_argument("--synthetic-images", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data-root", default=None, help="default: a temporary folder")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/evaluation_speed.json"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data_root) if args.data_root else Path(scratch) / "data"
        rows = [measure(args, shots, root, Path(scratch)) for shots in args.shots]

    payload = {"setting": vars(args), "results": rows}
    print()
    print(render_evaluation_speed(payload))
    write_benchmark_json(args.out, "evaluation_speed", payload)
    print(f"wrote {args.out}")
    if not all(r["same_counts"] for r in rows):
        print("error: cached and uncached intersection/union sums differ", file=sys.stderr)
        return 1
    return 0


def measure(args: argparse.Namespace, shots: int, root: Path, scratch: Path) -> dict[str, Any]:
    device = torch.device(args.device)
    config = benchmark_config(args, shots, root)
    source = open_source(config, "val")
    dataset = build_episode_dataset(config, "val", source, seed=protocol_seeds()[0])
    torch.manual_seed(0)
    model = HDMNet(config.model, 15, shots).eval()
    runner = evaluation_model(model, device)
    with torch.no_grad():  # warm-up: oneDNN primitives / CUDA kernels, allocator
        batch = collate_episodes([dataset[0]])
        runner(*[batch[k].to(device) for k in ("query_image", "support_images", "support_masks")])
    start = synchronized_clock(device)
    cache = build_feature_cache(runner, [dataset], device=device, folder=scratch / "cache")
    build_seconds = synchronized_clock(device) - start
    assert cache is not None, "the benchmark's small cache must fit"
    images = len(cache.plan.queries) + len(cache.plan.supports)
    bytes_per_image = cache.nbytes / images
    uncached, cached, same = timed_episodes(runner, dataset, cache, args.episodes, device)
    # what a user sees: evaluate_episodes end to end (loading, forward, scoring)
    short = build_episode_dataset(
        config.with_overrides(**{"eval.episodes": args.episodes}), "val", source,
        seed=protocol_seeds()[0],
    )  # fmt: skip
    end_to_end, check = {}, 0.0
    for name, used in (("uncached", None), ("cached", cache)):
        scores = evaluate_episodes(runner, short, device=device, feature_cache=used)
        check = max(check, scores.check_seconds)  # once per evaluate_episodes call
        end_to_end[name] = (scores.seconds - scores.check_seconds) / scores.episodes
    cache.close()
    t_u, t_c = statistics.median(uncached), statistics.median(cached)
    e_u, e_c = end_to_end["uncached"], end_to_end["cached"]
    build = build_seconds / images
    queries, pairs, protocol_gb = protocol_images(
        runner, config, args.seeds, args.protocol_episodes, device
    )
    runs = args.seeds * args.protocol_episodes
    speedup = runs * e_u / ((queries + pairs) * build + args.seeds * check + runs * e_c)
    coco_scale = (COCO["size"] / args.size) ** 2
    print(f"{shots}-shot: uncached {t_u:.3f} s, cached {t_c:.3f} s per episode (model), "
          f"end to end {end_to_end['uncached']:.3f} s / {end_to_end['cached']:.3f} s, build "
          f"{build:.3f} s per image; protocol x{speedup:.1f}; counts equal: {same}")  # fmt: skip
    return {
        "shots": shots,
        "uncached_s": t_u,
        "cached_s": t_c,
        "uncached_all_s": uncached,
        "cached_all_s": cached,
        "build_s_per_image": build,
        "check_s": check,
        "end_to_end_s": end_to_end,
        "same_counts": same,
        "protocol": {
            "seeds": args.seeds,
            "episodes": args.protocol_episodes,
            "query_images": queries,
            "support_pairs": pairs,
            "cache_gb": protocol_gb,
        },  # fmt: skip
        "protocol_speedup": speedup,
        "projected": {
            "pascal": projection(
                PASCAL,
                shots,
                e_u,
                e_c,
                build,
                (PASCAL["size"] / args.size) ** 2,
                bytes_per_image,
                check,
            ),  # fmt: skip
            "coco": projection(COCO, shots, e_u, e_c, build, coco_scale, bytes_per_image, check),
        },
    }


if __name__ == "__main__":
    raise SystemExit(main())
