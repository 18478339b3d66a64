"""Official HDMNet code vs this package, side by side: same weights, same outputs, timings.

Runs the authors' model code (a checkout of GitHub ``Pbihao/HDMNet``; it is never copied
into this repository) with random weights, converts its state dict with this package's
converter (``convert-checkpoint``), and

1. checks that the three outputs (final, meta, base) agree on a random episode, 1- and
   5-shot (exit status 1 if they do not), and
2. with ``--train-check``, runs one training step on both, set up as the official
   ``train.py`` does (``cls_type="Base"``, frozen modules, ``fix_bn``; every dropout set to
   0 on both sides so the step is deterministic), and compares the loss terms and the
   gradient of every trainable parameter (exit status 1 if they differ), and
3. times the official forward against ``HDMNet`` and its ``inference_copy`` (fp32, and
   bf16 where the CPU has it), interleaved round robin, median of ``--repeats``.

What the official tree needs: ``model/HDMNet.py``, ``Transformer.py``,
``MaskMultiheadAttention.py``, ``PSPNet.py`` from HDMNet, and ``resnet.py``, ``vgg.py``,
``PPM.py`` (from ``chunbolang/BAM`` if the checkout lacks them); ``pip install einops``;
mmcv-full 1.x and mmseg 0.x, or ``--stand-ins`` for the minimal stand-ins in
``benchmarks/official_stand_ins``. No pretrained file is read: the official PSPNet is
built with ``pretrained=False`` and its random weights are written to a temporary file
for the official ``pre_weight`` loader.

    .venv/bin/python benchmarks/official_side_by_side.py --official-root ~/src/HDMNet --stand-ins

Prints a table and writes ``benchmarks/results/official_side_by_side.json``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hdmnet_core.benchmark import write_benchmark_json
from hdmnet_core.config import ModelConfig
from hdmnet_core.model.convert import (
    convert_state_dict,
    hdmnet_rules,
    load_weights_into,
    rename_to_ours,
)
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.inference import inference_copy, mkldnn_bf16_supported

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "official_side_by_side.json"
STAND_INS = HERE / "official_stand_ins"
OFFICIAL_FILES = (
    "model/HDMNet.py",
    "model/Transformer.py",
    "model/MaskMultiheadAttention.py",
    "model/PSPNet.py",
    "model/resnet.py",
    "model/vgg.py",
    "model/PPM.py",
)
AGREEMENT_RTOL = 1e-4
"""Outputs agree if max |difference| <= AGREEMENT_RTOL * max |official output| + 1e-5;
losses and gradients alike (per tensor, against its largest official value)."""


class SetupError(Exception):
    """The official tree or its dependencies are missing: the message says what to do."""


# ------------------------------------------------------------------ official model
def import_official(root: Path, stand_ins: bool) -> tuple[Any, Any]:
    """Import the official ``OneModel`` classes of HDMNet and PSPNet from ``root``."""
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        raise SetupError(
            f"{root}: missing {', '.join(missing)} (clone Pbihao/HDMNet there; resnet.py, "
            "vgg.py and PPM.py come from chunbolang/BAM's model/ if the checkout lacks them)"
        )
    try:
        importlib.import_module("einops")
    except ImportError as error:
        raise SetupError("the official code needs einops: pip install einops") from error
    if stand_ins:
        sys.path.insert(0, str(STAND_INS))
    else:
        for name in ("mmcv.cnn", "mmseg.models.utils"):
            try:
                importlib.import_module(name)
            except ImportError as error:
                raise SetupError(
                    f"the official code imports {name}: install mmcv-full 1.x and mmseg 0.x, "
                    "or pass --stand-ins"
                ) from error
    sys.path.insert(0, str(root))
    resnet = importlib.import_module("model.resnet")
    build_resnet50 = resnet.resnet50
    # the official PSPNet always asks for pretrained weights (./initmodel/...): not here
    resnet.resnet50 = lambda pretrained=True, **kw: build_resnet50(pretrained=False, **kw)
    hdmnet = importlib.import_module("model.HDMNet")
    pspnet = importlib.import_module("model.PSPNet")
    return hdmnet.OneModel, pspnet.OneModel


def official_args(shots: int, pre_weight: Path) -> SimpleNamespace:
    """The ``args`` fields the official constructors read (PASCAL, ResNet-50)."""
    return SimpleNamespace(
        data_set="pascal",
        layers=50,
        vgg=False,
        shot=shots,
        low_fea="layer2",
        ignore_label=255,
        kshot_trans_dim=2,
        zoom_factor=8,
        pre_weight=str(pre_weight),
    )


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Random BatchNorm statistics and affines, LayerNorm affines, ensemble weights away
    from their identity start and a spread meta classifier, so that the check is not
    trivially satisfied by near-constant outputs (then :func:`calibrate`)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))  # type: ignore[union-attr]
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))  # type: ignore[union-attr]
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
            elif isinstance(m, torch.nn.LayerNorm):
                n = m.normalized_shape[0]
                m.weight.copy_(1 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
        for merge in (model.gram_merge, model.cls_merge):
            merge.weight.add_(0.2 * torch.randn(merge.weight.shape, generator=g))
        model.transformer.mix_transformer.cls[4].weight.mul_(30.0)
        if hasattr(model, "kshot_rw"):
            for p in model.kshot_rw.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g))


def calibrate(model: torch.nn.Module, shots: int) -> None:
    """Shift the meta classifier's foreground bias and the base weight of the official
    ``cls_merge`` so that about half of a calibration episode is predicted foreground by
    the meta and the final output: argmax agreement then says something."""
    ep = episode(shots, 96, seed=7)
    with torch.no_grad():
        _, meta, _ = official_outputs(model, ep)
        model.transformer.mix_transformer.cls[4].bias[1] -= (meta[:, 1] - meta[:, 0]).median()
        final, _, base = official_outputs(model, ep)
        base_map = base.softmax(1)[:, 1:].sum(1)
        shift = (final[:, 0] - final[:, 1]).median() / base_map.median().clamp_min(1e-3)
        model.cls_merge.weight[0, 1] -= shift


def build_pair(
    classes: tuple[Any, Any], shots: int, seed: int, workdir: Path
) -> tuple[torch.nn.Module, HDMNet]:
    """The official model (random, perturbed) and ours with its converted weights."""
    official_hdmnet, official_pspnet = classes
    torch.manual_seed(seed)
    pre_weight = workdir / "official_pspnet_random.pth"
    args = official_args(shots, pre_weight)
    torch.save({"state_dict": official_pspnet(args).state_dict()}, pre_weight)
    official = official_hdmnet(args)
    perturb(official, seed + 1)
    official.eval()
    calibrate(official, shots)
    state = {k: v.detach().clone() for k, v in official.state_dict().items()}
    converted = convert_state_dict(
        {"state_dict": state}, kind="hdmnet", shots=shots, where="official"
    )
    ours = HDMNet(ModelConfig(backbone="resnet50"), num_base_classes=15, shots=shots)
    load_weights_into(ours, converted.weights["state_dict"], where="converted official weights")
    return official, ours.eval()


# ------------------------------------------------------------------------ episodes
def blob_masks(shots: int, size: int, g: torch.Generator) -> torch.Tensor:
    """(1, K, size, size) smooth random foreground blobs (20-40 %) with a 255 edge band."""
    masks = []
    for _ in range(shots):
        field = F.interpolate(
            torch.randn(1, 1, 8, 8, generator=g), size=(size, size), mode="bicubic"
        )[0, 0]
        threshold = torch.quantile(
            field.flatten(), 1 - (0.2 + 0.2 * float(torch.rand(1, generator=g)))
        )
        mask = (field > threshold).long()
        mask[(field - threshold).abs() < 0.02 * field.std()] = 255
        masks.append(mask)
    return torch.stack(masks)[None]


def episode(shots: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 3, size, size, generator=g)
    supports = torch.randn(1, shots, 3, size, size, generator=g)
    return query, supports, blob_masks(shots, size, g)


def official_outputs(
    model: torch.nn.Module, ep: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, ...]:
    query, supports, masks = ep
    return tuple(model(query, s_x=supports, s_y=masks))  # final, meta, base


def our_outputs(model: HDMNet, ep: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    out = model(*ep)
    return out.final_logits, out.meta_logits, out.base_logits


# --------------------------------------------------------------------------- checks
def agreement(official: tuple[torch.Tensor, ...], ours: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, a, b in zip(("final", "meta", "base"), official, ours, strict=True):
        difference = float((a - b).abs().max())
        bound = AGREEMENT_RTOL * float(a.abs().max()) + 1e-5
        result[name] = {
            "max_abs_diff": difference,
            "max_abs_official": float(a.abs().max()),
            "argmax_agreement": float((a.argmax(1) == b.argmax(1)).float().mean()),
            "official_foreground_fraction": float((a.argmax(1) > 0).float().mean()),
            "agrees": difference <= bound,
        }
    return result


# ------------------------------------------------------------------ training step
class TorchWithoutCuda:
    """Stand-in for the ``torch`` global of the official ``model/HDMNet.py`` whose
    ``arange`` ignores ``device``: its training-mode ``base_map`` builds a class index with
    ``device='cuda'``. Every other attribute is torch's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def arange(*args: Any, device: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.arange(*args, **kwargs)


def without_dropout(model: nn.Module) -> int:
    """Set every dropout probability to 0 (a deterministic training step); returns how many."""
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            m.p, changed = 0.0, changed + 1
        elif getattr(m, "drop_prob", 0) > 0:
            m.drop_prob, changed = 0.0, changed + 1  # type: ignore[assignment]
    return changed


def training_batch(shots: int, size: int, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Query and support images, support masks, a query mask with ignore pixels and a
    base-learner label (random base classes, 255 where the query mask is ignored)."""
    g = torch.Generator().manual_seed(seed)
    query_mask = torch.cat([blob_masks(1, size, g)[0] for _ in range(batch)])  # (B, H, W)
    query_mask[:, :, : size // 20] = 255
    base_label = torch.randint(0, 16, (batch, size, size), generator=g)
    base_label[query_mask == 255] = 255
    return {
        "query": torch.randn(batch, 3, size, size, generator=g),
        "supports": torch.randn(batch, shots, 3, size, size, generator=g),
        "support_masks": torch.cat([blob_masks(shots, size, g) for _ in range(batch)]),
        "query_mask": query_mask,
        "base_label": base_label,
        "class_index": torch.arange(batch) * 7 % 15,  # official cat_idx: base class 0..14
    }


def training_check(
    official: torch.nn.Module, ours: HDMNet, shots: int, size: int
) -> dict[str, Any]:
    """One training step on both models (switched to training as ``train.py`` does);
    loss terms and gradients compared."""
    official.cls_type = "Base"  # as train.py builds it
    official.freeze_modules(official)
    official.train()
    for m in official.modules():  # train.py's fix_bn
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    ours.train()  # fix_bn is on by default
    dropouts = (without_dropout(official), without_dropout(ours))
    data = training_batch(shots, size, batch=2, seed=4242 + shots)
    cat_idx = [data["class_index"]] * shots  # the official loader's collated list

    _, main_and_meta, distill, base = official(
        data["query"],
        y_m=data["query_mask"],
        y_b=data["base_label"],
        s_x=data["supports"],
        s_y=data["support_masks"],
        cat_idx=cat_idx,
    )
    (main_and_meta + distill).backward()  # the official base term carries no gradient
    out = ours(
        data["query"],
        data["supports"],
        data["support_masks"],
        query_mask=data["query_mask"],
        query_base_label=data["base_label"],
        base_channel=data["class_index"] + 1,
    )
    assert out.losses is not None
    out.losses["total"].backward()
    losses = {
        "final_ce + meta_ce": (
            float(main_and_meta),
            float(out.losses["final_ce"] + out.losses["meta_ce"]),
        ),
        "distill": (float(distill), float(out.losses["distill"])),
        "base_ce": (float(base), float(out.losses["base_ce"])),
    }
    gradients = {n: p.grad for n, p in official.named_parameters() if p.grad is not None}
    mapped, _, unmatched = rename_to_ours(gradients, hdmnet_rules())
    ours_params = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    worst, worst_name = 0.0, ""
    for name, grad in mapped.items():
        mine = ours_params[name].grad if name in ours_params else None
        if mine is None:
            worst, worst_name = float("inf"), name
            break
        relative = float((grad - mine).abs().max()) / max(float(grad.abs().max()), 1e-12)
        if relative > worst:
            worst, worst_name = relative, name
    agrees = (
        not unmatched
        and set(mapped) == set(ours_params)
        and all(abs(a - b) <= AGREEMENT_RTOL * abs(a) + 1e-5 for a, b in losses.values())
        and worst <= 10 * AGREEMENT_RTOL
    )
    for term, (a, b) in losses.items():
        print(
            f"{shots}-shot training {term:18} official {a:.8f} ours {b:.8f} diff {abs(a - b):.1e}"
        )
    print(
        f"{shots}-shot training gradients: {len(mapped)} official / {len(ours_params)} ours "
        f"trainable tensors, largest relative difference {worst:.1e} ({worst_name}); "
        f"dropouts zeroed {dropouts}; agrees: {agrees}"
    )
    return {
        "losses": losses,
        "gradient_tensors": [len(mapped), len(ours_params)],
        "largest_relative_gradient_difference": worst,
        "agrees": agrees,
    }


def timings(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats + 1):  # repeat 0 warms up
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if repeat > 0:
                times[name].append(time.perf_counter() - start)
    return times


def output_check(official: torch.nn.Module, ours: HDMNet, shots: int, size: int) -> dict[str, Any]:
    """Evaluation outputs of both models on one random episode."""
    ep = episode(shots, size, seed=100 + shots)
    check = agreement(official_outputs(official, ep), our_outputs(ours, ep))
    for name, values in check.items():
        print(
            f"{shots}-shot {name:5} max|official - ours| {values['max_abs_diff']:.2e} "
            f"(max|official| {values['max_abs_official']:.2e}), argmax agreement "
            f"{100 * values['argmax_agreement']:.3f} % (official foreground "
            f"{100 * values['official_foreground_fraction']:.1f} %), agrees: {values['agrees']}"
        )
    return check


def time_forwards(
    official: torch.nn.Module, ours: HDMNet, shots: int, size: int, repeats: int
) -> dict[str, Any]:
    """Official forward vs ``HDMNet`` and its ``inference_copy`` (fp32, bf16 if available)."""
    ep = episode(shots, size, seed=200 + shots)
    fast = inference_copy(ours)
    runs: dict[str, Callable[[], Any]] = {
        "official": lambda: official_outputs(official, ep),
        "HDMNet": lambda: our_outputs(ours, ep),
        "inference_copy": lambda: our_outputs(fast, ep),
    }
    if mkldnn_bf16_supported():
        fast_bf16 = inference_copy(ours, backbone_dtype=torch.bfloat16)

        def bf16() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return our_outputs(fast_bf16, ep)

        runs["inference_copy_bf16"] = bf16
    times = timings(runs, repeats)
    medians = {name: statistics.median(v) for name, v in times.items()}
    result: dict[str, Any] = {}
    for name in runs:
        speedup = medians["official"] / medians[name]
        result[name] = {
            "median_s": medians[name],
            "runs_s": times[name],
            "speedup_vs_official": speedup,
        }
        print(
            f"{shots}-shot {size}x{size} {name:20} {medians[name]:7.2f} s  x official {speedup:.2f}"
        )
    return result


def compare_shots(
    classes: tuple[Any, Any], shots: int, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Output check, timings (if ``args.size``) and training check (if asked), all on
    one pair of models."""
    official, ours = build_pair(classes, shots, seed=shots, workdir=workdir)
    entry: dict[str, Any] = {"shots": shots, "check_size": args.check_size}
    with torch.inference_mode():
        entry["agreement"] = output_check(official, ours, shots, args.check_size)
        if args.size > 0:
            entry["size"] = args.size
            entry["timings"] = time_forwards(official, ours, shots, args.size, args.repeats)
    if args.train_check:  # last: it switches both models to training
        official_module = importlib.import_module("model.HDMNet")
        official_module.torch = TorchWithoutCuda()  # type: ignore[attr-defined]
        try:
            entry["training"] = training_check(official, ours, shots, args.check_size)
        finally:
            official_module.torch = torch  # type: ignore[attr-defined]
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-root", type=Path, required=True)
    parser.add_argument(
        "--stand-ins", action="store_true", help="use benchmarks/official_stand_ins for mmcv/mmseg"
    )
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--check-size", type=int, default=200, help="episode size of the output check"
    )
    parser.add_argument(
        "--size", type=int, default=473, help="episode size of the timings (0: no timing)"
    )
    parser.add_argument("--train-check", action="store_true", help="also compare one training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        classes = import_official(args.official_root.expanduser(), args.stand_ins)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        results = [compare_shots(classes, shots, args, Path(tmp)) for shots in args.shots]
    write_benchmark_json(
        args.out, "official_side_by_side", {"threads": args.threads, "results": results}
    )
    print(f"wrote {args.out}")
    checks = [v["agrees"] for r in results for v in r["agreement"].values()]
    checks += [r["training"]["agrees"] for r in results if "training" in r]
    if not all(checks):
        print("error: the official and converted outputs differ (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
