"""Table 4 twin: parameters, FLOPs and meta-part latency of HDMNet S1..S4 beside the paper.

Paper Table 4 varies the depth of the decoupled hierarchy (``model.num_stages`` 1..4,
official 3) on COCO-20i. For each depth this script counts parameters (total, trainable,
per part) and FLOPs of one evaluation forward (batch 1, 1-shot by default) with
``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only, no memory,
no weights, a few seconds), then times the meta part (hierarchy + matching + decoder,
``HDMNet.meta_learner``: what the paper's latency column varies) at
``--latency-size`` (473) with random weights, median of ``--repeats`` after one warm-up:
fp32 on the CPU, and fp32 and bf16 autocast with ``--device cuda``. The meta part's
inputs (frozen features, priors, merged features) are computed once, by the S1 model,
and fed to every depth (their shapes do not depend on the depth).

FLOPs here are 2 x multiply-accumulates of every conv, linear and matmul, attention's
matmuls included. The official code measured with ``thop``, which counts MACs of
modules only (not functional matmuls): compare orders of magnitude, not digits. The
paper's latencies were measured on a GPU.

    .venv/bin/python benchmarks/model_size.py                 # 473 and 633, 1-shot, CPU
    .venv/bin/python benchmarks/model_size.py --sizes 473 --shots 5 --latency-size 0
    .venv/bin/python benchmarks/model_size.py --device cuda   # latency fp32 and bf16 on the GPU

Prints a table and writes ``benchmarks/results/model_size.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from pathlib import Path
from typing import Any, cast

import torch
from model_speed import make_episode, meta_part_inputs, time_call  # benchmarks/model_speed.py
from torch.utils.flop_counter import FlopCounterMode

from hdmnet_core.benchmark import write_benchmark_json
from hdmnet_core.config import BackboneName, ModelConfig
from hdmnet_core.model.hdmnet import HDMNet

RESULTS = Path(__file__).resolve().parent / "results" / "model_size.json"

PAPER_TABLE4: dict[int, dict[str, float]] = {
    1: {"miou": 47.1, "params_M": 1.3, "ms": 15.1, "gflops": 8.8},
    2: {"miou": 48.8, "params_M": 2.1, "ms": 21.1, "gflops": 10.2},
    3: {"miou": 50.0, "params_M": 2.8, "ms": 27.4, "gflops": 10.6},
    4: {"miou": 48.6, "params_M": 3.6, "ms": 38.0, "gflops": 10.6},
}
"""Reference §7 (COCO-20i, ResNet-50, 1-shot; params and FLOPs of the meta learner)."""

OFFICIAL_S3_PARAMS = {"total": 50_875_542, "trainable": 4_161_734, "meta": 3_309_634}
"""Reference §5: counted on the official code (PASCAL, ResNet-50, 1-shot)."""

PARTS = (
    "pspnet",
    "query_reduce",
    "support_reduce",
    "query_merge",
    "support_merge",
    "hierarchy",
    "matching",
    "decoder",
    "ensemble",
)
META_PARTS = ("hierarchy", "matching", "decoder")
"""The paper's "decoder" of Table 4: hierarchy + matching + coarse-to-fine decoder."""


def build(
    num_stages: int, backbone: str, shots: int, num_base_classes: int, device: str = "meta"
) -> HDMNet:
    """HDMNet of ``num_stages`` in eval mode; on ``meta`` shapes only, else random weights
    (seed 0)."""
    config = ModelConfig(backbone=cast(BackboneName, backbone), num_stages=num_stages)
    torch.manual_seed(0)
    with torch.device(device):
        return HDMNet(config, num_base_classes=num_base_classes, shots=shots).eval()


def precisions(device: str) -> list[str]:
    """fp32 everywhere; bf16 autocast too on a GPU that has it."""
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return ["fp32", "bf16"]
    return ["fp32"]


def meta_latency(
    model: HDMNet, inputs: tuple[torch.Tensor, ...], device: str, precision: str, repeats: int
) -> list[float]:
    """Seconds of ``repeats`` meta-part forwards (after one warm-up)."""
    autocast = (
        torch.autocast(device, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )
    runs = []
    with torch.no_grad(), autocast:
        for repeat in range(repeats + 1):
            seconds, _ = time_call(lambda: model.meta_learner(*inputs), device)
            if repeat > 0:
                runs.append(seconds)
    return runs


def latency_rows(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Per depth: median meta-part milliseconds per precision on ``args.device``."""
    episode = make_episode(args.shots, args.latency_size, seed=1, device=args.device)
    inputs: tuple[torch.Tensor, ...] | None = None
    out: dict[int, dict[str, Any]] = {}
    for stages in (1, 2, 3, 4):
        model = build(stages, args.backbone, args.shots, args.base_classes, args.device)
        if inputs is None:  # once, by S1: the same inputs for every depth
            inputs = meta_part_inputs(model, episode)
        out[stages] = {}
        for precision in precisions(args.device):
            runs = meta_latency(model, inputs, args.device, precision, args.repeats)
            out[stages][f"{args.device}_{precision}"] = {
                "median_ms": 1000 * statistics.median(runs),
                "runs_ms": [1000 * r for r in runs],
            }
            print(
                f"  S{stages} meta part {args.device} {precision}: "
                f"{1000 * statistics.median(runs):.1f} ms (median of {len(runs)})",
                flush=True,
            )
        del model
    return out


def parameter_counts(model: HDMNet) -> dict[str, int]:
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for part in PARTS:
        module = getattr(model, part)
        counts[part] = 0 if module is None else sum(p.numel() for p in module.parameters())
    counts["meta"] = sum(counts[p] for p in META_PARTS)
    return counts


def part_flops(by_module: dict[str, dict[Any, int]], prefix: str) -> int:
    """FLOPs of the module ``prefix``: its own entry if it was called, else the sum of its
    outermost called sub-modules (a ModuleList such as ``matching`` is never called
    itself, nor is the PSPNet, whose methods the model calls, so only their children have
    entries; a module's entry already includes its children's)."""
    names = [n for n in by_module if n == prefix or n.startswith(prefix + ".")]
    outermost = [n for n in names if not any(n.startswith(m + ".") for m in names if m != n)]
    return int(sum(sum(by_module[n].values()) for n in outermost))


def forward_flops(model: HDMNet, size: int, shots: int) -> dict[str, int]:
    """FLOPs of one eval forward at ``size`` x ``size``, total and per top-level part, of
    the official dataflow (no exact speed-ups: they read mask boxes and foreground
    positions, values that the meta device does not have)."""
    model.use_speedups(())
    with torch.device("meta"):
        query = torch.empty(1, 3, size, size)
        supports = torch.empty(1, shots, 3, size, size)
        masks = torch.ones(1, shots, size, size, dtype=torch.long)
    counter = FlopCounterMode(display=False, depth=4)
    with counter, torch.no_grad():
        model(query, supports, masks)
    by_module = counter.get_flop_counts()
    flops = {"total": int(counter.get_total_flops())}
    for part in PARTS:
        flops[part] = part_flops(by_module, f"HDMNet.{part}")
    flops["meta"] = sum(flops[p] for p in META_PARTS)
    flops["other"] = flops["total"] - sum(flops[p] for p in PARTS)
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[473, 633])
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--base-classes", type=int, default=60, help="COCO 60, PASCAL 15")
    parser.add_argument(
        "--latency-size", type=int, default=473, help="image size of the latency (0: none)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed meta-part runs per depth")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)

    latency = latency_rows(args) if args.latency_size > 0 else {}
    rows: list[dict[str, Any]] = []
    for stages in (1, 2, 3, 4):
        model = build(stages, args.backbone, args.shots, args.base_classes)
        row: dict[str, Any] = {"num_stages": stages, "params": parameter_counts(model)}
        row["flops"] = {str(s): forward_flops(model, s, args.shots) for s in args.sizes}
        row["latency"] = latency.get(stages, {})
        row["paper"] = PAPER_TABLE4[stages]
        rows.append(row)

    print(f"HDMNet {args.backbone}, {args.shots}-shot, {args.base_classes} base classes")
    print("meta = hierarchy + matching + decoder; GFLOPs = 2 x GMACs; paper: thop MACs, COCO")
    header = f"{'':3} {'meta params':>12} {'paper':>6} {'trainable':>10} {'total':>11}"
    for s in args.sizes:
        header += f" {f'meta GF@{s}':>12} {f'all GF@{s}':>11}"
    settings = list(rows[0]["latency"])
    for setting in settings:
        header += f" {f'ms {setting}':>14}"
    print(header + f" {'paper GF':>9} {'paper ms':>9}")
    for row in rows:
        p = row["params"]
        line = f"S{row['num_stages']:<2} {p['meta']:>12,} {row['paper']['params_M']:>5}M"
        line += f" {p['trainable']:>10,} {p['total']:>11,}"
        for s in args.sizes:
            f = row["flops"][str(s)]
            line += f" {f['meta'] / 1e9:>12.2f} {f['total'] / 1e9:>11.1f}"
        for setting in settings:
            line += f" {row['latency'][setting]['median_ms']:>14.1f}"
        print(line + f" {row['paper']['gflops']:>9} {row['paper']['ms']:>9}")
    if settings:
        print(
            f"ms: meta part (hierarchy + matching + decoder) at {args.latency_size} x "
            f"{args.latency_size}, {args.shots}-shot, batch 1, median of {args.repeats}; "
            "paper ms: measured on a GPU"
        )
    s3 = rows[2]["params"]
    if args.backbone == "resnet50" and args.base_classes == 15 and args.shots == 1:
        same = all(s3[k] == v for k, v in OFFICIAL_S3_PARAMS.items())
        print(f"S3 equals the official counts of reference §5: {same}")
    payload = {
        "backbone": args.backbone,
        "shots": args.shots,
        "base_classes": args.base_classes,
        "sizes": args.sizes,
        "latency": {
            "size": args.latency_size,
            "device": args.device,
            "repeats": args.repeats,
            "part": "meta_learner (hierarchy + matching + decoder), batch 1, random weights",
        },
        "official_s3_params_pascal": OFFICIAL_S3_PARAMS,
        "rows": rows,
    }
    write_benchmark_json(args.out, "model_size", payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
