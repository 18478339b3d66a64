"""Training: stage 1 (the PSPNet base learner) and stage 2 (HDMNet meta-training).

``python -m hdmnet_core train base --profile P --fold F --data-root D``
``python -m hdmnet_core train meta --profile P --fold F --shots K --base-ckpt B``
(``torchrun --nproc_per_node N -m hdmnet_core train meta ...`` for DDP).

Both stages run the same loop (:func:`fit`); what differs is a :class:`StageJob`:

| | stage 1 (``base``, BAM ``train_base.py``) | stage 2 (``meta``, HDMNet ``train.py``) |
|---|---|---|
| model | PSPNet, every part trains, BN in train mode | HDMNet, PSPNet frozen, ``fix_bn`` |
| data | every train image, base labels, random crop | episodes of the base classes |
| optimizer | SGD m 0.9, wd 1e-4; ppm + classifier at 10x lr | AdamW wd 0.01; ``down_*``/``*_merge`` at 10x |
| loss | CE(logits, base label) | CE(final) + CE(meta) + distillation |
| selection | base-class mIoU on the val images | ``train.selection_split`` (official: novel val) |

Learning rate: poly per optimizer step, ``lr_k = lr * (1 - (k + 1) / total) ** 0.9`` for the
0-based step ``k`` (official ``current_iter = k + 1``). Global batch ``train.batch_size``
(stage 1: ``train.base_learner_batch_size``) over all processes and accumulation steps.

Determinism: batches depend only on ``(seed, epoch, item)`` and the torch generator is
re-seeded from ``(seed, step, micro-batch)`` before every micro-batch, so dropout masks
do not depend on the number of processes, and resuming from ``last.pt`` continues
bit-exactly on CPU (the RNG states are stored all the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hdmnet_core.atomic import atomic_write_json
from hdmnet_core.config import PROFILES, Config, ConfigError, parse_overrides, profile_argument
from hdmnet_core.engine import checkpoint as ckpt
from hdmnet_core.engine.build import build_base_learner, build_meta_model
from hdmnet_core.engine.distributed import (
    EpochIndexed,
    ProcessInfo,
    ShardedBatches,
    all_true,
    micro_batch_size,
    setup,
)
from hdmnet_core.engine.logging import TrainingLog, peak_memory_mb, progress_wanted
from hdmnet_core.engine.memory import out_of_memory_named
from hdmnet_core.errors import UserError
from hdmnet_core.model.convert import ConversionError, read_weights_file
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.losses import IGNORE_INDEX
from hdmnet_core.model.pspnet import PSPNet
from hdmnet_core.runlock import output_folder_lock

LossFn = Callable[[nn.Module, Mapping[str, Any], torch.device], dict[str, torch.Tensor]]
ValidateFn = Callable[[nn.Module], dict[str, float]]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# Settings that decide what stage 1 computes (a finished base checkpoint is reused when they
# match); stage 2 depends on every setting except ckpt.RESUME_FREE_KEYS and the evaluation.
BASE_STAGE_KEYS: tuple[str, ...] = (
    "data.dataset",
    "data.fold",
    "data.coco_split",
    "data.synthetic_images_train",
    "data.synthetic_images_val",
    "data.synthetic_image_size",
    "data.synthetic_seed",
    "data.eval_size",
    "data.rotate_degrees",
    "model.backbone",
    "model.pretrained",
    "train.seed",
    "train.amp",
    "train.channels_last",
) + tuple(
    f"train.{name}"
    for name in (
        "base_learner_epochs",
        "base_learner_steps",
        "base_learner_lr",
        "base_learner_head_lr_multiplier",
        "base_learner_momentum",
        "base_learner_weight_decay",
        "base_learner_batch_size",
        "base_learner_crop",
        "base_learner_scale_range",
        "base_learner_val_every",
        "base_learner_val_images",
        "poly_power",
    )
)


class TrainingDiverged(UserError, RuntimeError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


# ------------------------------------------------------------------------- the job
@dataclass
class StageJob:
    """Everything :func:`fit` needs to know about one stage."""

    stage: ckpt.Stage
    config: Config
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_data: Any
    """An episode or image dataset: ``__len__``, ``__getitem__``, ``epoch``, ``set_epoch``."""
    collate: Callable[[Any], dict[str, Any]]
    global_batch: int
    batch_key: str
    """Config key of the global batch (named in errors)."""
    total_steps: int
    val_every: int | None
    """Steps between validations; ``None`` = after every epoch."""
    patience: int
    loss: LossFn
    validate: ValidateFn | None
    """Returns named scores with ``"score"`` (higher is better); ``None`` = no selection."""
    item_name: str = "episodes"
    extra_checkpoint: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    stage: ckpt.Stage
    run_dir: Path
    last: Path
    best: Path
    progress: ckpt.Progress
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "run_dir": str(self.run_dir),
            "last": str(self.last),
            "best": str(self.best),
            "steps": self.progress.step,
            "best_score": finite_or_none(self.progress.best_score),
            "best_step": self.progress.best_step,
            "stop_reason": self.progress.stop_reason,
            "seconds": round(self.seconds, 1),
            "history": self.progress.history,
        }


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a score that was never set reads ``null``."""
    return value if math.isfinite(value) else None


# ------------------------------------------------------------------------ schedule
def poly_factor(step: int, total_steps: int, power: float) -> float:
    """Multiplier of the base lr for 0-based optimizer step ``step`` (official poly)."""
    return max(0.0, 1.0 - (step + 1) / total_steps) ** power


def poly_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: poly_factor(step, total_steps, power)
    )


def stage_length(steps: int | None, epochs: int, items: int, global_batch: int) -> int:
    """Optimizer steps of a stage: ``steps`` when set (CPU profiles), else ``epochs`` x the
    full global batches of one epoch (official ``drop_last``, as :class:`ShardedBatches`)."""
    return steps or epochs * max(items // global_batch, 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators (official
    ``setup_seed(manual_seed)``)."""
    import random

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the global generator, for code that uses it
    torch.manual_seed(seed)


def micro_batch_seed(seed: int, step: int, micro_index: int) -> int:
    """Seed of the torch generator for one micro-batch (dropout), process-count free."""
    return int(np.random.SeedSequence([seed, step, micro_index]).generate_state(1)[0])


# ------------------------------------------------------------------------ the loop
def fit(
    job: StageJob, process: ProcessInfo, resume: bool = False, progress_bar: bool | None = None
) -> TrainResult:
    """Train ``job`` to its end (or early stop); write ``last.pt``, ``best.pt``, logs."""
    cfg, t = job.config, job.config.train
    run_dir = job.run_dir
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    micro = micro_batch_size(job.global_batch, process.world_size, t.grad_accum, job.batch_key)
    device = process.device
    model = job.model.to(device)
    scheduler = poly_scheduler(job.optimizer, job.total_steps, t.poly_power)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")
    state = ckpt.Progress()
    if resume and last_path.exists():
        state = restore(job, last_path, scheduler, scaler, device)
        if process.is_main:
            print(f"[train {job.stage}] resumed {last_path} at step {state.step}", flush=True)
    elif resume and process.is_main:
        print(f"[train {job.stage}] nothing to resume in {run_dir}; starting", flush=True)
    if state.finished:
        return TrainResult(job.stage, run_dir, last_path, best_path, state, 0.0)

    sampler = ShardedBatches(
        len(job.train_data), job.global_batch, process.rank, process.world_size, t.grad_accum
    )
    if sampler.batches_per_epoch < 1:
        raise ConfigError(
            f"{job.batch_key}={job.global_batch} is larger than the {len(job.train_data)} "
            f"training {job.item_name} of {cfg.data.dataset} fold {cfg.data.fold}"
        )
    loader = DataLoader(
        EpochIndexed(job.train_data),
        batch_size=micro,
        sampler=sampler,
        collate_fn=job.collate,
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
        generator=torch.Generator().manual_seed(t.seed),  # never the global generator
    )
    trained = wrap_for_training(model, process, t.compile)
    log = TrainingLog(run_dir, enabled=process.is_main, resume_step=state.step if resume else None)
    if process.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
        print(
            f"[train {job.stage}] {job.total_steps} steps, global batch {job.global_batch} = "
            f"{process.world_size} process(es) x {t.grad_accum} accumulation x {micro}; "
            f"device {device}; amp {t.amp}{ddp_text(process)}",
            flush=True,
        )
    bar = make_bar(job, state.step, process.is_main and progress_wanted(progress_bar))
    start = time.perf_counter()
    batches: Iterator[dict[str, Any]] | None = None
    try:
        while state.step < job.total_steps and not state.finished:
            if batches is None:
                sampler.position(state.epoch, state.batch_in_epoch)
                batches = iter(loader)
            with training_out_of_memory(job, state.step, micro, device):
                terms = train_step(job, trained, batches, state.step, process, scaler, last_path)
            scheduler.step()
            state.step += 1
            state.batch_in_epoch += 1
            epoch_ended = state.batch_in_epoch == sampler.batches_per_epoch
            if epoch_ended:
                state.epoch, state.batch_in_epoch, batches = state.epoch + 1, 0, None
            bar.update(1)
            if state.step % t.log_every == 0 or state.step == job.total_steps:
                row = {**terms, **learning_rates(job.optimizer)}
                row[f"{job.item_name}_per_s"] = log.rate(state.step, job.global_batch)
                row["peak_memory_mb"] = peak_memory_mb(device)
                log.write(state.step, row)
                bar.set_postfix(loss=f"{terms['total']:.3f}")
            validated = False
            due = (job.val_every is not None and state.step % job.val_every == 0) or (
                job.val_every is None and epoch_ended
            )
            if job.validate is not None and (due or state.step == job.total_steps):
                validate_and_select(job, model, state, log, best_path, process)
                validated = True
            if state.step == job.total_steps and not state.finished:
                state.finished, state.stop_reason = True, state.stop_reason or "reached total steps"
            if (
                validated
                or state.finished
                or (t.checkpoint_every and state.step % t.checkpoint_every == 0)
            ):
                save_last(job, model, state, scheduler, scaler, last_path, process)
    finally:
        bar.close()
        log.close()
    if job.validate is None and process.is_main:
        save_best(job, model, state, best_path)
    seconds = time.perf_counter() - start
    if process.is_main:
        result = TrainResult(job.stage, run_dir, last_path, best_path, state, seconds)
        atomic_write_json(run_dir / "summary.json", result.summary())
    return TrainResult(job.stage, run_dir, last_path, best_path, state, seconds)


def train_step(
    job: StageJob,
    trained: nn.Module,
    batches: Iterator[dict[str, Any]],
    step: int,
    process: ProcessInfo,
    scaler: torch.amp.GradScaler,
    last_path: Path,
) -> dict[str, float]:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss terms."""
    t = job.config.train
    device = process.device
    sums: dict[str, float] = {}
    trained.train()
    for micro_step in range(t.grad_accum):
        batch = next(batches)
        torch.manual_seed(
            micro_batch_seed(t.seed, step, micro_step * process.world_size + process.rank)
        )
        sync = micro_step == t.grad_accum - 1
        context = contextlib.nullcontext() if sync or not process.distributed else trained.no_sync()  # type: ignore[operator]
        with context:
            with autocast(device, t.amp):
                losses = job.loss(trained, batch, device)
            finite = all(bool(torch.isfinite(v.detach()).all()) for v in losses.values())
            if not all_true(finite, device):
                named = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
                kept = (
                    f"the last good checkpoint {last_path} is kept"
                    if last_path.exists()
                    else "no checkpoint was written yet"
                )
                raise TrainingDiverged(
                    f"{job.stage} training diverged at step {step + 1}: a loss term is not "
                    f"finite on some process ({named} here); {kept}. Lower the learning "
                    "rate or use --amp off"
                )
            scaler.scale(losses["total"] / t.grad_accum).backward()
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) / t.grad_accum
    scaler.step(job.optimizer)
    scaler.update()
    job.optimizer.zero_grad(set_to_none=True)
    return mean_over_processes(sums, device)


def training_out_of_memory(
    job: StageJob, step: int, micro: int, device: torch.device
) -> contextlib.AbstractContextManager[None]:
    """Names the batch, image size and precision of a step that runs out of memory, and
    the flags that lower it (:class:`~hdmnet_core.engine.memory.OutOfMemory`)."""
    t = job.config.train
    size = t.base_learner_crop if job.stage == "base" else job.config.data.train_size
    remedies = [
        f"--set {job.batch_key}={max(job.global_batch // 2, 1)} (global batch, now "
        f"{job.global_batch})",
        f"--grad-accum {t.grad_accum * 2} (the same global batch in smaller micro-batches, "
        f"now {micro} {job.item_name} each)",
    ]
    if t.amp == "off":
        remedies.append("--amp bf16 (or fp16 on GPUs without bf16)")
    size_key = "train.base_learner_crop" if job.stage == "base" else "data.train_size"
    remedies.append(f"--set {size_key}=... (image size, now {size})")
    return out_of_memory_named(
        f"{job.stage} training step {step + 1}",
        device,
        f"global batch {job.global_batch}, micro-batch {micro}, image size {size} x {size}, "
        f"amp {t.amp}",
        remedies,
    )


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean of each logged value over all processes (the value itself when alone)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    keys = sorted(values)
    vector = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(vector)
    vector /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, vector.tolist(), strict=True)}


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr_group{i}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def wrap_for_training(
    model: nn.Module,
    process: ProcessInfo,
    compile_model: bool,
    compile_backend: str | Callable[..., Any] = "inductor",
) -> nn.Module:
    """DDP when distributed, then ``torch.compile`` when asked.

    Compiled with static shapes (``dynamic=False``): the hierarchy runs the same matching
    code at every stage's map size (e.g. 8 x 8, 4 x 4, 2 x 2), and the support masks and
    priors run at each feature size, so torch's default would mark those sizes dynamic
    at the second size it meets, and inductor then fails to lower the symbolic strides
    ("cannot determine truth value of Relational"). Static shapes compile each size
    once; a training crop has a fixed size, so the set of sizes is small and fixed.
    ``compile_backend`` is ``torch.compile``'s backend (the tests pass a recording one).
    """
    wrapped = model
    if process.distributed:
        device_ids = [process.device.index] if process.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        wrapped = torch.compile(wrapped, dynamic=False, backend=compile_backend)  # type: ignore[assignment]
    return wrapped


def ddp_text(process: ProcessInfo) -> str:
    """``"; DDP over nccl"`` in the start line of a run in a process group, else ``""``."""
    import torch.distributed as dist

    return f"; DDP over {dist.get_backend()}" if process.distributed else ""


def make_bar(job: StageJob, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=job.total_steps,
        initial=initial,
        desc=f"{job.stage} fold {job.config.data.fold}",
        unit="step",
        disable=not enabled,
        dynamic_ncols=True,
    )


# -------------------------------------------------------------- selection, saving
def validate_and_select(
    job: StageJob,
    model: nn.Module,
    state: ckpt.Progress,
    log: TrainingLog,
    best_path: Path,
    process: ProcessInfo,
) -> None:
    """Validate, keep ``best.pt`` on a new best, count validations for early stopping."""
    assert job.validate is not None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scores = job.validate(model)
    model.train(was_training)
    score = float(scores["score"])
    log.write(state.step, scores, prefix="val")
    state.history.append({"step": state.step, "epoch": state.epoch, **scores})
    if score > state.best_score:
        state.best_score, state.best_step, state.validations_since_best = score, state.step, 0
        if process.is_main:
            save_best(job, model, state, best_path)
    else:
        state.validations_since_best += 1
    if process.is_main:
        print(
            f"[train {job.stage}] step {state.step}: score {score:.4f} "
            f"(best {state.best_score:.4f} at step {state.best_step})",
            flush=True,
        )
    if state.validations_since_best >= job.patience:
        state.finished = True
        state.stop_reason = f"early stop: no new best in {job.patience} validations"


def save_best(job: StageJob, model: nn.Module, state: ckpt.Progress, path: Path) -> None:
    ckpt.save_checkpoint(
        path, stage=job.stage, config=job.config, model=model, progress=state, with_rng=False
    )


def save_last(
    job: StageJob,
    model: nn.Module,
    state: ckpt.Progress,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    path: Path,
    process: ProcessInfo,
) -> None:
    if not process.is_main:
        return
    ckpt.save_checkpoint(
        path,
        stage=job.stage,
        config=job.config,
        model=model,
        progress=state,
        optimizer=job.optimizer,
        scheduler=scheduler,
        grad_scaler=scaler,
    )


def restore(
    job: StageJob,
    path: Path,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> ckpt.Progress:
    """Load ``last.pt`` into the job after checking that it belongs to this run."""
    where = str(path)
    payload = ckpt.read_checkpoint(path)
    ckpt.check_stage(payload, job.stage, where)
    stored = ckpt.checkpoint_config(payload, where)
    differences = ckpt.config_differences(stored, job.config, ckpt.RESUME_FREE_KEYS)
    if differences:
        raise ckpt.CheckpointError(
            f"{where}: cannot resume: the run's settings differ from the checkpoint's:\n  "
            + "\n  ".join(differences)
            + "\nuse another --out folder, or the same settings"
        )
    ckpt.check_architecture(payload, job.config, where)
    ckpt.load_model_state(job.model, payload["model"], where)
    job.model.to(device)
    job.optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if payload["grad_scaler"] is not None:
        scaler.load_state_dict(payload["grad_scaler"])
    if payload["rng"] is not None:
        ckpt.set_rng_state(payload["rng"])
    return ckpt.progress_of(payload)


# ----------------------------------------------------------------- stage 1: base
def base_learner_loss(
    model: nn.Module, batch: Mapping[str, Any], device: torch.device
) -> dict[str, torch.Tensor]:
    """CE of the PSPNet logits (at crop size) against the base labels, 255 ignored."""
    image = batch["image"].to(device, non_blocking=True)
    label = batch["label"].to(device, non_blocking=True)
    logits = model(image)  # (B, C, S, S)
    ce = F.cross_entropy(logits.float(), label, ignore_index=IGNORE_INDEX)
    return {"ce": ce, "total": ce}


def base_learner_groups(model: PSPNet, lr: float, head_multiplier: float) -> list[dict[str, Any]]:
    """BAM ``PSPNet.get_optim`` with ``index_split=0``: backbone at ``lr``; pyramid pooling
    and classifier at ``lr * head_multiplier`` (10)."""
    return [
        {"params": list(model.backbone.parameters()), "lr": lr},
        {
            "params": list(model.ppm.parameters()) + list(model.classifier.parameters()),
            "lr": lr * head_multiplier,
        },
    ]


def base_learner_miou(
    model: nn.Module, dataset: Dataset[Any], device: torch.device, amp: str, process: ProcessInfo
) -> dict[str, float]:
    """Base-class mIoU (official ``mIoU_b`` rule) of the base learner on resized val images."""
    from hdmnet_core.data.base_images import collate_base_images
    from hdmnet_core.metrics import BaseLearnerMeter

    inner = ckpt.unwrap_model(model)
    assert isinstance(inner, PSPNet)
    meter = BaseLearnerMeter(inner.num_classes)
    indices = list(range(process.rank, len(dataset), process.world_size))  # type: ignore[arg-type]
    for start in range(0, len(indices), 8):
        batch = collate_base_images([dataset[i] for i in indices[start : start + 8]])
        with autocast(device, amp):
            logits = inner(batch["image"].to(device))
        meter.update(logits.float().cpu(), batch["label"])
    meter.all_reduce(device)
    return {"score": meter.miou(), "base_miou": meter.miou()}


def base_learner_job(config: Config, run_dir: Path, process: ProcessInfo) -> StageJob:
    """Stage 1 of ``config``'s fold."""
    from hdmnet_core.data import splits
    from hdmnet_core.data.base_images import BaseImageDataset, collate_base_images
    from hdmnet_core.data.datasets import open_source
    from hdmnet_core.data.transforms import CropTrainTransform, EvalTransform

    d, t = config.data, config.train
    label_map = splits.base_learner_label_map(d.dataset, d.fold, d.coco_split)
    seed_everything(t.seed)  # the initial weights depend on the seed only
    train_source, val_source = open_source(config, "train"), open_source(config, "val")
    train_data = BaseImageDataset(
        train_source,
        label_map,
        CropTrainTransform(t.base_learner_crop, t.base_learner_scale_range, d.rotate_degrees),
        "train",
        seed=t.seed,
    )
    val_data = BaseImageDataset(
        val_source,
        label_map,
        EvalTransform(d.eval_size),
        "val",
        max_images=t.base_learner_val_images,
    )
    model = build_base_learner(config)
    if config.model.pretrained:
        load_backbone_init(model, config.model.pretrained)
    if t.channels_last:
        model.use_channels_last()
    groups = base_learner_groups(model, t.base_learner_lr, t.base_learner_head_lr_multiplier)
    optimizer = torch.optim.SGD(
        groups,
        lr=t.base_learner_lr,
        momentum=t.base_learner_momentum,
        weight_decay=t.base_learner_weight_decay,
    )
    total = stage_length(
        t.base_learner_steps, t.base_learner_epochs, len(train_data), t.base_learner_batch_size
    )
    return StageJob(
        stage="base",
        config=config,
        run_dir=run_dir,
        model=model,
        optimizer=optimizer,
        train_data=train_data,
        collate=collate_base_images,
        global_batch=t.base_learner_batch_size,
        batch_key="train.base_learner_batch_size",
        total_steps=total,
        val_every=t.base_learner_val_every,
        patience=10**9,  # BAM keeps the best of all epochs
        loss=base_learner_loss,
        validate=lambda m: base_learner_miou(m, val_data, process.device, t.amp, process),
        item_name="images",
    )


def load_backbone_init(model: PSPNet, path: str) -> None:
    """Start stage 1 from converted ImageNet weights (``convert-checkpoint`` output)."""
    try:
        weights = read_weights_file(path)
    except ConversionError as err:
        raise ckpt.CheckpointError(str(err)) from err
    state = weights["state_dict"]
    if weights.get("target") == "pspnet":
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    elif weights.get("target") != "backbone":
        raise ckpt.CheckpointError(
            f"{path}: --init needs converted backbone (or PSPNet) weights, got a "
            f"{weights.get('target')!r} file"
        )
    ckpt.load_model_state(model.backbone, state, path)


# ----------------------------------------------------------------- stage 2: meta
def meta_learner_loss(
    model: nn.Module, batch: Mapping[str, Any], device: torch.device
) -> dict[str, torch.Tensor]:
    """HDMNet's episode losses (reference §4.5): total = CE(final) + CE(meta) + distill."""
    out = model(
        batch["query_image"].to(device, non_blocking=True),
        batch["support_images"].to(device, non_blocking=True),
        batch["support_masks"].to(device, non_blocking=True),
        query_mask=batch["query_mask"].to(device, non_blocking=True),
        query_base_label=batch["query_base_label"].to(device, non_blocking=True),
        base_channel=batch["base_channel"].to(device, non_blocking=True),
    )
    assert out.losses is not None
    return out.losses


def selection_dataset(config: Config, split: str) -> Any:
    """Validation episodes for model selection (``train.selection_split``), reseeded with
    ``train.val_seed`` every time (official)."""
    from hdmnet_core.data.datasets import open_source
    from hdmnet_core.data.episodes import EpisodeDataset, build_episode_dataset, fold_classes_for
    from hdmnet_core.data.transforms import EvalTransform

    t, d = config.train, config.data
    source = open_source(config, "val")
    if split == "novel-val":
        val_config = config.with_overrides(**{"eval.episodes": t.val_episodes})
        return build_episode_dataset(val_config, "val", source, seed=t.val_seed, augment=False)
    base = fold_classes_for(config, "train", source)
    return EpisodeDataset(
        source,
        base,
        d.shots,
        "val",
        EvalTransform(d.eval_size),
        seed=t.val_seed,
        episodes=t.val_episodes,
        min_class_area=d.min_class_area,
        filter_intersection=False,
        small_classes="skip",
    )


def meta_validation(config: Config, process: ProcessInfo, run_dir: Path) -> ValidateFn | None:
    """Selection score of the meta learner: final-output mIoU on ``train.selection_split``.
    The frozen features of the validation episodes are cached once (feature cache) and
    serve every validation of the run."""
    t = config.train
    if t.selection_split == "none":
        return None
    dataset = selection_dataset(config, t.selection_split)
    cache: list[Any] = []  # built at the first validation, then reused: the frozen part is fixed

    def validate(model: nn.Module) -> dict[str, float]:
        from hdmnet_core.engine.evaluate import evaluate_episodes, shard_indices
        from hdmnet_core.engine.feature_cache import build_feature_cache

        inner = ckpt.unwrap_model(model)
        assert isinstance(inner, HDMNet)
        if not cache:
            cache.append(
                build_feature_cache(
                    inner,
                    [dataset],
                    device=process.device,
                    amp=t.amp,
                    mode=config.eval.cache,
                    budget_gb=config.eval.cache_budget_gb,
                    storage=config.eval.cache_storage,
                    folder=Path(config.eval.cache_dir or run_dir / "feature_cache"),
                    episode_indices=shard_indices(len(dataset)),
                    log=lambda message: (
                        print(f"[validation] {message}", flush=True) if process.is_main else None
                    ),
                )
            )
        scores = evaluate_episodes(
            inner, dataset, device=process.device, amp=t.amp, feature_cache=cache[0]
        )
        return {
            "score": scores.final.miou(),
            "final_miou": scores.final.miou(),
            "meta_miou": scores.meta.miou(),
            "final_fbiou": scores.final.fbiou(),
        }

    return validate


def meta_learner_job(
    config: Config, run_dir: Path, base_checkpoint: Path, process: ProcessInfo
) -> StageJob:
    """Stage 2 of ``config``'s fold and shot count, starting from a stage-1 checkpoint."""
    from hdmnet_core.data.datasets import open_source
    from hdmnet_core.data.episodes import build_episode_dataset, collate_episodes

    t = config.train
    seed_everything(t.seed)  # the initial weights depend on the seed only
    model = build_meta_model(config)
    base = ckpt.load_pspnet(base_checkpoint)
    ckpt.load_model_state(model.pspnet, base.state_dict(), str(base_checkpoint))
    model.pspnet.freeze()
    if t.channels_last:
        model.pspnet.use_channels_last()
    model.train()
    groups = model.trainable_parameter_groups(t.lr, t.new_layer_lr_multiplier)
    optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.999))
    train_data = build_episode_dataset(config, "train", open_source(config, "train"))
    total = stage_length(t.max_steps, t.epochs, len(train_data), t.batch_size)
    return StageJob(
        stage="meta",
        config=config,
        run_dir=run_dir,
        model=model,
        optimizer=optimizer,
        train_data=train_data,
        collate=collate_episodes,
        global_batch=t.batch_size,
        batch_key="train.batch_size",
        total_steps=total,
        val_every=t.val_every,
        patience=t.early_stop_patience,
        loss=meta_learner_loss,
        validate=meta_validation(config, process, run_dir),
    )


# --------------------------------------------------------------- entry points
def train_base(
    config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool | None = None
) -> TrainResult:
    """Stage 1 into ``run_dir`` (``last.pt``, ``best.pt``, ``metrics.csv``, ``tensorboard/``)."""
    process = setup(config.train.device)
    job = base_learner_job(config, Path(run_dir), process)
    return fit(job, process, resume=resume, progress_bar=progress)


def train_meta(
    config: Config,
    run_dir: str | Path,
    base_checkpoint: str | Path,
    *,
    resume: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Stage 2 into ``run_dir`` from the stage-1 checkpoint ``base_checkpoint``."""
    process = setup(config.train.device)
    job = meta_learner_job(config, Path(run_dir), Path(base_checkpoint), process)
    return fit(job, process, resume=resume, progress_bar=progress)


def finished_checkpoint(run_dir: Path, config: Config, stage: ckpt.Stage) -> Path | None:
    """``run_dir/best.pt`` when ``last.pt`` there is finished and matches ``config``."""
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    if not (last.exists() and best.exists()):
        return None
    payload = ckpt.read_checkpoint(last)
    if payload.get("stage") != stage or not payload["progress"]["finished"]:
        return None
    stored = ckpt.checkpoint_config(payload, str(last))
    if stage == "base":
        a, b = stored.to_dict(), config.to_dict()
        same = all(_get(a, key) == _get(b, key) for key in BASE_STAGE_KEYS)
    else:
        same = not ckpt.config_differences(
            stored, config, ckpt.RESUME_FREE_KEYS | evaluation_keys(config)
        )
    return best if same else None


def evaluation_keys(config: Config) -> frozenset[str]:
    """``eval.*``: they change how a trained model is scored, never what is trained."""
    return frozenset(f"eval.{k}" for k in config.to_dict()["eval"])


def _get(values: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return values[section][key]


def ensure_base_learner(
    config: Config, run_dir: str | Path, *, device: str | None = None, progress: bool | None = None
) -> Path:
    """The stage-1 checkpoint for ``config``'s fold under ``run_dir``: reused when a finished
    one matches the config, resumed when interrupted, trained otherwise. A ``last.pt`` of
    other settings in ``run_dir`` is refused (``CheckpointError`` naming them)."""
    return _ensure(
        "base",
        config,
        Path(run_dir),
        device,
        lambda c: train_base(c, run_dir, resume=True, progress=progress),
    )


def ensure_meta_learner(
    config: Config,
    run_dir: str | Path,
    base_checkpoint: str | Path,
    *,
    device: str | None = None,
    progress: bool | None = None,
) -> Path:
    """The stage-2 checkpoint for ``config`` under ``run_dir`` (reused, resumed or trained)."""
    return _ensure(
        "meta",
        config,
        Path(run_dir),
        device,
        lambda c: train_meta(c, run_dir, base_checkpoint, resume=True, progress=progress),
    )


def _ensure(
    stage: ckpt.Stage,
    config: Config,
    run_dir: Path,
    device: str | None,
    train_stage: Callable[[Config], TrainResult],
) -> Path:
    if device is not None:
        config = config.with_overrides(**{"train.device": device})
    found = finished_checkpoint(run_dir, config, stage)
    return found if found is not None else train_stage(config).best


# --------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the base learner (stage 1) or the meta learner (stage 2)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stages = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, help_text in (
        ("base", "stage 1: the PSPNet base learner on the fold's base classes"),
        ("meta", "stage 2: HDMNet meta-training from a stage-1 checkpoint"),
    ):
        sub = stages.add_parser(stage, help=help_text, description=help_text)
        sub.add_argument(
            "--profile",
            default="cpu-tiny",
            type=profile_argument,
            metavar="NAME",
            help=f"configuration profile: {', '.join(sorted(PROFILES))} (default: cpu-tiny)",
        )
        sub.add_argument("--fold", type=int, default=None, help="data.fold (default: profile's)")
        sub.add_argument("--data-root", default=None, help="folder of prepared datasets")
        sub.add_argument(
            "--out", default=None, help="run folder (default: runs/train/<stage>-fold<F>[-<K>shot])"
        )
        if stage == "base":
            sub.add_argument(
                "--init",
                default=None,
                help="converted ImageNet backbone weights (convert-checkpoint)",
            )
        else:
            sub.add_argument(
                "--shots", type=int, default=None, help="data.shots (default: profile's)"
            )
            sub.add_argument(
                "--base-ckpt", required=True, help="stage-1 checkpoint (best.pt of `train base`)"
            )
            sub.add_argument(
                "--selection-split",
                choices=["novel-val", "base-val", "none"],
                default=None,
                help="split that selects best.pt; official novel-val uses the TEST classes "
                "(1,000 val episodes of the novel classes); base-val uses base classes only",
            )
            sub.add_argument(
                "--protocol",
                choices=["official", "fair"],
                default="official",
                help="fair = keep training images that show novel classes (as background) "
                "and select on base-val; official = BAM/HDMNet's filter and selection",
            )
        sub.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default=None)
        sub.add_argument("--amp", choices=["off", "bf16", "fp16"], default=None)
        sub.add_argument("--channels-last", action="store_true", default=None)
        sub.add_argument("--compile", action="store_true", default=None)
        sub.add_argument("--workers", type=int, default=None, help="data.num_workers")
        sub.add_argument("--grad-accum", type=int, default=None, help="train.grad_accum")
        sub.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
        sub.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
        )
        sub.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> Config:
    """The profile plus the flags (flags win over ``--set`` for the same key)."""
    overrides = parse_overrides(args.overrides)
    flag_keys = {
        "fold": "data.fold",
        "data_root": "data.root",
        "shots": "data.shots",
        "selection_split": "train.selection_split",
        "device": "train.device",
        "amp": "train.amp",
        "channels_last": "train.channels_last",
        "compile": "train.compile",
        "workers": "data.num_workers",
        "grad_accum": "train.grad_accum",
        "init": "model.pretrained",
    }
    if getattr(args, "protocol", "official") == "fair":
        overrides["data.filter_intersection"] = False
        overrides.setdefault("train.selection_split", "base-val")
    for attribute, key in flag_keys.items():
        value = getattr(args, attribute, None)
        if value is not None:
            overrides[key] = value
    return Config.from_profile(args.profile, **overrides)


def _main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    d = config.data
    default_name = (
        f"base-fold{d.fold}" if args.stage == "base" else f"meta-fold{d.fold}-{d.shots}shot"
    )
    run_dir = Path(args.out or Path("runs") / "train" / default_name)
    with output_folder_lock(run_dir):  # a second run into run_dir is refused
        if not args.resume and (run_dir / "last.pt").exists():
            raise ckpt.CheckpointError(
                f"{run_dir / 'last.pt'}: this folder holds a run already; pass --resume to "
                "continue it, or give a new run another --out (nothing was changed)"
            )
        if args.stage == "base":
            result = train_base(config, run_dir, resume=args.resume)
        else:
            result = train_meta(config, run_dir, args.base_ckpt, resume=args.resume)
    if result.progress.step and ckpt_is_main():
        print(json.dumps(result.summary() | {"history": result.progress.history[-3:]}, indent=2))
    return 0


def ckpt_is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
