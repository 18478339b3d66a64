"""The reproduction chain: base training -> meta training -> evaluation, per fold and shots.

``python -m hdmnet_core reproduce --profile P --data-root D --folds 0 1 2 3 --shots 1 5``
runs :func:`reproduce_chain`; the training and evaluation notebooks call the same
:func:`run_fold` for their fold, so a notebook run and a headless run make the same files.

Layout of ``out_dir``::

    fold{F}/base/                       stage 1 (shared by both protocols: BAM's base
                                        learner never sees episodes, so no filter applies)
    {protocol}/fold{F}/meta-{K}shot/    stage 2: last.pt, best.pt, metrics.csv, tensorboard/
    {protocol}/fold{F}/meta-{K}shot/evaluation.json|csv   the official multi-seed protocol
    results.md, results.json            one table, the paper's numbers beside it

Skipping and resuming: a stage whose finished checkpoint matches the config is reused
(:func:`~hdmnet_core.engine.train.ensure_base_learner`), an interrupted one resumes from
its ``last.pt``, an evaluation whose saved result was made from the same checkpoint and
settings is read back.

Protocols (reference §8): ``official`` = BAM/HDMNet (training images that show a novel
class are dropped; the best checkpoint is selected on the novel classes of the val list);
``fair`` = such images are kept (their novel pixels are background) and the checkpoint is
selected on base-class episodes of the val images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hdmnet_core.atomic import atomic_write_json, atomic_write_text
from hdmnet_core.config import Config, ConfigError

Protocol = Literal["official", "fair"]
PROTOCOLS: tuple[str, ...] = ("official", "fair")

PAPER_MIOU: dict[tuple[str, str], tuple[float, float]] = {
    ("pascal", "resnet50"): (69.4, 71.8),
    ("pascal", "vgg16_bn"): (65.1, 69.3),
    ("coco", "resnet50"): (50.0, 56.0),
    ("coco", "vgg16_bn"): (45.9, 52.4),
}
"""Published HDMNet mIoU (%), 1-shot / 5-shot, mean over the 4 folds (reference §7); the
paper does not say whether a seed's mean or its best is reported."""


def protocol_config(config: Config, protocol: str) -> Config:
    """The settings of ``protocol`` on top of ``config``."""
    if protocol == "official":
        return config.with_overrides(
            **{"data.filter_intersection": True, "train.selection_split": "novel-val"}
        )
    if protocol == "fair":
        return config.with_overrides(
            **{"data.filter_intersection": False, "train.selection_split": "base-val"}
        )
    raise ConfigError(f"protocol={protocol!r}: choose one of {list(PROTOCOLS)}")


@dataclass
class FoldResult:
    """One (protocol, fold, shots) cell of the table, with how it was made."""

    protocol: str
    fold: int
    shots: int
    checkpoint: str
    evaluation: dict[str, Any]
    """``ProtocolResult.to_dict()`` of the evaluation."""
    train_seconds: float = 0.0

    def miou(self, output: str = "final") -> dict[str, Any]:
        stats: dict[str, Any] = self.evaluation["summary"][output]["miou"]
        return stats


@dataclass
class ChainResult:
    out_dir: Path
    config: Config
    results: list[FoldResult] = field(default_factory=list)

    def table(self) -> str:
        return results_table(self.config, self.results)


def run_fold(
    config: Config,
    out_dir: str | Path,
    fold: int,
    shots: int,
    protocol: str = "official",
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> FoldResult:
    """Base learner (reused across shots and protocols), meta learner, evaluation."""
    from hdmnet_core.engine.build import resolve_device
    from hdmnet_core.engine.checkpoint import load_trained_model, read_checkpoint
    from hdmnet_core.engine.evaluate import evaluate_protocol
    from hdmnet_core.engine.train import ensure_base_learner, ensure_meta_learner

    out = Path(out_dir)
    cfg = protocol_config(config, protocol).with_overrides(
        **{"data.fold": fold, "data.shots": shots}
    )
    base_dir = out / f"fold{fold}" / "base"
    meta_dir = out / protocol / f"fold{fold}" / f"meta-{shots}shot"
    log(f"[reproduce] {protocol} fold {fold} {shots}-shot: base learner in {base_dir}")
    base = ensure_base_learner(cfg, base_dir, progress=progress)
    log(f"[reproduce] {protocol} fold {fold} {shots}-shot: meta learner in {meta_dir}")
    best = ensure_meta_learner(cfg, meta_dir, base, progress=progress)
    provenance = {
        "checkpoint": str(best),
        "checkpoint_step": read_checkpoint(best)["progress"]["best_step"],
        "config": cfg.to_dict(),
        "protocol_name": protocol,
    }
    saved = meta_dir / "evaluation.json"
    evaluation = read_matching_evaluation(saved, provenance)
    if evaluation is None:
        model, _ = load_trained_model(best)
        result = evaluate_protocol(
            model,
            cfg,
            device=resolve_device(cfg.train.device),
            progress=bool(progress),
            cache_dir=meta_dir / "feature_cache",
            log=log,
        )
        result.extra.update(provenance)
        result.to_json(saved)
        result.to_csv(meta_dir / "evaluation.csv")
        evaluation = result.to_dict()
    else:
        log(f"[reproduce] reusing the evaluation in {saved}")
    seconds = sum(
        json.loads(p.read_text()).get("seconds", 0.0)
        for p in (base_dir / "summary.json", meta_dir / "summary.json")
        if p.exists()
    )
    return FoldResult(protocol, fold, shots, str(best), evaluation, seconds)


def read_matching_evaluation(path: Path, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """A saved evaluation made from the same checkpoint step and settings, else None."""
    if not path.exists():
        return None
    try:
        saved: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    expected = json.loads(json.dumps(provenance))  # tuples read back as lists
    same = all(saved.get(k) == v for k, v in expected.items())
    return saved if same else None


def reproduce_chain(
    config: Config,
    out_dir: str | Path,
    folds: Sequence[int],
    shots: Sequence[int],
    protocols: Sequence[str] = ("official",),
    *,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> ChainResult:
    """Every (protocol, fold, shots) of the request, then ``results.md`` / ``results.json``."""
    out = Path(out_dir)
    for protocol in protocols:
        protocol_config(config, protocol)  # fail fast on a bad name
    chain = ChainResult(out, config)
    for protocol in protocols:
        for fold in folds:
            for k in shots:
                chain.results.append(
                    run_fold(config, out, fold, k, protocol, progress=progress, log=log)
                )
    write_results(chain)
    return chain


# ------------------------------------------------------------------------- table
def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def results_table(config: Config, results: Sequence[FoldResult]) -> str:
    """One table: every cell says protocol, fold, shots, seeds x episodes, the statistic
    and the output it reports; the fold mean sits next to the paper's number."""
    d = config.data
    lines = [
        f"Profile `{config.profile}`: {d.dataset}, backbone `{config.model.backbone}`. "
        "mIoU (%) of the final (ensemble) output and of the meta output; mean ± std and best "
        "over the evaluation seeds (each seed = the full episode set).",
        "",
        "| protocol | fold | shots | seeds x episodes | final mean ± std | final best | "
        "meta mean ± std | FB-IoU final mean | base-class mIoU (base learner) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        final, meta = r.miou("final"), r.miou("meta")
        fb = r.evaluation["summary"]["final"]["fbiou"]
        base = r.evaluation["summary"]["base"]["miou"]
        protocol = r.evaluation["protocol"]
        lines.append(
            f"| {r.protocol} | {r.fold} | {r.shots} | {len(protocol['seeds'])} x "
            f"{protocol['episodes_per_seed']} | {_pct(final['mean'])} ± {_pct(final['std'])} | "
            f"{_pct(final['best'])} | {_pct(meta['mean'])} ± {_pct(meta['std'])} | "
            f"{_pct(fb['mean'])} | {_pct(base['mean'])} |"
        )
    lines += ["", "Mean over the folds run (paper: mean over the 4 folds):", ""]
    lines += ["| protocol | shots | folds | final, mean of seed means | final, mean of seed bests "
              "| meta, mean of seed means | paper (HDMNet) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    paper = PAPER_MIOU.get((d.dataset, config.model.backbone))
    for protocol in dict.fromkeys(r.protocol for r in results):
        for k in sorted({r.shots for r in results if r.protocol == protocol}):
            cells = [r for r in results if r.protocol == protocol and r.shots == k]
            mean = sum(r.miou()["mean"] for r in cells) / len(cells)
            best = sum(r.miou()["best"] for r in cells) / len(cells)
            meta = sum(r.miou("meta")["mean"] for r in cells) / len(cells)
            published = "—" if paper is None else f"{paper[0 if k == 1 else 1]:.1f}"
            if paper is not None and k not in (1, 5):
                published = "—"
            folds = " ".join(str(r.fold) for r in cells)
            lines.append(
                f"| {protocol} | {k} | {folds} | {_pct(mean)} | {_pct(best)} | {_pct(meta)} | "
                f"{published} |"
            )
    if paper is None:
        lines += ["", f"The paper reports no number for `{d.dataset}` (—)."]
    return "\n".join(lines)


def write_results(chain: ChainResult) -> None:
    """``results.md`` and ``results.json`` in the chain's folder (atomic)."""
    atomic_write_text(chain.out_dir / "results.md", chain.table() + "\n")
    atomic_write_json(
        chain.out_dir / "results.json",
        {
            "profile": chain.config.profile,
            "config": chain.config.to_dict(),
            "results": [
                {
                    "protocol": r.protocol,
                    "fold": r.fold,
                    "shots": r.shots,
                    "checkpoint": r.checkpoint,
                    "train_seconds": r.train_seconds,
                    "final_miou": r.miou("final"),
                    "meta_miou": r.miou("meta"),
                    "evaluation": r.evaluation["protocol"],
                }
                for r in chain.results
            ],
        },
    )
