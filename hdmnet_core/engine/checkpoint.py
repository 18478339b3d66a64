"""Training checkpoints that never lose work.

One file format for both stages (``stage`` = ``"base"`` or ``"meta"``), a dict of plain
values and tensors, so it loads with ``torch.load(weights_only=True)`` (no pickled code
runs):

| key | what |
|---|---|
| ``format``, ``version`` | :data:`CHECKPOINT_FORMAT`, :data:`CHECKPOINT_VERSION` |
| ``stage`` | ``"base"`` (PSPNet) or ``"meta"`` (HDMNet) |
| ``config`` | the full :class:`~hdmnet_core.config.Config` as a dict |
| ``architecture`` | backbone, classes, shots, stages, width (checked on load) |
| ``code_version`` | package version and git commit that wrote it |
| ``model`` | the state dict |
| ``optimizer``, ``scheduler``, ``grad_scaler`` | their state dicts (``None`` in ``best``) |
| ``rng`` | torch CPU (and CUDA) generators, numpy's and Python's global state |
| ``progress`` | step, epoch, batch position, best score and step, early-stopping counter, finished |

Files are written atomically (:mod:`hdmnet_core.atomic`): after a crash or ``kill -9`` the
previous ``last.pt`` is still whole. A training run keeps ``last.pt`` (everything needed to
resume bit-exactly) and ``best.pt`` (the selected model).
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import nn

import hdmnet_core
from hdmnet_core.atomic import atomic_write
from hdmnet_core.config import Config, ConfigError
from hdmnet_core.engine.build import build_base_learner, build_meta_model, num_base_classes
from hdmnet_core.errors import UserError
from hdmnet_core.model.convert import compare_state
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.pspnet import PSPNet

CHECKPOINT_FORMAT = "hdmnet-workspace-checkpoint"
CHECKPOINT_VERSION = 1
Stage = Literal["base", "meta"]
PROJECT_ROOT = Path(__file__).resolve().parents[2]

RESUME_FREE_KEYS: frozenset[str] = frozenset(
    {"data.root", "data.num_workers", "train.compile", "train.checkpoint_every", "eval.batch_size"}
)
"""Settings that may differ between a run and its resumption: they change where data is
read from or how fast, never what is computed."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, unreadable, of another kind, or does not fit the run."""


@dataclass
class Progress:
    """Where a training run stands (saved in every checkpoint)."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch (0-based)."""
    batch_in_epoch: int = 0
    """Batches of the current epoch already consumed."""
    best_score: float = float("-inf")
    best_step: int = -1
    validations_since_best: int = 0
    """Early-stopping counter: validations without a new best."""
    finished: bool = False
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    """One entry per validation: step, epoch, score."""


# ------------------------------------------------------------------------- versions
def code_version() -> dict[str, str]:
    """The package version and the git commit of the working tree (``unknown`` outside git)."""
    commit = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": hdmnet_core.__version__, "commit": commit}


def architecture_of(config: Config, stage: Stage) -> dict[str, Any]:
    """What the state dict's shapes depend on; compared before any weight is loaded."""
    m = config.model
    arch: dict[str, Any] = {
        "stage": stage,
        "backbone": m.backbone,
        "num_classes": num_base_classes(config) + 1,
    }
    if stage == "meta":
        arch.update(
            shots=config.data.shots,
            num_stages=m.num_stages,
            width=m.width,
            ensemble=m.ensemble,
            kshot_weighting=m.kshot_weighting,
        )
    return arch


# ----------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every global generator a training step may draw from, as weights-only values."""
    # the legacy global generator: saved because user code (augmentations) may draw from it
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    random.setstate(_as_python_random_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_random_state(value: Any) -> tuple[Any, ...]:
    version, internal, gauss = value
    return (int(version), tuple(int(v) for v in internal), gauss)


# ------------------------------------------------------------------------- writing
def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    stage: Stage,
    config: Config,
    model: nn.Module,
    progress: Progress,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    with_rng: bool = True,
) -> Path:
    """Write a checkpoint atomically (the previous file stays valid until the move)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "stage": stage,
        "config": config.to_dict(),
        "architecture": architecture_of(config, stage),
        "code_version": code_version(),
        "model": {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": grad_scaler.state_dict() if grad_scaler is not None else None,
        "rng": rng_state() if with_rng else None,
        "progress": asdict(progress),
    }
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DDP / ``torch.compile`` wrappers."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(inner, "_orig_mod", inner)  # torch.compile


# ------------------------------------------------------------------------- reading
def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a workspace checkpoint with ``weights_only=True``; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # the unpickler raises many kinds for corrupt files
        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt, or holding objects that "
            f"weights-only loading refuses: {said})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not a training checkpoint of this workspace (official or converted "
            "weights go through `python -m hdmnet_core convert-checkpoint`)"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')!r}; this code reads "
            f"version {CHECKPOINT_VERSION}"
        )
    return payload


def checkpoint_config(payload: dict[str, Any], where: str) -> Config:
    """The :class:`Config` a checkpoint was trained with."""
    try:
        return Config.from_dict(payload["config"])
    except ConfigError as err:
        raise CheckpointError(f"{where}: stored configuration is invalid here: {err}") from err


def progress_of(payload: dict[str, Any]) -> Progress:
    return Progress(**payload["progress"])


def config_differences(stored: Config, current: Config, ignore: frozenset[str]) -> list[str]:
    """``["section.key: checkpoint X vs run Y", ...]`` for every differing setting."""
    a, b = stored.to_dict(), current.to_dict()
    out = []
    for section in ("data", "model", "train", "eval"):
        for key in a[section]:
            name = f"{section}.{key}"
            if name in ignore:
                continue
            if a[section][key] != b[section].get(key):
                out.append(f"{name}: checkpoint {a[section][key]!r} vs run {b[section].get(key)!r}")
    if stored.profile != current.profile and "profile" not in ignore:
        out.insert(0, f"profile: checkpoint {stored.profile!r} vs run {current.profile!r}")
    return out


def check_stage(payload: dict[str, Any], stage: Stage, where: str) -> None:
    if payload.get("stage") != stage:
        raise CheckpointError(
            f"{where}: is a {payload.get('stage')!r} checkpoint; this needs a {stage!r} one "
            "(stage 1 = base learner, stage 2 = meta learner)"
        )


def check_architecture(payload: dict[str, Any], config: Config, where: str) -> None:
    """Refuse a checkpoint whose architecture differs from ``config``'s, naming the keys."""
    stage = payload["stage"]
    expected = architecture_of(config, stage)
    stored = payload.get("architecture", {})
    wrong = [
        f"{k}: checkpoint {stored.get(k)!r} vs run {v!r}"
        for k, v in expected.items()
        if stored.get(k) != v
    ]
    if wrong:
        raise CheckpointError(
            f"{where}: another architecture than this run:\n  " + "\n  ".join(wrong)
        )


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``state`` into ``module`` or raise naming every missing, unexpected or mis-shaped key."""
    report = compare_state(state, module)
    if not report.ok:
        raise CheckpointError(
            "\n".join([f"{where}: weights do not fit the model:"] + report.lines())
        )
    module.load_state_dict(state)


def load_pspnet(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> PSPNet:
    """The trained stage-1 base learner of a ``base`` checkpoint, in eval mode."""
    where = str(path)
    payload = read_checkpoint(path, map_location)
    check_stage(payload, "base", where)
    config = checkpoint_config(payload, where)
    model = build_base_learner(config)
    load_model_state(model, payload["model"], where)
    return model.eval()


def load_trained_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[HDMNet, Config]:
    """The trained HDMNet of a ``meta`` checkpoint (eval mode) and the config it used."""
    where = str(path)
    payload = read_checkpoint(path, map_location)
    check_stage(payload, "meta", where)
    config = checkpoint_config(payload, where)
    check_architecture(payload, config, where)
    model = build_meta_model(config)
    load_model_state(model, payload["model"], where)
    return model.eval(), config
