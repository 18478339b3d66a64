"""Model speed: evaluation forward latency of HDMNet, faithful vs optimised settings.

Setting (reference §5): batch 1, 473 x 473, ResNet-50, 1-shot and 5-shot, 2 CPU threads,
random weights (speed does not depend on their values). Reference §5 gives 2.5 s (1-shot)
and 13.9 s (5-shot) for the official code; run here by ``official_side_by_side.py`` it
takes 4.3 s and 19.0 s, and ``faithful`` below is its stand-in (same dataflow, same
outputs). Targets: fp32 at least 1.3x faster, the fastest safe setting at most half.

Settings (see ``SETTINGS``; each adds one thing to the row above it, so the table says
what each optimisation buys; all fp32 settings give the faithful outputs up to float
rounding, checked below):

- ``faithful``: ``exact_speedups`` off: the official dataflow step by step (query and
  masked supports through the frozen backbone in separate calls, then through the
  hierarchy separately; full support ``feat5``; full prior cosine maps; NCHW fp32).
- ``batched_hierarchy``: + query and supports through the hierarchy in one call.
- ``feat5_in_box``: + ``support_feat5_in_box``: the support's 3x3 classifier conv only
  around its mask's box.
- ``foreground_prior``: + ``foreground_prior``: prior cosines of foreground support
  positions only.
- ``foreground_matching``: + ``foreground_matching``: correlation attention rows of
  foreground support tokens only.
- ``pooled_branch_conv``: + ``pooled_branch_conv``: the classifier conv over the four
  pyramid branches at their pooled size. This row is ``HDMNet``'s default.
- ``batched_backbone``: + query and supports through the backbone in one call (every
  exact speed-up; not a default: slower on this CPU).
- ``fold_bn``: + every frozen BatchNorm folded into its conv: ``inference_copy(model,
  "nchw")`` (an evaluation-only copy; folding changes the state dict).
- ``channels_last``: ``fold_bn`` with the frozen PSPNet in NHWC
  (``inference_copy(model, "channels_last")``, the GPU choice).
- ``mkldnn``: ``fold_bn`` with the frozen backbone in oneDNN's blocked layout, weights
  reordered once (``inference_copy(model)``, the CPU default): the fastest fp32 setting.
- ``bf16`` / ``bf16_nhwc``: ``fold_bn`` / ``channels_last`` under
  ``torch.autocast("cpu", torch.bfloat16)`` (if the CPU has bf16).
- ``bf16_mkldnn``: ``inference_copy(model, backbone_dtype=torch.bfloat16)`` under autocast.
  bf16 settings are not bit-faithful: their deviation is reported, not asserted.
- ``compile`` (``--compile``): ``torch.compile`` of the default model (slow to build).

Measurements interleave the settings (round robin) and repeat, so that load from other
processes on this shared machine hits all settings alike; the median is reported.
The optimised fp32 outputs are checked against the faithful ones (tolerance printed).

    .venv/bin/python benchmarks/model_speed.py                   # 1- and 5-shot, CPU
    .venv/bin/python benchmarks/model_speed.py --shots 1 --repeats 2

Prints a table and writes ``benchmarks/results/model_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.benchmark import cpu_instruction_set, write_benchmark_json
from hdmnet_core.benchmark_report import render_model_speed
from hdmnet_core.config import ModelConfig
from hdmnet_core.model.hdmnet import DEFAULT_SPEEDUPS, EXACT_SPEEDUPS, HDMNet
from hdmnet_core.model.inference import BackboneLayout, inference_copy, mkldnn_bf16_supported

RESULTS = Path(__file__).resolve().parent / "results" / "model_speed.json"
OFFICIAL_SECONDS = {1: 2.5, 5: 13.9}
"""Reference §5: official fp32 eval forward "on this machine kind" (473, batch 1, 2
threads). The official code itself took 4.3 s / 19.0 s here (official_side_by_side.py)."""
FP32_RTOL, FP32_ATOL = 1e-3, 1e-3
"""Optimised fp32 vs faithful: allclose on the logits. Reordered sums (one batched conv
instead of two, NHWC kernels) change float rounding only."""

Episode = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# -------------------------------------------------------------------- model and inputs
def build_model(shots: int, backbone: str, seed: int, device: str) -> HDMNet:
    torch.manual_seed(seed)
    config = ModelConfig(backbone="resnet50" if backbone == "resnet50" else "tiny")
    return HDMNet(config, num_base_classes=15, shots=shots).eval().to(device)


def make_episode(shots: int, size: int, seed: int, device: str) -> Episode:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 3, size, size, generator=g)
    supports = torch.randn(1, shots, 3, size, size, generator=g)
    masks = torch.zeros(1, shots, size, size, dtype=torch.long)
    masks[..., size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = 1
    return query.to(device), supports.to(device), masks.to(device)


@dataclass(frozen=True)
class Setting:
    speedups: tuple[str, ...] = DEFAULT_SPEEDUPS
    layout: BackboneLayout | None = None
    """None: the model itself; else an ``inference_copy`` with this backbone layout."""
    backbone_bf16: bool = False
    autocast_bf16: bool = False
    compile: bool = False
    what: str = ""
    """What the setting adds (the generated table's last column)."""


SETTINGS: dict[str, Setting] = {
    "faithful": Setting(
        speedups=(), what="official order: query, then supports; full maps everywhere"
    ),
    "batched_hierarchy": Setting(
        speedups=("batched_hierarchy",),
        what="query and supports through the hierarchy in one call",
    ),
    "feat5_in_box": Setting(
        speedups=("batched_hierarchy", "support_feat5_in_box"),
        what="the support's 3x3 conv 4096->512 only around its mask's box",
    ),
    "foreground_prior": Setting(
        speedups=("batched_hierarchy", "support_feat5_in_box", "foreground_prior"),
        what="prior cosines for foreground support positions only",
    ),
    "foreground_matching": Setting(
        speedups=(
            "batched_hierarchy",
            "support_feat5_in_box",
            "foreground_prior",
            "foreground_matching",
        ),
        what="correlation attention rows of foreground support tokens only",
    ),
    "pooled_branch_conv": Setting(  # every default speed-up
        what="classifier conv over the 4 pyramid branches at their pooled size "
        "(**`HDMNet` default**)"
    ),
    "batched_backbone": Setting(
        speedups=tuple(EXACT_SPEEDUPS),
        what="query and supports through the backbone in one call (not a default)",
    ),
    "fold_bn": Setting(layout="nchw", what='BatchNorms folded: `inference_copy(m, "nchw")`'),
    "channels_last": Setting(
        layout="channels_last", what='NHWC backbone, `"channels_last"` (the GPU choice)'
    ),
    "mkldnn": Setting(
        layout="mkldnn",
        what="oneDNN blocked backbone, weights reordered once: **`inference_copy(m)`**",
    ),
    "bf16": Setting(layout="nchw", autocast_bf16=True, what="`fold_bn` + bf16 autocast"),
    "bf16_nhwc": Setting(
        layout="channels_last", autocast_bf16=True, what="`channels_last` + bf16 autocast"
    ),
    "bf16_mkldnn": Setting(
        layout="mkldnn",
        backbone_bf16=True,
        autocast_bf16=True,
        what="bf16 blocked backbone: `inference_copy(m, backbone_dtype=torch.bfloat16)`, "
        "autocast; fastest",
    ),
    "compile": Setting(compile=True, what="`torch.compile` of the default model"),
}
_DEFAULT_ROW = set(SETTINGS["foreground_matching"].speedups) | {"pooled_branch_conv"}
assert _DEFAULT_ROW == set(DEFAULT_SPEEDUPS), "the pooled_branch_conv row is HDMNet's default"


def setting_context(model: HDMNet, setting: Setting, device: str) -> contextlib.ExitStack:
    """Speed-ups and autocast of ``setting`` (cheap; the model copy is chosen before)."""
    model.use_speedups(setting.speedups)
    stack = contextlib.ExitStack()
    if setting.autocast_bf16:
        stack.enter_context(torch.autocast(device, dtype=torch.bfloat16))
    return stack


def model_copies(model: HDMNet, settings: list[str]) -> dict[str, HDMNet]:
    """One prepared model per setting (``inference_copy`` shared by equal settings), so
    that nothing is converted inside a timed run."""
    prepared: dict[tuple[BackboneLayout | None, bool], HDMNet] = {(None, False): model}
    out = {}
    for name in settings:
        s = SETTINGS[name]
        key = (s.layout, s.backbone_bf16)
        if key not in prepared:
            dtype = torch.bfloat16 if s.backbone_bf16 else torch.float32
            prepared[key] = inference_copy(model, s.layout, dtype)
        out[name] = prepared[key]
    return out


def meta_part_inputs(model: HDMNet, episode: Episode) -> tuple[torch.Tensor, ...]:
    """Inputs of ``HDMNet.meta_learner`` (hierarchy + matching + decoder)."""
    query, supports, masks = episode
    fg = (masks == 1).to(query.dtype)
    with torch.no_grad():
        qf, sf = model.frozen_features(query, supports, fg)
        priors = model.prior_masks(qf, sf, fg)
        query_x, support_x = model.merged_features(qf, sf, fg, priors)
    return query_x, support_x, fg, priors


def time_call(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``. On a shared machine the CPU time
    is the less disturbed of the two (with 2 threads, wall >= cpu / 2)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def bf16_supported() -> bool:
    """bf16 rows are measured only where oneDNN runs bf16 (``mkldnn_bf16_supported``) and
    the CPU has native bf16 instructions: emulated bf16 is slower than fp32 and says
    nothing about the optimisation being timed."""
    return mkldnn_bf16_supported() and bool(cpu_instruction_set()["native_bf16"])


def compare(reference: Any, candidate: Any) -> dict[str, float | bool]:
    """Max |difference| of final/meta logits and foreground-decision agreement."""
    out: dict[str, float | bool] = {}
    for field in ("final_logits", "meta_logits"):
        a = getattr(reference, field).float()
        b = getattr(candidate, field).float()
        out[f"{field}_max_abs_diff"] = float((a - b).abs().max())
        out[f"{field}_allclose"] = bool(torch.allclose(a, b, rtol=FP32_RTOL, atol=FP32_ATOL))
        out[f"{field}_argmax_agreement"] = float((a.argmax(1) == b.argmax(1)).float().mean())
    return out


def benchmark_shots(
    args: argparse.Namespace, shots: int, repeats: int, device: str
) -> dict[str, Any]:
    model = build_model(shots, args.backbone, seed=0, device=device)
    episode = make_episode(shots, args.size, seed=1, device=device)
    settings = [
        "faithful",
        "batched_hierarchy",
        "feat5_in_box",
        "foreground_prior",
        "foreground_matching",
        "pooled_branch_conv",
        "batched_backbone",
        "fold_bn",
        "channels_last",
    ]
    if device == "cpu" and torch.backends.mkldnn.is_available():
        settings.append("mkldnn")
    if device == "cpu" and bf16_supported() and not args.no_bf16:
        settings += ["bf16", "bf16_nhwc", "bf16_mkldnn"]
    if device == "cuda" and torch.cuda.is_bf16_supported() and not args.no_bf16:
        settings += ["bf16", "bf16_nhwc"]
    if args.compile:
        settings.append("compile")
    models = model_copies(model, settings)

    compiled: Callable[..., Any] = torch.compile(models["compile"]) if args.compile else model
    outputs: dict[str, Any] = {}
    times: dict[str, list[float]] = {s: [] for s in settings}
    cpu_times: dict[str, list[float]] = {s: [] for s in settings}

    def forward(name: str) -> None:
        net = models[name]
        with torch.no_grad(), setting_context(net, SETTINGS[name], device):
            outputs[name] = (compiled if name == "compile" else net)(*episode)

    for repeat in range(repeats + 1):  # repeat 0 is warm-up
        for name in settings:
            seconds, cpu_seconds = time_call(functools.partial(forward, name), device)
            if repeat > 0:
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
            print(
                f"  {shots}-shot {name:14} run {repeat}: {seconds:6.2f} s wall, "
                f"{cpu_seconds:6.2f} s cpu, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )

    # meta part alone (hierarchy + matching + decoder), faithful vs batched hierarchy
    meta_inputs = meta_part_inputs(model, episode)
    meta_times: dict[str, list[float]] = {"faithful": [], "batched": []}
    for repeat in range(repeats + 1):
        for name in meta_times:
            model.use_speedups(("batched_hierarchy",) if name == "batched" else ())
            with torch.no_grad():
                seconds, _ = time_call(lambda: model.meta_learner(*meta_inputs), device)
            if repeat > 0:
                meta_times[name].append(seconds)

    faithful = outputs["faithful"]
    comparable = args.backbone == "resnet50" and args.size == 473 and device == "cpu"
    official = OFFICIAL_SECONDS.get(shots) if comparable else None
    result: dict[str, Any] = {"shots": shots, "reference_official_seconds": official}
    result["settings"] = {}
    for name in settings:
        median = statistics.median(times[name])
        entry = {
            "median_s": median,
            "runs_s": times[name],
            "median_cpu_s": statistics.median(cpu_times[name]),
            "runs_cpu_s": cpu_times[name],
            "speedup_vs_faithful": statistics.median(times["faithful"]) / median,
            "vs_faithful": compare(faithful, outputs[name]),
        }
        if official is not None:
            entry["speedup_vs_reference_official"] = official / median
        result["settings"][name] = entry
    result["meta_part"] = {k: statistics.median(v) for k, v in meta_times.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--size", type=int, default=473)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, nargs="+", default=[3], help="timed runs per setting, per --shots"
    )
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "tiny"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    torch.set_num_threads(args.threads)

    repeats = args.repeats * len(args.shots) if len(args.repeats) == 1 else args.repeats
    if len(repeats) != len(args.shots):
        parser.error("--repeats takes one value, or one per --shots value")
    results = [
        benchmark_shots(args, shots, n, args.device)
        for shots, n in zip(args.shots, repeats, strict=True)
    ]
    payload = {
        "device": args.device,
        "threads": args.threads,
        "size": args.size,
        "backbone": args.backbone,
        "repeats": repeats,
        "tolerance": {"rtol": FP32_RTOL, "atol": FP32_ATOL},
        "results": results,
        "settings_order": list(results[0]["settings"]),  # the JSON's keys are sorted
        "what": {name: SETTINGS[name].what for name in results[0]["settings"]},
    }
    print()
    print(render_model_speed(payload))
    print(
        f"fp32 settings vs faithful: allclose(rtol={FP32_RTOL}, atol={FP32_ATOL}) on logits; "
        "bf16 settings are reported, not asserted"
    )
    write_benchmark_json(args.out, "model_speed", payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
