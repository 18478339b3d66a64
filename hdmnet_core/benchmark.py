"""``python -m hdmnet_core benchmark``: run the benchmark set in ``benchmarks/``.

Every script of the set runs as its own process (``python benchmarks/<name>.py``), in
the order of :data:`BENCHMARKS`; each prints its table and writes
``<out>/<name>.json`` atomically, with the facts of the machine it ran on
(:func:`machine_facts`, written by :func:`write_benchmark_json`). ``--quick`` runs every
script at tiny sizes with few repeats (a couple of minutes on two CPU cores: checks that
the set works, not numbers to quote) into ``benchmarks/results/quick/``;
``benchmarks/report.py`` turns the JSON of a full run (``benchmarks/results/``) into the
"Performance" section of ``docs/benchmarks.md`` and the README's short table.

    python -m hdmnet_core benchmark --quick                    # the whole set, tiny sizes
    python -m hdmnet_core benchmark --only model_size evaluation_speed
    python -m hdmnet_core benchmark --device cuda              # GPU timings where a script has them
    python -m hdmnet_core benchmark --only official_side_by_side --official ~/src/HDMNet

This module imports nothing heavy at import time (the CLI's ``--help`` stays fast); torch
is imported when a benchmark runs or machine facts are read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hdmnet_core.atomic import atomic_write_json
from hdmnet_core.errors import UserError

PROJECT = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = PROJECT / "benchmarks"
RESULTS_DIR = BENCHMARKS_DIR / "results"
QUICK_RESULTS_DIR = RESULTS_DIR / "quick"

QUICK_SYNTHETIC = (
    "data.synthetic_images_train=200",
    "data.synthetic_images_val=60",
    "data.synthetic_image_size=64",
    "data.train_size=64",
    "data.eval_size=64",
    "data.min_class_area=40",
    "train.batch_size=4",
    "train.base_learner_batch_size=4",
    "train.base_learner_crop=64",
)
"""``--set`` values of the quick training run: the cpu-tiny model on a 64-px synthetic set."""


COURSE_IS_LONG = (
    "it trains the whole cpu-tiny course (about 20 min per fold and shot count on 2 cores, "
    "hours for its 4 folds x 2 shot counts); --only cpu_tiny_course runs it"
)
SCRATCH = "{scratch}"
"""In a script's arguments: ``<out>/scratch``, a data root of the quick runs' own (the
profile's ``data/`` tree is never regenerated at the quick sizes)."""


class BenchmarkError(UserError):
    """A benchmark request that cannot run (unknown name, no CUDA device, no checkout)."""


@dataclass(frozen=True)
class Benchmark:
    """One script of the set and how the CLI runs it."""

    name: str
    """``benchmarks/<name>.py``; also the JSON file's name."""
    what: str
    full: tuple[str, ...]
    """Arguments of a full run (the script's defaults unless listed)."""
    quick: tuple[str, ...] | None
    """Arguments of a ``--quick`` run; None: not part of the quick set (see ``skip_quick``)."""
    cuda: bool = False
    """The script takes ``--device cuda``; the others measure CPU work only."""
    skip_quick: str = ""
    """Why the script is left out of ``--quick``."""
    needs_official: bool = False
    """Runs only when ``--official PATH`` names a checkout of the authors' code."""

    @property
    def script(self) -> Path:
        return BENCHMARKS_DIR / f"{self.name}.py"


def words(*parts: str) -> tuple[str, ...]:
    """Command-line words of space-separated ``parts`` (no quoting needed here)."""
    return tuple(word for part in parts for word in part.split())


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "model_size",
        "Table 4 twin: S1-S4 parameters, FLOPs and meta-part latency beside the paper",
        full=(),
        quick=words("--sizes 96 --latency-size 96 --repeats 1 --threads 1"),
        cuda=True,
    ),
    Benchmark(
        "model_speed",
        "whole-model evaluation forward, each optimisation side by side, fp32 and bf16",
        full=(),
        quick=words("--backbone tiny --size 48 --shots 1 --repeats 1"),
        cuda=True,
    ),
    Benchmark(
        "evaluation_speed",
        "episodes/s with and without the feature cache; projected PASCAL and COCO protocols",
        full=(),
        quick=words(
            "--backbone tiny --size 48 --width 16 --shots 1 --episodes 2 --seeds 2 "
            "--protocol-episodes 10 --synthetic-images 40 --threads 1"
        ),
        cuda=True,
    ),
    Benchmark(
        "training_speed",
        "seconds per training step, peak memory, loading episodes/s per worker",
        full=words("--amp off bf16"),
        quick=words(
            f"--steps 2 --workers 0 --amp off --loading-items 4 --set data.root={SCRATCH}",
            *(f"--set {setting}" for setting in QUICK_SYNTHETIC),
        ),
        cuda=True,
    ),
    Benchmark(
        "data_loading",
        "episodes/s per worker from a PASCAL-format tree (can loading keep a GPU fed?)",
        full=(),
        quick=words("--images 60 --episodes 6 --size 96 --workers 0 --no-hf"),
    ),
    Benchmark(
        "synthetic_baselines",
        "training-free baselines per fold on the synthetic benchmark",
        full=(),
        quick=words(
            f"--folds 0 --episodes 16 --base-episodes 16 --size 64 --root {SCRATCH}",
            "--set data.synthetic_images_train=200 --set data.synthetic_images_val=60",
        ),
    ),
    Benchmark(
        "cpu_tiny_course",
        "the cpu-tiny course (both stages, 5-seed evaluation) beside the baselines",
        full=(),
        quick=None,
        skip_quick=COURSE_IS_LONG,
    ),
    Benchmark(
        "official_side_by_side",
        "the authors' code beside this package: same outputs, timings",
        full=(),
        quick=words("--shots 1 --check-size 64 --size 96 --repeats 1"),
        needs_official=True,
    ),
)
"""The benchmark set, in the order it runs."""

BY_NAME = {b.name: b for b in BENCHMARKS}


# ----------------------------------------------------------------- machine facts
def cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name : value`` line of ``/proc/cpuinfo``; None where there
    is no such file or line (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_instruction_set() -> dict[str, Any]:
    """The vector instructions torch's CPU kernels use (``AVX2``, ``AVX512``, ...) and
    whether the CPU does bf16 arithmetic natively: without ``avx512_bf16``/``amx_bf16`` the
    bf16 rows run emulated and can be many times slower than fp32 on the same machine."""
    import torch

    flags = set((cpuinfo_field("flags") or "").split())
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None,
    }


def usable_cores() -> int:
    """Cores this process may run on (its affinity), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_facts() -> dict[str, Any]:
    """What a benchmark number depends on: CPU, cores, torch threads, versions, GPU,
    date and the load average at this moment (others' jobs and the benchmark's own)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_instructions": cpu_instruction_set(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def write_benchmark_json(path: str | os.PathLike[str], benchmark: str, payload: Any) -> Path:
    """Write one benchmark's results atomically: ``{"benchmark", "command", "machine",
    **payload}``; the machine facts are read now (after the measurements: the load
    average covers them)."""
    record = {
        "benchmark": benchmark,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine_facts(),
        **payload,
    }
    return atomic_write_json(path, record)


# ------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Outcome:
    name: str
    status: str
    """``ok``, ``failed (exit N)``, ``no JSON`` or ``skipped``."""
    seconds: float
    detail: str
    """The JSON path, or why it was skipped or failed."""


def selected(only: Sequence[str] | None) -> list[Benchmark]:
    """The benchmarks named by ``--only`` (in the set's order), or all of them."""
    if not only:
        return list(BENCHMARKS)
    unknown = [name for name in only if name not in BY_NAME]
    if unknown:
        raise BenchmarkError(
            f"--only: unknown benchmark {', '.join(map(repr, unknown))}; "
            f"the set is: {', '.join(BY_NAME)}"
        )
    return [b for b in BENCHMARKS if b.name in only]


def check_device(device: str) -> None:
    """``cuda`` needs a CUDA device here."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise BenchmarkError(
            "--device cuda: no CUDA device is available on this machine "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
            "run with --device cpu"
        )


def command_for(
    benchmark: Benchmark, *, quick: bool, device: str, out: Path, official: Path | None
) -> list[str]:
    """The script's command line for this run."""
    arguments = benchmark.quick if quick and benchmark.quick is not None else benchmark.full
    scratch = str(out.parent / "scratch")
    arguments = tuple(word.replace(SCRATCH, scratch) for word in arguments)
    command = [sys.executable, str(benchmark.script), *arguments, "--out", str(out)]
    if benchmark.cuda:
        command += ["--device", device]
    if benchmark.needs_official and official is not None:
        command += ["--official-root", str(official)]
        if official_needs_stand_ins():
            command.append("--stand-ins")
    return command


def official_needs_stand_ins() -> bool:
    """The official code imports mmcv and mmseg; without them the minimal stand-ins in
    ``benchmarks/official_stand_ins`` are used."""
    import importlib.util

    return any(importlib.util.find_spec(name) is None for name in ("mmcv", "mmseg"))


def skip_reason(
    benchmark: Benchmark, *, quick: bool, only: Sequence[str] | None, official: Path | None
) -> str:
    """Why ``benchmark`` does not run in this invocation ("" when it runs)."""
    if benchmark.needs_official and official is None:
        return (
            "needs a checkout of the authors' code (GitHub Pbihao/HDMNet plus BAM's "
            "resnet.py/vgg.py/PPM.py): pass --official PATH"
        )
    if quick and benchmark.quick is None:
        return f"not in --quick: {benchmark.skip_quick}"
    if benchmark.name == "cpu_tiny_course" and not only:
        return f"not in the default set: {COURSE_IS_LONG}"
    return ""


def run_one(command: list[str], out: Path, name: str) -> Outcome:
    """Run one script (its output goes to this terminal) and check the JSON it wrote."""
    previous = out.stat().st_mtime_ns if out.exists() else None
    start = time.perf_counter()
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    completed = subprocess.run(command, cwd=PROJECT, check=False)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        return Outcome(name, f"failed (exit {completed.returncode})", seconds, "see its output")
    if not out.exists() or out.stat().st_mtime_ns == previous:
        return Outcome(name, "no JSON", seconds, f"{out} was not written")
    record = json.loads(out.read_text())
    if "machine" not in record:
        return Outcome(name, "no JSON", seconds, f"{out} has no machine facts")
    return Outcome(name, "ok", seconds, str(out))


def run_set(
    benchmarks: Sequence[Benchmark],
    *,
    quick: bool,
    device: str,
    out_dir: Path,
    only: Sequence[str] | None,
    official: Path | None,
) -> list[Outcome]:
    outcomes = []
    for benchmark in benchmarks:
        reason = skip_reason(benchmark, quick=quick, only=only, official=official)
        if reason:
            print(f"\n=== {benchmark.name}: skipped: {reason}", flush=True)
            outcomes.append(Outcome(benchmark.name, "skipped", 0.0, reason))
            continue
        out = out_dir / f"{benchmark.name}.json"
        command = command_for(benchmark, quick=quick, device=device, out=out, official=official)
        outcomes.append(run_one(command, out, benchmark.name))
    return outcomes


def print_summary(outcomes: Sequence[Outcome], device: str) -> None:
    print(f"\n| benchmark | status | seconds | JSON / note |  (device {device})")
    print("|---|---|---|---|")
    for o in outcomes:
        print(f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.detail} |")
    if device == "cuda":
        cpu_only = [b.name for b in BENCHMARKS if not b.cuda and not b.needs_official]
        print(f"CPU-only benchmarks (their work is CPU work): {', '.join(cpu_only)}")


def default_out_dir(*, quick: bool, device: str) -> Path:
    """``results/`` (CPU), ``results/cuda/`` (GPU; the report's ``NAME:cuda`` tables) or
    ``results/quick/`` (not for the documents)."""
    if quick:
        return QUICK_RESULTS_DIR
    return RESULTS_DIR / "cuda" if device == "cuda" else RESULTS_DIR


def _main(args: argparse.Namespace) -> int:
    benchmarks = selected(args.only)
    check_device(args.device)
    official = args.official.expanduser() if args.official is not None else None
    if official is not None and not official.is_dir():
        raise BenchmarkError(f"--official {official}: no such folder (a checkout of Pbihao/HDMNet)")
    out_dir = args.out or default_out_dir(quick=args.quick, device=args.device)
    outcomes = run_set(
        benchmarks,
        quick=args.quick,
        device=args.device,
        out_dir=out_dir,
        only=args.only,
        official=official,
    )
    print_summary(outcomes, args.device)
    if not args.quick and out_dir in (RESULTS_DIR, RESULTS_DIR / "cuda"):
        print(
            "docs: .venv/bin/python benchmarks/report.py rewrites the generated tables of "
            "docs/benchmarks.md and README.md from these JSON files"
        )
    failed = [o for o in outcomes if o.status not in ("ok", "skipped")]
    return 1 if failed else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "benchmark",
        help="run the benchmarks in benchmarks/ (tables and JSON with the machine's facts)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, few repeats: checks the set runs"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", help=f"run only these of: {', '.join(BY_NAME)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the JSON files (default: benchmarks/results/, with --device cuda "
        "benchmarks/results/cuda/, with --quick benchmarks/results/quick/)",
    )
    parser.add_argument(
        "--official",
        type=Path,
        default=None,
        metavar="PATH",
        help="checkout of the authors' code: also runs official_side_by_side",
    )
    parser.set_defaults(func=_main)
