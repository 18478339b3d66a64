"""Model size: parameters and FLOPs of HDMNet S1..S4 next to the paper's Table 4.

Paper Table 4 varies the depth of the decoupled hierarchy (``model.num_stages`` 1..4,
official 3) on COCO-20i. For each depth this script counts parameters (total, trainable,
per part) and FLOPs of one evaluation forward (batch 1, 1-shot by default) with
``torch.utils.flop_counter.FlopCounterMode``. Everything runs on the meta device: shapes
only, no memory, no weights, a few seconds.

FLOPs here are 2 x multiply-accumulates of every conv, linear and matmul, attention's
matmuls included. The official code measured with ``thop``, which counts MACs of
modules only (not functional matmuls): compare orders of magnitude, not digits.

    .venv/bin/python benchmarks/model_size.py                 # 473 and 633, 1-shot
    .venv/bin/python benchmarks/model_size.py --sizes 473 --shots 5

Prints a table and writes ``benchmarks/results/model_size.json``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.flop_counter import FlopCounterMode

from hdmnet_core.atomic import atomic_write_json
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


def build(num_stages: int, backbone: str, shots: int, num_base_classes: int) -> HDMNet:
    config = ModelConfig(backbone=cast(BackboneName, backbone), num_stages=num_stages)
    with torch.device("meta"):
        return HDMNet(config, num_base_classes=num_base_classes, shots=shots).eval()


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


def forward_flops(model: HDMNet, size: int, shots: int) -> dict[str, int]:
    """FLOPs of one eval forward at ``size`` x ``size``, total and per top-level part."""
    with torch.device("meta"):
        query = torch.empty(1, 3, size, size)
        supports = torch.empty(1, shots, 3, size, size)
        masks = torch.ones(1, shots, size, size, dtype=torch.long)
    counter = FlopCounterMode(display=False, depth=2)
    with counter, torch.no_grad():
        model(query, supports, masks)
    by_module = counter.get_flop_counts()
    flops = {"total": int(counter.get_total_flops())}
    for part in PARTS:
        flops[part] = int(sum(by_module.get(f"HDMNet.{part}", {}).values()))
    flops["meta"] = sum(flops[p] for p in META_PARTS)
    flops["other"] = flops["total"] - sum(flops[p] for p in PARTS)
    return flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[473, 633])
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--base-classes", type=int, default=60, help="COCO 60, PASCAL 15")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    for stages in (1, 2, 3, 4):
        model = build(stages, args.backbone, args.shots, args.base_classes)
        row: dict[str, Any] = {"num_stages": stages, "params": parameter_counts(model)}
        row["flops"] = {str(s): forward_flops(model, s, args.shots) for s in args.sizes}
        row["paper"] = PAPER_TABLE4[stages]
        rows.append(row)

    print(f"HDMNet {args.backbone}, {args.shots}-shot, {args.base_classes} base classes")
    print("meta = hierarchy + matching + decoder; GFLOPs = 2 x GMACs; paper: thop MACs, COCO")
    header = f"{'':3} {'meta params':>12} {'paper':>6} {'trainable':>10} {'total':>11}"
    for s in args.sizes:
        header += f" {f'meta GF@{s}':>12} {f'all GF@{s}':>11}"
    print(header + f" {'paper GF':>9}")
    for row in rows:
        p = row["params"]
        line = f"S{row['num_stages']:<2} {p['meta']:>12,} {row['paper']['params_M']:>5}M"
        line += f" {p['trainable']:>10,} {p['total']:>11,}"
        for s in args.sizes:
            f = row["flops"][str(s)]
            line += f" {f['meta'] / 1e9:>12.2f} {f['total'] / 1e9:>11.1f}"
        print(line + f" {row['paper']['gflops']:>9}")
    s3 = rows[2]["params"]
    if args.backbone == "resnet50" and args.base_classes == 15 and args.shots == 1:
        same = all(s3[k] == v for k, v in OFFICIAL_S3_PARAMS.items())
        print(f"S3 equals the official counts of reference §5: {same}")
    payload = {
        "backbone": args.backbone,
        "shots": args.shots,
        "base_classes": args.base_classes,
        "sizes": args.sizes,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "official_s3_params_pascal": OFFICIAL_S3_PARAMS,
        "rows": rows,
    }
    atomic_write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
