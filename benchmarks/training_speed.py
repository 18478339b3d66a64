"""Seconds per training step of both stages, per profile, data-loader worker count and precision.

    .venv/bin/python benchmarks/training_speed.py                       # cpu-tiny, 60 steps
    .venv/bin/python benchmarks/training_speed.py --workers 0 1 2 --amp off bf16 --steps 100
    .venv/bin/python benchmarks/training_speed.py --profile pascal-r50 --device cuda --amp bf16 \
        --compile off on --base-steps 30 --steps 150     # what benchmarks/gpu_check.sh runs

Each setting (precision x ``torch.compile`` x worker count) trains stage 1 for
``--base-steps`` and stage 2 for ``--steps`` steps (no validation, no checkpoint; seconds
per step from the logged rates after the first window, so start-up and compilation are
excluded) on the profile's data and prints seconds per step, episodes (images) per second,
peak memory, the stage-2 loss of the first and the last logged window (does it fall?) and
the projected length of the profile's full course (stage-1 steps x stage-1 time + stage-2
steps x stage-2 time, validation excluded).

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
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.benchmark import write_benchmark_json
from hdmnet_core.benchmark_report import render_training_speed
from hdmnet_core.config import Config, parse_overrides, profile_argument
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import build_episode_dataset
from hdmnet_core.engine.train import train_base, train_meta

RESULTS = Path(__file__).resolve().parent / "results" / "training_speed.json"


def logged(run_dir: Path, column: str) -> list[float]:
    """The values of ``train/<column>`` in a run's ``metrics.csv`` (validation rows leave
    it empty)."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        values = [row.get(f"train/{column}", "") for row in csv.DictReader(handle)]
    return [float(v) for v in values if v]


def steady_seconds_per_step(run_dir: Path, items: str, batch: int) -> float:
    """Seconds per step once training runs: the median of the logged rate windows after
    the first one (which holds the start-up: workers, first oneDNN primitives); the final
    validation and checkpoint come after the last window and are not counted."""
    rates = logged(run_dir, f"{items}_per_s")
    steady = rates[1:] or rates
    return batch / statistics.median(steady)


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


def measure(config: Config, steps: int, base_steps: int, work: Path) -> dict[str, Any]:
    quick = config.with_overrides(
        **{
            "train.base_learner_steps": base_steps,
            "train.base_learner_val_every": base_steps + 1,
            "train.max_steps": steps,
            "train.val_every": steps + 1,
            "train.selection_split": "none",
            "train.checkpoint_every": 0,
            "train.log_every": max(1, steps // 5),  # 5 rate windows, the first one start-up
        }
    )
    t = config.train
    start = time.perf_counter()
    base = train_base(quick, work / "base", progress=False)
    base_wall = (time.perf_counter() - start) / base_steps
    start = time.perf_counter()
    train_meta(quick, work / "meta", base.last, progress=False)
    meta_wall = (time.perf_counter() - start) / steps
    base_seconds = steady_seconds_per_step(work / "base", "images", t.base_learner_batch_size)
    meta_seconds = steady_seconds_per_step(work / "meta", "episodes", t.batch_size)
    meta_loss = logged(work / "meta", "total")
    return {
        "base_seconds_per_step": base_seconds,
        "meta_seconds_per_step": meta_seconds,
        "base_wall_seconds_per_step": base_wall,
        "meta_wall_seconds_per_step": meta_wall,
        "base_images_per_second": t.base_learner_batch_size / base_seconds,
        "meta_episodes_per_second": t.batch_size / meta_seconds,
        "base_peak_memory_mb": max(logged(work / "base", "peak_memory_mb")),
        "meta_peak_memory_mb": max(logged(work / "meta", "peak_memory_mb")),
        "meta_loss_first_window": meta_loss[0],
        "meta_loss_last_window": meta_loss[-1],
        "projected_course_minutes": projected_course_minutes(config, base_seconds, meta_seconds),
    }


def projected_course_minutes(
    config: Config, base_seconds: float, meta_seconds: float
) -> float | None:
    """The profile's two stages at these step times; ``None`` for a profile whose stages are
    set in epochs (full-size ones): their length is the real dataset's, not the data timed."""
    t = config.train
    if not (t.base_learner_steps and t.max_steps):
        return None
    return (t.base_learner_steps * base_seconds + t.max_steps * meta_seconds) / 60


def course_text(minutes: float | None) -> str:
    return "set in epochs" if minutes is None else f"{minutes:.1f} min + validation"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--profile", nargs="+", default=["cpu-tiny"], type=profile_argument, metavar="NAME"
    )
    parser.add_argument("--steps", type=int, default=60, help="stage-2 steps per setting")
    parser.add_argument(
        "--base-steps", type=int, default=None, help="stage-1 steps per setting (default: --steps)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--amp", nargs="+", default=["off"], choices=["off", "bf16", "fp16"])
    parser.add_argument(
        "--compile", nargs="+", default=["off"], choices=["off", "on"], help="torch.compile"
    )
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
    base_steps = args.base_steps or args.steps
    rows = []
    loading: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="training-speed-") as folder:
        for profile in args.profile:
            config = Config.from_profile(profile, **overrides)
            for amp, compiled, workers in itertools.product(args.amp, args.compile, args.workers):
                setting = config.with_overrides(
                    **{
                        "data.num_workers": workers,
                        "train.amp": amp,
                        "train.compile": compiled == "on",
                    }
                )
                work = Path(folder) / f"{profile}-{amp}-{compiled}-{workers}"
                result = measure(setting, args.steps, base_steps, work)
                rows.append(
                    {
                        "profile": profile,
                        "amp": amp,
                        "compile": compiled == "on",
                        "workers": workers,
                        **result,
                    }
                )
                print(
                    f"{profile}, amp {amp}, compile {compiled}, workers {workers}: stage 1 "
                    f"{result['base_seconds_per_step']:.3f} s/step, stage 2 "
                    f"{result['meta_seconds_per_step']:.3f} s/step (loss "
                    f"{result['meta_loss_first_window']:.3f} -> "
                    f"{result['meta_loss_last_window']:.3f}), course "
                    f"{course_text(result['projected_course_minutes'])}",
                    flush=True,
                )
            loading[profile] = loading_rate(config, args.loading_items)
    for row in rows:
        per_worker = loading[row["profile"]]
        row["loading_episodes_per_second_per_worker"] = per_worker
        row["workers_to_keep_up"] = math.ceil(row["meta_episodes_per_second"] / per_worker)
    payload = {"device": args.device, "steps": args.steps, "base_steps": base_steps, "rows": rows}
    print()
    print(render_training_speed(payload))
    write_benchmark_json(args.json, "training_speed", payload)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
