"""Seconds per training step of both stages, per data-loader worker count and precision.

    .venv/bin/python benchmarks/training_speed.py                       # cpu-tiny, 60 steps
    .venv/bin/python benchmarks/training_speed.py --workers 0 1 2 --amp off bf16 --steps 100

Each setting trains stage 1 and stage 2 for ``--steps`` steps (no validation, no checkpoint)
on the profile's data and prints seconds per step, episodes (images) per second, peak
memory and the projected length of the profile's full course (stage-1 steps x stage-1 time
+ stage-2 steps x stage-2 time, validation excluded). Writes
``benchmarks/results/training_speed.json``. Measure on a quiet machine: on 2 cores any
other job halves the numbers.
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.atomic import atomic_write_json
from hdmnet_core.config import PROFILES, Config, parse_overrides
from hdmnet_core.engine.train import train_base, train_meta

RESULTS = Path(__file__).resolve().parent / "results" / "training_speed.json"


def peak_memory(run_dir: Path) -> float:
    """Largest ``train/peak_memory_mb`` in a run's ``metrics.csv``."""
    with (run_dir / "metrics.csv").open(newline="") as handle:
        values = [row.get("train/peak_memory_mb", "") for row in csv.DictReader(handle)]
    return max(float(v) for v in values if v)  # validation rows leave it empty


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
    parser.add_argument("--profile", default="cpu-tiny", choices=sorted(PROFILES))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--amp", nargs="+", default=["off"], choices=["off", "bf16", "fp16"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    config = Config.from_profile(args.profile, **parse_overrides(args.overrides))
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-speed-") as folder:
        for amp in args.amp:
            for workers in args.workers:
                setting = config.with_overrides(**{"data.num_workers": workers, "train.amp": amp})
                result = measure(setting, args.steps, Path(folder) / f"{amp}-{workers}")
                rows.append({"amp": amp, "workers": workers, **result})
                print(
                    f"amp {amp}, workers {workers}: stage 1 {result['base_seconds_per_step']:.3f} "
                    f"s/step, stage 2 {result['meta_seconds_per_step']:.3f} s/step, course "
                    f"{result['projected_course_minutes']:.1f} min + validation",
                    flush=True,
                )
    print(
        "\n| amp | workers | stage 1 s/step | stage 2 s/step | episodes/s | peak MB | course min |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['amp']} | {r['workers']} | {r['base_seconds_per_step']:.3f} | "
            f"{r['meta_seconds_per_step']:.3f} | {r['meta_episodes_per_second']:.1f} | "
            f"{max(r['base_peak_memory_mb'], r['meta_peak_memory_mb']):.0f} | "
            f"{r['projected_course_minutes']:.1f} |"
        )
    atomic_write_json(
        args.json,
        {
            "benchmark": "training_speed",
            "profile": args.profile,
            "steps": args.steps,
            "machine": {
                "platform": platform.platform(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },  # fmt: skip
            "rows": rows,
        },
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
