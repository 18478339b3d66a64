"""Does the CPU default really learn? Trained HDMNet vs the training-free baselines.

For each fold and shot count: the reproduction chain of the ``cpu-tiny`` profile (stage 1,
stage 2, the official multi-seed evaluation; :mod:`hdmnet_core.engine.pipeline`), and the
two training-free baselines (thresholds chosen on base-class episodes of the train split)
scored on exactly the same evaluation episodes (the protocol's seeds). Prints one table
and writes ``benchmarks/results/cpu_tiny_course.json``; the README's table comes from it.

    .venv/bin/python benchmarks/cpu_tiny_course.py                     # folds 0-3, 1 and 5 shots
    .venv/bin/python benchmarks/cpu_tiny_course.py --folds 0 --shots 1 --out-dir runs/course

Training length is set in steps (the profile), not seconds; the table reports the wall time
each stage took on this machine. Finished stages in ``--out-dir`` are reused.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.benchmark import write_benchmark_json
from hdmnet_core.config import Config, parse_overrides
from hdmnet_core.course import baseline_scores
from hdmnet_core.engine.pipeline import run_fold

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_tiny_course.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--out-dir", type=Path, default=Path("runs") / "cpu-tiny-course")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--out", "--json", dest="json", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = Config.from_profile("cpu-tiny", **parse_overrides(args.overrides))
    rows: list[dict[str, Any]] = []
    for fold in args.folds:
        for shots in args.shots:
            start = time.perf_counter()
            result = run_fold(config, args.out_dir, fold, shots, progress=False)
            cell = config.with_overrides(**{"data.fold": fold, "data.shots": shots})
            baselines = baseline_scores(cell)
            base_summary = args.out_dir / f"fold{fold}" / "base" / "summary.json"
            meta_summary = (
                args.out_dir / "official" / f"fold{fold}" / f"meta-{shots}shot" / "summary.json"
            )
            row = {
                "fold": fold,
                "shots": shots,
                "final_miou": result.miou("final"),
                "meta_miou": result.miou("meta"),
                "base_class_miou": result.evaluation["summary"]["base"]["miou"]["mean"],
                "baselines": baselines,
                "base_train_seconds": json.loads(base_summary.read_text())["seconds"],
                "meta_train_seconds": json.loads(meta_summary.read_text())["seconds"],
                "wall_seconds_this_cell": time.perf_counter() - start,
            }
            rows.append(row)
            best_baseline = max(b["mean"] for b in baselines.values())
            print(
                f"fold {fold} {shots}-shot: final {100 * row['final_miou']['mean']:.1f} "
                f"± {100 * row['final_miou']['std']:.1f}, meta {100 * row['meta_miou']['mean']:.1f}, "
                f"best baseline {100 * best_baseline:.1f}; stage 1 {row['base_train_seconds']:.0f} s, "
                f"stage 2 {row['meta_train_seconds']:.0f} s",
                flush=True,
            )
    print("\n| fold | shots | prior | prototype | HDMNet final (mean ± std) | meta | stage 1 + 2 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["baselines"]
        print(
            f"| {r['fold']} | {r['shots']} | {100 * b['prior']['mean']:.1f} | "
            f"{100 * b['prototype']['mean']:.1f} | {100 * r['final_miou']['mean']:.1f} ± "
            f"{100 * r['final_miou']['std']:.1f} | {100 * r['meta_miou']['mean']:.1f} | "
            f"{(r['base_train_seconds'] + r['meta_train_seconds']) / 60:.1f} min |"
        )
    write_benchmark_json(args.json, "cpu_tiny_course", {"config": config.to_dict(), "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
