"""Evaluation with the official protocol (issue 9, item 6; reference §1-§2).

- :func:`protocol_seeds`: the official ``test.py`` seeds its global numpy RNG with 123
  (``np.random.seed``, the legacy generator) and draws ``np.random.randint(0, 1000, 10)``:
  ``[510, 365, 382, 322, 988, 98, 742, 17, 595, 106]``. One run of the full episode set
  per seed (PASCAL 1,000 episodes, COCO 10,000).
- :func:`evaluate_episodes`: one seeded run. The three outputs are scored as the official
  ``validate``: logits bilinearly upsampled (``align_corners=True``) to the original label
  size and padded to a square with 255 (:func:`~hdmnet_core.data.transforms.logits_to_label_geometry`);
  ``final`` (ensemble) and ``meta`` by class-wise mIoU and FB-IoU over the fold's classes,
  ``base`` by the base learner's mIoU on the base-learner label. Under ``torch.distributed``
  each rank takes episodes ``rank::world_size`` and the meters (integer counts) are
  summed, so the result equals one process.
- :func:`evaluate_protocol`: every seed of ``config.eval``: per-seed and per-class IoU of
  final / meta / base, mean ± std **and** best over seeds, FB-IoU; saved as JSON and CSV.

The model runs through :func:`~hdmnet_core.model.inference.inference_copy` (folded
BatchNorms, oneDNN backbone on the CPU; same outputs in fp32 up to float rounding) unless
``fast=False``. With a :class:`~hdmnet_core.engine.feature_cache.FeatureCache` the frozen
part is read from the cache instead of being recomputed.

``python -m hdmnet_core evaluate --ckpt C --fold F --shots 1 5 --seeds 10`` drives it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from hdmnet_core.atomic import atomic_write_json, atomic_write_text
from hdmnet_core.config import Config, ConfigError, parse_overrides
from hdmnet_core.data.episodes import EpisodeDataset, binary_mask, collate_episodes
from hdmnet_core.engine.feature_cache import (
    FeatureCache,
    SupportKey,
    autocast,
    build_feature_cache,
    evaluation_model,
    resize_mask,
)
from hdmnet_core.engine.memory import out_of_memory_named
from hdmnet_core.metrics import BaseLearnerMeter, SegmentationMeter, aggregate_seeds
from hdmnet_core.model.hdmnet import HDMNet, HDMNetOutput
from hdmnet_core.runlock import output_folder_lock

OUTPUTS: tuple[str, ...] = ("final", "meta", "base")
"""Scored outputs: ensemble, meta learner, frozen base learner (official mIoU_f/_m/_b)."""

OFFICIAL_SEED_GENERATOR = 123
OFFICIAL_SEEDS = 10
STATISTICS_NOTE = (
    "mean ± std = mean and sample standard deviation (ddof 1) over the seeds; best = the "
    "maximum over the seeds, taken for each column on its own as the official test.py "
    "prints it (the paper does not say which one its tables use)"
)


def protocol_seeds(
    seed_generator: int = OFFICIAL_SEED_GENERATOR, seeds: int = OFFICIAL_SEEDS
) -> list[int]:
    """Per-run seeds of the official test script: legacy ``np.random.seed(seed_generator)``
    then ``np.random.randint(0, 1000, seeds)`` (a private ``RandomState``: same numbers,
    the global numpy state is left alone)."""
    if seeds < 1:
        raise ConfigError(f"eval.seeds={seeds}: must be >= 1")
    state = np.random.RandomState(seed_generator)  # noqa: NPY002 - the official legacy draw
    return [int(s) for s in state.randint(0, 1000, seeds)]


# -------------------------------------------------------------------- one run
@dataclass
class EpisodeScores:
    """Meters of one seeded run (all processes merged)."""

    final: SegmentationMeter
    meta: SegmentationMeter
    base: BaseLearnerMeter
    seed: int
    episodes: int
    seconds: float
    cached: bool
    check_seconds: float = 0.0  # of ``seconds``: the cache's frozen-weight check, once a run

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``final``/``meta`` (mIoU, FB-IoU, per-class IoU), ``base`` (mIoU,
        per-class), the seed, episode count, time."""
        return {
            "seed": self.seed,
            "episodes": self.episodes,
            "seconds": self.seconds,
            "episodes_per_second": self.episodes / self.seconds if self.seconds > 0 else 0.0,
            "cached": self.cached,
            "check_seconds": self.check_seconds,
            "final": _json_keys(self.final.summary()),
            "meta": _json_keys(self.meta.summary()),
            "base": _json_keys(self.base.summary()),
        }


def _json_keys(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Class ids as strings (JSON object keys), everything else unchanged."""
    return {
        k: {str(c): v for c, v in value.items()} if isinstance(value, dict) else value
        for k, value in summary.items()
    }


def shard_indices(count: int) -> list[int]:
    """Episodes of this process: ``rank::world_size`` under torch.distributed, else all."""
    if dist.is_available() and dist.is_initialized():
        return list(range(dist.get_rank(), count, dist.get_world_size()))
    return list(range(count))


def evaluate_episodes(
    model: HDMNet,
    dataset: EpisodeDataset,
    *,
    device: torch.device,
    amp: str = "off",
    batch_size: int = 1,
    num_workers: int = 0,
    progress: bool = False,
    feature_cache: FeatureCache | None = None,
    fast: bool = True,
) -> EpisodeScores:
    """Score every episode of ``dataset`` (one seed): final, meta and base meters.

    ``model``: trained HDMNet (its training mode is restored afterwards); ``fast``: run
    through :func:`inference_copy`. ``feature_cache``: frozen features built for this
    model's frozen part and the dataset's source (see :mod:`.feature_cache`).
    """
    if batch_size < 1:
        raise ConfigError(f"eval.batch_size={batch_size}: must be >= 1")
    was_training = model.training
    runner = evaluation_model(model, device, fast).eval()
    classes = list(dataset.index.classes)
    final, meta = SegmentationMeter(classes), SegmentationMeter(classes)
    base = BaseLearnerMeter(runner.num_base_classes + 1)
    indices = shard_indices(len(dataset))
    start = time.perf_counter()
    loader: DataLoader[dict[str, Any]]
    check_seconds = 0.0
    if feature_cache is not None:
        feature_cache.check_serves(runner, dataset, amp, device)
        check_seconds = time.perf_counter() - start
        loader = _loader(CachedEpisodes(dataset, indices), batch_size, num_workers, device)
    else:
        loader = _loader(_Subset(dataset, indices), batch_size, num_workers, device)
    bar = tqdm(loader, desc=f"seed {dataset.seed}", unit="batch", disable=not progress)
    with (
        torch.no_grad(),
        autocast(device, amp),
        evaluation_out_of_memory(dataset, batch_size, amp, device, feature_cache is not None),
    ):
        for batch in bar:
            if feature_cache is not None:
                out = cached_forward(runner, feature_cache, batch, device)
            else:
                out = runner(
                    batch["query_image"].to(device, non_blocking=True),
                    batch["support_images"].to(device, non_blocking=True),
                    batch["support_masks"].to(device, non_blocking=True),
                )
            score_batch(out, batch, final, meta, base)
    if model is runner and was_training:
        model.train()
    reduce_device = device if _backend_is_nccl() else torch.device("cpu")
    for meter in (final, meta, base):
        meter.all_reduce(reduce_device)
    seconds = time.perf_counter() - start
    episodes = int(final.class_episodes.sum())
    return EpisodeScores(
        final, meta, base, dataset.seed, episodes, seconds, feature_cache is not None,
        check_seconds,
    )  # fmt: skip


def evaluation_out_of_memory(
    dataset: EpisodeDataset, batch_size: int, amp: str, device: torch.device, cached: bool
) -> contextlib.AbstractContextManager[None]:
    """Names the episode batch, image size and precision of an evaluation forward that
    runs out of memory, and the flags that lower it."""
    size = getattr(dataset.transform, "size", "?")
    remedies = []
    if batch_size > 1:
        remedies.append(f"--set eval.batch_size={max(batch_size // 2, 1)} (now {batch_size})")
    if amp == "off":
        remedies.append("--amp bf16")
    if cached:
        remedies.append("--set eval.cache_storage=disk (the feature cache off the GPU)")
    remedies.append("--device cpu (slow, but RAM is larger)")
    return out_of_memory_named(
        f"evaluation of seed {dataset.seed}",
        device,
        f"batch {batch_size} episode(s) of {dataset.shots} shot(s), image size {size} x {size}, "
        f"amp {amp}",
        remedies,
    )


def cached_forward(
    runner: HDMNet, cache: FeatureCache, batch: Mapping[str, Any], device: torch.device
) -> HDMNetOutput:
    """The uncached forward with the frozen features read from ``cache``."""
    support_masks = batch["support_masks"].to(device, non_blocking=True)  # (B, K, H, W)
    support_fg = (support_masks == 1).to(torch.float32)  # as forward: the image dtype
    keys: list[SupportKey] = [key for episode in batch["support_keys"] for key in episode]
    query_feats = cache.query_features(batch["query_index"])
    columns = "foreground_prior" in runner.speedups  # the priors read foreground columns
    support_feats = cache.support_features(keys, support_fg.flatten(0, 1), prior_maps=not columns)
    support_columns = cache.support_columns(keys, support_fg) if columns else None
    size = (support_masks.shape[-2], support_masks.shape[-1])
    return runner.forward_from_features(
        query_feats, support_feats, support_fg, size, support_columns=support_columns
    )


def score_batch(
    out: HDMNetOutput,
    batch: Mapping[str, Any],
    final: SegmentationMeter,
    meta: SegmentationMeter,
    base: BaseLearnerMeter,
) -> None:
    """Official geometry per episode: logits to the original label size (the official
    255 padding to a square changes no count, so it is skipped)."""
    from hdmnet_core.data.transforms import logits_to_label_geometry

    for b, (mask, base_label) in enumerate(
        zip(batch["query_original_mask"], batch["query_original_base_label"], strict=True)
    ):
        class_id = batch["class_id"][b : b + 1]
        for meter, logits in ((final, out.final_logits), (meta, out.meta_logits)):
            scored, target = logits_to_label_geometry(logits[b : b + 1], mask, pad_to_square=False)
            meter.update(scored, target, class_id)  # scored (1, 2, H, W)
        scored, target = logits_to_label_geometry(
            out.base_logits[b : b + 1], base_label, pad_to_square=False
        )
        base.update(scored, target)


def _backend_is_nccl() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"


def _loader(
    dataset: Dataset[dict[str, Any]], batch_size: int, num_workers: int, device: torch.device
) -> DataLoader[dict[str, Any]]:
    collate = collate_cached if isinstance(dataset, CachedEpisodes) else collate_episodes
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )


class _Subset(Dataset[dict[str, Any]]):
    """Episodes ``indices`` of an episode dataset (this process's shard)."""

    def __init__(self, dataset: EpisodeDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]


class CachedEpisodes(Dataset[dict[str, Any]]):
    """Episodes without images, for the feature-cached path: what the dataset's episode
    ``i`` holds besides the images (support masks at the evaluation size, original-size
    labels, class), plus the cache keys of its query and supports. Decodes masks only."""

    def __init__(self, dataset: EpisodeDataset, indices: Sequence[int]) -> None:
        from hdmnet_core.data.transforms import EvalTransform

        if not isinstance(dataset.transform, EvalTransform):
            raise ValueError("feature-cached evaluation needs the EvalTransform episodes")
        self.dataset, self.indices, self.size = dataset, list(indices), dataset.transform.size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        dataset, source = self.dataset, self.dataset.source
        spec = dataset.episode_spec(self.indices[i])
        raw = source.load_mask(spec.query)
        support_masks = [
            resize_mask(binary_mask(source.load_mask(s), spec.class_id), self.size)
            for s in spec.supports
        ]
        base_label = dataset._base_label(raw, spec.query)  # the dataset's own label rule
        return {
            "query_index": spec.query,
            "support_keys": [(s, spec.class_id) for s in spec.supports],
            "support_masks": torch.stack(support_masks),  # (K, S, S) int64
            "class_id": spec.class_id,
            "query_original_mask": torch.from_numpy(binary_mask(raw, spec.class_id)).long(),
            "query_original_base_label": torch.from_numpy(base_label).long(),
        }


def collate_cached(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch :class:`CachedEpisodes` items: masks stacked, keys and labels as lists."""
    return {
        "query_index": [int(item["query_index"]) for item in items],
        "support_keys": [list(item["support_keys"]) for item in items],
        "support_masks": torch.stack([item["support_masks"] for item in items]),
        "class_id": torch.tensor([int(item["class_id"]) for item in items], dtype=torch.int64),
        "query_original_mask": [item["query_original_mask"] for item in items],
        "query_original_base_label": [item["query_original_base_label"] for item in items],
    }


# ------------------------------------------------------------------- protocol
@dataclass
class ProtocolResult:
    """Every seed of one (fold, shots) evaluation, and their statistics."""

    dataset: str
    fold: int
    shots: int
    episodes: int
    seed_generator: int
    seeds: list[int]
    runs: list[dict[str, Any]]
    """:meth:`EpisodeScores.summary` of each seed, in seed order."""
    seconds: float
    cache: dict[str, Any] | None = None
    """Size, storage and build time of the feature cache; None when uncached."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Provenance the caller adds (checkpoint path, warnings ...)."""

    # ------------------------------------------------------------ statistics
    def statistics(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{output: {metric: {mean, std, best, best_seed, values}}}`` over the seeds."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for output in OUTPUTS:
            stats = aggregate_seeds([run[output] for run in self.runs])
            out[output] = {k: self._entry(s) for k, s in stats.items() if k != "episodes"}
        return out

    def per_class_statistics(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{output: {class_id: {mean, std, best, best_seed, values}}}`` over the seeds."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for output in OUTPUTS:
            per_run = [run[output]["per_class_iou"] for run in self.runs]
            classes = sorted(set().union(*per_run), key=int)
            runs = [{c: r.get(c, math.nan) for c in classes} for r in per_run]
            stats = aggregate_seeds(runs)
            out[output] = {c: self._entry(stats[c]) for c in classes}
        return out

    def _entry(self, s: Any) -> dict[str, Any]:
        return {
            "mean": s.mean,
            "std": s.std,
            "best": s.best,
            "best_seed": self.seeds[s.best_index],
            "values": list(s.values),
        }

    # ----------------------------------------------------------------- saving
    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": {
                "dataset": self.dataset,
                "fold": self.fold,
                "shots": self.shots,
                "episodes_per_seed": self.episodes,
                "seed_generator": self.seed_generator,
                "seeds": self.seeds,
                "scoring": "original label size, padded to a square with 255 (reference §2)",
                "statistics": STATISTICS_NOTE,
            },
            "summary": self.statistics(),
            "per_class": self.per_class_statistics(),
            "runs": self.runs,
            "seconds": self.seconds,
            "cache": self.cache,
            **self.extra,
        }

    def to_json(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    def csv_rows(self) -> list[dict[str, Any]]:
        """Long format: one value per row (output, metric, class, statistic, seed)."""
        rows: list[dict[str, Any]] = []
        base = {"dataset": self.dataset, "fold": self.fold, "shots": self.shots}

        def add(output: str, metric: str, class_id: str, entry: dict[str, Any]) -> None:
            for seed, value in zip(self.seeds, entry["values"], strict=True):
                rows.append({**base, "output": output, "metric": metric, "class_id": class_id,
                             "statistic": "seed", "seed": seed, "value": value})  # fmt: skip
            for stat in ("mean", "std", "best"):
                best_seed = entry["best_seed"] if stat == "best" else ""
                rows.append({**base, "output": output, "metric": metric, "class_id": class_id,
                             "statistic": stat, "seed": best_seed, "value": entry[stat]})  # fmt: skip

        for output, metrics in self.statistics().items():
            for metric, entry in metrics.items():
                add(output, metric, "", entry)
        for output, classes in self.per_class_statistics().items():
            for class_id, entry in classes.items():
                add(output, "class_iou", class_id, entry)
        return rows

    def to_csv(self, path: str | Path) -> Path:
        return atomic_write_text(path, rows_to_csv(self.csv_rows()))

    # ----------------------------------------------------------------- table
    def table(self) -> str:
        """Readable table (percent) that names the statistic of every column."""
        stats = self.statistics()
        lines = [
            f"{self.dataset} fold {self.fold}, {self.shots}-shot: {len(self.seeds)} seed(s) x "
            f"{self.episodes} episodes (seeds {' '.join(map(str, self.seeds))})",
            "| output | mIoU mean ± std | mIoU best (seed) | FB-IoU mean ± std | FB-IoU best (seed) |",
            "|---|---|---|---|---|",
        ]
        for output in OUTPUTS:
            m = stats[output]["miou"]
            f = stats[output].get("fbiou")
            fb = ("n/a (base learner: multi-class)", "n/a")
            if f is not None:
                fb = (
                    f"{_pct(f['mean'])} ± {_pct(f['std'])}",
                    f"{_pct(f['best'])} ({f['best_seed']})",
                )
            lines.append(
                f"| {output} | {_pct(m['mean'])} ± {_pct(m['std'])} | "
                f"{_pct(m['best'])} ({m['best_seed']}) | {fb[0]} | {fb[1]} |"
            )
        per_class = self.per_class_statistics()
        lines.append("")
        lines.append("per-class IoU, mean ± std over seeds (final | meta):")
        for class_id, entry in per_class["final"].items():
            m = per_class["meta"][class_id]
            lines.append(
                f"  class {class_id}: {_pct(entry['mean'])} ± {_pct(entry['std'])} | "
                f"{_pct(m['mean'])} ± {_pct(m['std'])}"
            )
        lines.append("")
        lines.append(f"final = ensemble, meta = meta learner, base = base learner on the base "
                     f"classes; {STATISTICS_NOTE}.")  # fmt: skip
        return "\n".join(lines)


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.2f}"


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def evaluate_protocol(
    model: HDMNet,
    config: Config,
    *,
    device: torch.device,
    amp: str | None = None,
    num_workers: int | None = None,
    progress: bool = False,
    cache: str | None = None,
    cache_dir: str | Path | None = None,
    source: Any | None = None,
    fast: bool = True,
    log: Callable[[str], None] = print,
) -> ProtocolResult:
    """All seeds of ``config.eval`` on the val split of ``config.data`` (fold, shots).

    ``amp``, ``num_workers`` and ``cache`` default to ``config.train.amp``,
    ``config.data.num_workers`` and ``config.eval.cache``; ``cache_dir`` to
    ``config.eval.cache_dir`` (else ``feature_cache`` in the working folder). ``source``:
    the val source (default :func:`~hdmnet_core.data.datasets.open_source`).
    """
    from hdmnet_core.data.datasets import open_source
    from hdmnet_core.data.episodes import build_episode_dataset

    e = config.eval
    amp = config.train.amp if amp is None else amp
    workers = config.data.num_workers if num_workers is None else num_workers
    mode = e.cache if cache is None else cache
    folder = Path(cache_dir or e.cache_dir or "feature_cache")
    if model.shots != config.data.shots:
        raise ConfigError(
            f"data.shots={config.data.shots} but the model was built for {model.shots} shots"
        )
    start = time.perf_counter()
    val_source = open_source(config, "val") if source is None else source
    seeds = protocol_seeds(e.seed_generator, e.seeds)
    datasets = [build_episode_dataset(config, "val", val_source, seed=s) for s in seeds]
    was_training = model.training
    runner = evaluation_model(model, device, fast).eval()
    feature_cache, cache_info = None, None
    if mode != "off":
        build_start = time.perf_counter()
        feature_cache = build_feature_cache(
            runner,
            datasets,
            device=device,
            amp=amp,
            mode=mode,
            budget_gb=e.cache_budget_gb,
            storage=e.cache_storage,
            folder=folder,
            episode_indices=shard_indices(e.episodes),
            progress=progress,
            fast=fast,
            log=log,
        )
        if feature_cache is not None:
            cache_info = {
                "bytes": feature_cache.nbytes,
                "storage": feature_cache.storage,
                "query_images": len(feature_cache.plan.queries),
                "support_pairs": len(feature_cache.plan.supports),
                "build_seconds": time.perf_counter() - build_start,
            }
    try:
        runs = []
        for seed, dataset in zip(seeds, datasets, strict=True):
            scores = evaluate_episodes(
                runner,
                dataset,
                device=device,
                amp=amp,
                batch_size=e.batch_size,
                num_workers=workers,
                progress=progress,
                feature_cache=feature_cache,
                fast=fast,
            )
            runs.append(scores.summary())
            log(
                f"seed {seed}: mIoU final {_pct(scores.final.miou())} meta "
                f"{_pct(scores.meta.miou())} base {_pct(scores.base.miou())}, FB-IoU final "
                f"{_pct(scores.final.fbiou())} ({scores.episodes / scores.seconds:.1f} episodes/s)"
            )
    finally:
        if feature_cache is not None:
            feature_cache.close()
        if runner is model and was_training:
            model.train()
    d = config.data
    return ProtocolResult(
        d.dataset,
        d.fold,
        d.shots,
        e.episodes,
        e.seed_generator,
        seeds,
        runs,
        time.perf_counter() - start,
        cache_info,
    )


# ------------------------------------------------------------------ all folds
def folds_table(results: Sequence[ProtocolResult]) -> str:
    """mIoU (final) per fold and shot count, and the mean over folds, mean ± std and best."""
    shots = sorted({r.shots for r in results})
    folds = sorted({r.fold for r in results})
    header = "| fold | " + " | ".join(f"{k}-shot mean ± std | {k}-shot best" for k in shots) + " |"
    lines = ["final mIoU (%) per fold; " + STATISTICS_NOTE, header,
             "|---|" + "---|---|" * len(shots)]  # fmt: skip
    by_key = {(r.fold, r.shots): r.statistics()["final"]["miou"] for r in results}
    for fold in folds:
        cells = []
        for k in shots:
            s = by_key.get((fold, k))
            cells += (["", ""] if s is None else
                      [f"{_pct(s['mean'])} ± {_pct(s['std'])}", _pct(s["best"])])  # fmt: skip
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    cells = []
    for k in shots:
        stats = [by_key[(f, k)] for f in folds if (f, k) in by_key]
        cells += [
            f"{_pct(sum(s['mean'] for s in stats) / len(stats))} (mean of means)",
            f"{_pct(sum(s['best'] for s in stats) / len(stats))} (mean of bests)",
        ]
    lines.append("| mean | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def folds_summary(results: Sequence[ProtocolResult]) -> dict[str, Any]:
    """JSON of :func:`folds_table`: per shot count, the per-fold stats and their means."""
    out: dict[str, Any] = {}
    for k in sorted({r.shots for r in results}):
        per_fold = {str(r.fold): r.statistics()["final"]["miou"] for r in results if r.shots == k}
        out[f"{k}-shot"] = {
            "folds": per_fold,
            "mean_of_means": sum(s["mean"] for s in per_fold.values()) / len(per_fold),
            "mean_of_bests": sum(s["best"] for s in per_fold.values()) / len(per_fold),
        }
    return out


# -------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a meta-trained checkpoint with the official multi-seed protocol",
        description=(
            "Official protocol (reference §1-§2): per seed (numpy seed 123 -> randint(0, 1000, "
            "N)) the full episode set; final / meta / base scored at the original label size "
            "with 255 padding. Prints and saves per-seed and per-class IoU, mean ± std and "
            "best over seeds, FB-IoU (JSON + CSV)."
        ),
    )
    parser.add_argument("--ckpt", required=True, help="checkpoint; may contain {fold} and {shots}")
    parser.add_argument("--fold", type=int, default=None, help="default: the checkpoint's fold")
    parser.add_argument("--all-folds", action="store_true", help="folds 0..3 and their mean")
    parser.add_argument("--shots", type=int, nargs="+", default=None,
                        help="shot counts (default: the checkpoint's)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=None, help="runs (official 10)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per seed")
    parser.add_argument("--data-root", default=None, help="folder of the prepared datasets")
    parser.add_argument("--out", default=None, help="output folder (default runs/eval-<UTC time>)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"],
                        help="mixed precision (default: the checkpoint's train.amp)")  # fmt: skip
    parser.add_argument("--cache", default=None, choices=["auto", "on", "off"],
                        help="feature cache (default eval.cache: auto)")  # fmt: skip
    parser.add_argument(
        "--cache-dir", default=None, help="disk cache folder (default OUT/feature_cache)"
    )
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    parser.add_argument(
        "--allow-untrained-shots",
        action="store_true",
        help="evaluate a shot count the checkpoint was not trained for (the K-shot weighting "
        "MLP then keeps its seeded initial weights; officially it is never trained anyway)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override (repeatable)")  # fmt: skip
    parser.set_defaults(func=run_cli)


def checkpoint_path(template: str, fold: int | None, shots: int | None) -> str:
    """``template`` with its ``{fold}`` / ``{shots}`` placeholders filled in."""
    path = template
    if fold is not None:
        path = path.replace("{fold}", str(fold))
    if shots is not None:
        path = path.replace("{shots}", str(shots))
    return path


def load_with_trained_shots(
    path: str,
    shots: int | None,
    allow_untrained_shots: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[HDMNet, Config, int]:
    """The trained model of a ``meta`` checkpoint for ``shots`` shots (None: the trained
    count), its training config (``data.shots`` set to the evaluated count) and the shot
    count it was trained for.

    A checkpoint of another shot count is refused unless ``allow_untrained_shots``: then
    every weight is loaded into a model built for ``shots`` (seeded with the training
    seed) except the K-shot weighting MLP, which keeps its seeded initial weights, and a
    warning is printed."""
    from hdmnet_core.engine.checkpoint import CheckpointError, load_trained_model

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        model, config = load_trained_model(path, map_location="cpu")
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    if shots is None or model.shots == shots:
        return model, config, model.shots
    if not allow_untrained_shots:
        raise ConfigError(
            f"{path} was trained for {model.shots} shot(s), not {shots}; pass "
            "--allow-untrained-shots to evaluate it anyway"
        )
    log(
        f"warning: {path} was trained for {model.shots} shot(s); evaluating {shots}-shot with "
        "the K-shot weighting MLP at its seeded initial weights (officially never trained)"
    )
    config = config.with_overrides(**{"data.shots": shots})
    torch.manual_seed(config.train.seed)
    target = HDMNet(config.model, model.num_base_classes, shots)
    state = target.state_dict()
    trained = {k: v for k, v in model.state_dict().items() if "shot_weighting" not in k}
    lacking = [k for k in state if k not in trained and "shot_weighting" not in k]
    if lacking:
        raise ConfigError(f"{path}: the checkpoint lacks {lacking[:5]} for a {shots}-shot model")
    target.load_state_dict({**state, **trained})
    return target.eval(), config, model.shots


def load_for_evaluation(
    path: str,
    shots: int | None,
    allow_untrained_shots: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[HDMNet, Config]:
    """:func:`load_with_trained_shots` without the trained shot count."""
    model, config, _ = load_with_trained_shots(path, shots, allow_untrained_shots, log)
    return model, config


def run_cli(args: argparse.Namespace) -> int:
    from hdmnet_core.engine.build import resolve_device

    device = resolve_device(args.device)
    stamp = dt.datetime.now(dt.UTC).strftime("eval-%Y%m%d-%H%M%S")
    out_dir = Path(args.out) if args.out else Path("runs") / stamp
    overrides = parse_overrides(args.overrides)
    for value, key in ((args.seeds, "eval.seeds"), (args.episodes, "eval.episodes"),
                       (args.data_root, "data.root")):  # fmt: skip
        if value is not None:
            overrides[key] = value
    if args.all_folds and "{fold}" not in args.ckpt:
        raise ConfigError("--all-folds needs one checkpoint per fold: put {fold} in --ckpt")
    if "{shots}" in args.ckpt and not args.shots:
        raise ConfigError("--ckpt contains {shots}: say which shot counts with --shots")
    if "{fold}" in args.ckpt and args.fold is None and not args.all_folds:
        raise ConfigError("--ckpt contains {fold}: pass --fold F or --all-folds")
    folds: list[int | None] = [0, 1, 2, 3] if args.all_folds else [args.fold]
    paths = [checkpoint_path(args.ckpt, f, k) for f in folds for k in args.shots or [None]]
    missing = [path for path in dict.fromkeys(paths) if not Path(path).is_file()]
    if missing:  # before any evaluation starts
        raise FileNotFoundError(f"checkpoint(s) {', '.join(missing)} do not exist")
    with output_folder_lock(out_dir):  # a second run into out_dir is refused
        return evaluate_checkpoints(args, folds, overrides, device, out_dir)


def evaluate_checkpoints(
    args: argparse.Namespace,
    folds: Sequence[int | None],
    overrides: dict[str, Any],
    device: torch.device,
    out_dir: Path,
) -> int:
    """The protocol of every fold and shot count of ``args`` into ``out_dir``."""
    results: list[ProtocolResult] = []
    for fold in folds:
        for shots in args.shots or [None]:
            path = checkpoint_path(args.ckpt, fold, shots)
            model, trained, trained_shots = load_with_trained_shots(
                path, shots, args.allow_untrained_shots
            )
            if fold is not None and trained.data.fold != fold:
                raise ConfigError(f"{path} was trained on fold {trained.data.fold}, not {fold}")
            config = trained.with_overrides(**overrides)
            result = evaluate_protocol(
                model,
                config,
                device=device,
                amp=args.amp,
                num_workers=args.workers,
                progress=not args.no_progress and sys.stderr.isatty(),
                cache=args.cache,
                cache_dir=args.cache_dir or out_dir / "feature_cache",
            )
            result.extra["checkpoint"] = path
            result.extra["trained_shots"] = trained_shots
            if trained_shots != config.data.shots:
                result.extra["warning"] = (
                    f"trained for {trained_shots} shot(s); the K-shot weighting MLP "
                    "kept its seeded initial weights"
                )
            name = f"fold{config.data.fold}_{config.data.shots}shot"
            result.to_json(out_dir / f"{name}.json")
            result.to_csv(out_dir / f"{name}.csv")
            print(result.table())
            print(f"saved {out_dir / name}.json and .csv")
            results.append(result)
    if len(results) > 1:
        table = folds_table(results)
        print(table)
        atomic_write_json(out_dir / "summary.json", folds_summary(results))
        atomic_write_text(out_dir / "summary.md", table + "\n")
        rows = [row for r in results for row in r.csv_rows()]
        atomic_write_text(out_dir / "summary.csv", rows_to_csv(rows))
        print(f"saved {out_dir / 'summary'}.json, .md and .csv")
    return 0


__all__ = [
    "EpisodeScores",
    "OUTPUTS",
    "ProtocolResult",
    "add_parser",
    "evaluate_episodes",
    "evaluate_protocol",
    "evaluation_model",
    "folds_table",
    "protocol_seeds",
]
