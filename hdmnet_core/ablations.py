"""The paper's ablations (Table 3 and Table 4) as short stage-2 runs of the engine.

Every variant is a set of config overrides on the course's config (the ``model.*``
switches of :class:`~hdmnet_core.config.ModelConfig`). It is meta-trained with
:func:`~hdmnet_core.engine.train.ensure_meta_learner` from the course's stage-1
checkpoint (the frozen base learner does not depend on any of these switches) and scored
with the official protocol (:func:`~hdmnet_core.engine.evaluate.evaluate_protocol`) on
fewer seeds and episodes. :func:`decoder_cost` measures what Table 4 lists beside the
mIoU: parameters, FLOPs (``torch.utils.flop_counter``) and latency of one episode.

Mapping to the paper (reference §7; COCO-20i, ResNet-50, mean over 4 folds, 1-shot):

- Table 3 "baseline": no ensemble, no hierarchy, dot-product correlation, no distillation.
  This workspace has no coupled transformer, so "without the decoupled hierarchy" is a
  single matching stage (``model.num_stages = 1``): what is ablated is the hierarchy.
- Table 3 "+ distillation" is the full model, which is also Table 4's S3.
- Table 4 S1..S4: the full model with 1..4 matching stages.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.config import Config


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table."""

    name: str
    table: str
    """``"Table 3"`` or ``"Table 4"`` (the full model belongs to both)."""
    overrides: dict[str, Any]
    paper_miou: float
    """Published mIoU (%) of the row (COCO-20i, ResNet-50, fold mean, 1-shot)."""
    paper_cost: dict[str, float] = field(default_factory=dict)
    """Table 4: ``params_m`` (decoder, millions), ``time_ms``, ``gflops``."""


_BASELINE = {
    "model.ensemble": False,
    "model.num_stages": 1,
    "model.matching": "dot",
    "model.distillation": False,
}

VARIANTS: tuple[Variant, ...] = (
    Variant("baseline", "Table 3", _BASELINE, 44.7),
    Variant("+ ensemble", "Table 3", {**_BASELINE, "model.ensemble": True}, 45.8),
    Variant(
        "+ hierarchy", "Table 3", {**_BASELINE, "model.ensemble": True, "model.num_stages": 3}, 47.9
    ),  # fmt: skip
    Variant("+ cosine", "Table 3", {"model.distillation": False, "model.num_stages": 3}, 48.3),
    Variant(
        "+ distillation (HDMNet, S3)",
        "Table 3 + 4",
        {"model.num_stages": 3},
        50.0,
        {"params_m": 2.8, "time_ms": 27.4, "gflops": 10.6},
    ),  # fmt: skip
    Variant(
        "S1",
        "Table 4",
        {"model.num_stages": 1},
        47.1,
        {"params_m": 1.3, "time_ms": 15.1, "gflops": 8.8},
    ),  # fmt: skip
    Variant(
        "S2",
        "Table 4",
        {"model.num_stages": 2},
        48.8,
        {"params_m": 2.1, "time_ms": 21.1, "gflops": 10.2},
    ),  # fmt: skip
    Variant(
        "S4",
        "Table 4",
        {"model.num_stages": 4},
        48.6,
        {"params_m": 3.6, "time_ms": 38.0, "gflops": 10.6},
    ),  # fmt: skip
)
"""Every variant the notebook trains, in table order. The full model's matching
(cosine), ensemble and distillation are the official defaults; the variants switch them
off one at a time from the top."""

DECODER_PARTS: tuple[str, ...] = ("hierarchy", "matching", "decoder")
"""Submodules counted as Table 4's "decoder": the decoupled hierarchy, the correlation
matching per stage and the coarse-to-fine decoder."""


def variant_config(config: Config, variant: Variant) -> Config:
    return config.with_overrides(**variant.overrides)


def variant_slug(variant: Variant) -> str:
    """A file-name form of the variant's name: ``"+ distillation (HDMNet, S3)"`` ->
    ``"distillation-hdmnet-s3"``."""
    slug = "".join(c if c.isalnum() else "-" for c in variant.name.lower())
    return "-".join(filter(None, slug.split("-")))


def variant_dir(out_dir: str | Path, variant: Variant, config: Config) -> Path:
    """``out_dir/<slug>-<settings digest>``: other settings (steps, batch, lr ...) train
    into another folder instead of meeting a checkpoint they cannot resume."""
    from hdmnet_core.course import settings_digest

    return Path(out_dir) / f"{variant_slug(variant)}-{settings_digest(config)}"


# --------------------------------------------------------------------- cost (Table 4)
def decoder_parameters(model: torch.nn.Module) -> int:
    """Parameters of :data:`DECODER_PARTS` of an HDMNet."""
    return sum(p.numel() for part in DECODER_PARTS for p in getattr(model, part).parameters())


def decoder_cost(
    config: Config, device: torch.device, repeats: int = 5, seed: int = 0
) -> dict[str, float]:
    """Parameters, FLOPs and latency of one evaluation episode (batch 1) of ``config``'s
    model with random weights (cost does not depend on the values of the weights).

    FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over the whole forward of the
    official dataflow (no exact speed-ups; matrix products and convolutions, 2 FLOPs per
    multiply-add) and over the decoder parts alone; latency: median wall time of
    ``repeats`` forwards (with the model's speed-ups) after one warm-up.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from hdmnet_core.engine.build import build_meta_model

    torch.manual_seed(seed)
    model = build_meta_model(config).to(device).eval()
    size, k = config.data.eval_size, config.data.shots
    query = torch.randn(1, 3, size, size, device=device)
    supports = torch.randn(1, k, 3, size, size, device=device)
    masks = torch.zeros(1, k, size, size, dtype=torch.long, device=device)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        speedups = model.speedups
        model.use_speedups(())  # FLOPs of the official dataflow: the speed-ups skip work
        with counter:  # that depends on the masks (foreground rows and positions)
            model(query, supports, masks)
        model.use_speedups(speedups)  # latency: the model as it runs
        by_module = counter.get_flop_counts()
        decoder_flops = 0
        for name, counts in by_module.items():
            if name.split(".")[-1] in DECODER_PARTS and name.count(".") == 1:
                decoder_flops += sum(counts.values())
        times = []
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(query, supports, masks)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                times.append(time.perf_counter() - start)
    return {
        "decoder_params_m": decoder_parameters(model) / 1e6,
        "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        "gflops": counter.get_total_flops() / 1e9,
        "decoder_gflops": decoder_flops / 1e9,
        "latency_ms": 1000 * statistics.median(times),
    }


# --------------------------------------------------------------------- mIoU (short runs)
def ablation_config(
    config: Config, variant: Variant, steps: int, batch_size: int, episodes: int, seeds: int
) -> Config:
    """The variant's short run: ``steps`` stage-2 steps of ``batch_size`` episodes, the
    last weights kept (no validation: a selection on the novel classes would cost as much
    as the training), scored on ``seeds`` x ``episodes`` protocol episodes."""
    return variant_config(config, variant).with_overrides(
        **{
            "train.max_steps": steps,
            "train.batch_size": batch_size,
            "train.selection_split": "none",
            "eval.episodes": episodes,
            "eval.seeds": seeds,
        }
    )


def run_variant(
    config: Config,
    variant: Variant,
    out_dir: str | Path,
    base_checkpoint: str | Path,
    *,
    progress: bool | None = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or reuse) and evaluate one variant with ``config`` (see
    :func:`ablation_config`); the evaluation is saved next to its checkpoint and read back
    when checkpoint and settings are unchanged. Returns ``ProtocolResult.to_dict()`` plus
    the training seconds."""
    from hdmnet_core.engine.build import resolve_device
    from hdmnet_core.engine.checkpoint import load_trained_model, read_checkpoint
    from hdmnet_core.engine.evaluate import evaluate_protocol
    from hdmnet_core.engine.pipeline import read_matching_evaluation
    from hdmnet_core.engine.train import ensure_meta_learner

    run_dir = variant_dir(out_dir, variant, config)
    best = ensure_meta_learner(config, run_dir, base_checkpoint, progress=progress)
    provenance = {
        "checkpoint": str(best),
        "checkpoint_step": read_checkpoint(best)["progress"]["best_step"],
        "config": config.to_dict(),
        "variant": variant.name,
    }
    saved = run_dir / "evaluation.json"
    evaluation = read_matching_evaluation(saved, provenance)
    if evaluation is None:
        model, _ = load_trained_model(best)
        result = evaluate_protocol(
            model,
            config,
            device=resolve_device(config.train.device),
            cache_dir=run_dir / "feature_cache",
            log=lambda _line: None,
        )
        result.extra.update(provenance)
        result.to_json(saved)
        evaluation = result.to_dict()
    summary = run_dir / "summary.json"
    evaluation["train_seconds"] = (
        json.loads(summary.read_text()).get("seconds", 0.0) if summary.exists() else 0.0
    )
    log(
        f"[ablation] {variant.name}: final mIoU "
        f"{100 * evaluation['summary']['final']['miou']['mean']:.1f} "
        f"({evaluation['train_seconds']:.0f} s of training)"
    )
    return evaluation


ABLATION_LENGTHS: dict[str, dict[str, int]] = {
    "short": {"steps": 10, "batch_size": 4, "episodes": 40, "seeds": 1},
    "full": {"steps": 60, "batch_size": 4, "episodes": 200, "seeds": 1},
}
"""Stage-2 length and evaluation size of every variant, per course length. Even "full"
is a short run (240 training episodes per variant) so that the eight variants fit in
``make reproduce``: notebook 08 took 271 s under the runner on two busy CPU cores with
100 steps and 300 evaluation episodes per variant, hence these smaller values. The
course run itself (notebook 06) trains far longer; these runs rank early learning."""
