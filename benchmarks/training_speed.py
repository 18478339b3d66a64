"""Seconds per training step of both stages, per profile, data-loader worker count and precision.

    .venv/bin/python benchmarks/training_speed.py                       # cpu-tiny, 60 steps
    .venv/bin/python benchmarks/training_speed.py --workers 0 1 2 --amp off bf16 --steps 100
    .venv/bin/python benchmarks/training_speed.py --profile pascal-r50 --device cuda --amp bf16

Each setting trains stage 1 and stage 2 for ``--steps`` steps (no validation, no checkpoint)
on the profile's data and prints seconds per step, episodes (images) per second, peak
memory and the projected length of the profile's full course (stage-1 steps x stage-1 time
+ stage-2 steps x stage-2 time, validation excluded).

Next to it, per profile: how fast one data-loader worker makes stage-2 training episodes
(the profile's ``EpisodeDataset`` with its augmentation, ``--loading-items`` episodes in
this process on one thread), and so how many workers keep the training step fed:
``ceil(training episodes/s / loading episodes/s per worker)``.

Writes ``benchmarks/results/training_speed.json``. Measure on a quiet machine: on 2 cores
any other job halves the numbers.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.benchmark import write_benchmark_json
from hdmnet_core.config import PROFILES, Config, parse_overrides
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import build_episode_dataset
from hdmnet_core.engine.train import train_base, train_meta

RESULTS = Path(__file__).resolve().parent / "results" / "training_speed.json"


def peak_memory(run_dir: Path) -> float:
    """Largest ``train/peak_memory_mb`` in a run's ``metrics.csv``."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        values = [row.get("train/peak_memory_mb", "") for row in csv.DictReader(handle)]
    return max(float(v) for v in values if v)  # validation rows leave it empty


def loading_rate(config: Config, items: int) -> float:
    """Stage-2 training episodes per second that one data-loader worker (one process,
    one thread) makes for ``config``."""
    dataset = build_episode_dataset(config, "train", open_source(config, "train"))
    count = min(items, len(dataset))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as inside a DataLoader worker
    try:
        dataset[0]  # first item: file handles, caches
        start = time.perf_counter()
        for i in range(1, count + 1):
            dataset[i % len(dataset)]
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def measure(config: Config, steps: int, work: Path) -> dict[str, Any]:
    quick = config.with_overrides(
        **{
            "train.base_learner_steps": steps,
            "train.base_learner_val_every": steps + 1,
            "train.max_steps": steps,
            "train.val_every": steps + 1,
            "train.selection_split": "none",
            "train.checkpoint_every": 0,
            "train.log_every": max(1, steps // 4),
        }
    )
    start = time.perf_counter()
    base = train_base(quick, work / "base", progress=False)
    base_seconds = (time.perf_counter() - start) / steps
    start = time.perf_counter()
    train_meta(quick, work / "meta", base.last, progress=False)
    meta_seconds = (time.perf_counter() - start) / steps
    t = config.train
    base_steps = t.base_learner_steps or t.base_learner_epochs
    meta_steps = t.max_steps or t.epochs
    return {
        "base_seconds_per_step": base_seconds,
        "meta_seconds_per_step": meta_seconds,
        "base_images_per_second": t.base_learner_batch_size / base_seconds,
        "meta_episodes_per_second": t.batch_size / meta_seconds,
        "base_peak_memory_mb": peak_memory(work / "base"),
        "meta_peak_memory_mb": peak_memory(work / "meta"),
        "projected_course_minutes": (base_steps * base_seconds + meta_steps * meta_seconds) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", nargs="+", default=["cpu-tiny"], choices=sorted(PROFILES), metavar="NAME"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--amp", nargs="+", default=["off"], choices=["off", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--loading-items", type=int, default=40, help="episodes timed for the loading rate"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", "--json", dest="json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    overrides = {**parse_overrides(args.overrides), "train.device": args.device}
    rows = []
    loading: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="training-speed-") as folder:
        for profile in args.profile:
            config = Config.from_profile(profile, **overrides)
            for amp in args.amp:
                for workers in args.workers:
                    setting = config.with_overrides(
                        **{"data.num_workers": workers, "train.amp": amp}
                    )
                    work = Path(folder) / f"{profile}-{amp}-{workers}"
                    result = measure(setting, args.steps, work)
                    rows.append({"profile": profile, "amp": amp, "workers": workers, **result})
                    print(
                        f"{profile}, amp {amp}, workers {workers}: stage 1 "
                        f"{result['base_seconds_per_step']:.3f} s/step, stage 2 "
                        f"{result['meta_seconds_per_step']:.3f} s/step, course "
                        f"{result['projected_course_minutes']:.1f} min + validation",
                        flush=True,
                    )
            loading[profile] = loading_rate(config, args.loading_items)
    for row in rows:
        per_worker = loading[row["profile"]]
        row["loading_episodes_per_second_per_worker"] = per_worker
        row["workers_to_keep_up"] = math.ceil(row["meta_episodes_per_second"] / per_worker)
    print_table(rows)
    payload = {"device": args.device, "steps": args.steps, "rows": rows}
    write_benchmark_json(args.json, "training_speed", payload)
    print(f"wrote {args.json}")


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "\n| profile | amp | workers | stage 1 s/step | stage 2 s/step | episodes/s | peak MB "
        "| course min | loading episodes/s per worker | workers to keep up |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['profile']} | {r['amp']} | {r['workers']} | {r['base_seconds_per_step']:.3f} | "
            f"{r['meta_seconds_per_step']:.3f} | {r['meta_episodes_per_second']:.1f} | "
            f"{max(r['base_peak_memory_mb'], r['meta_peak_memory_mb']):.0f} | "
            f"{r['projected_course_minutes']:.1f} | "
            f"{r['loading_episodes_per_second_per_worker']:.1f} | {r['workers_to_keep_up']} |"
        )


if __name__ == "__main__":
    main()
