"""One configuration object with named profiles.

Every caller (notebooks' papermill ``parameters`` cell, the CLI, the tests, the
benchmarks) builds its settings the same way::

    cfg = Config.from_profile("cpu-tiny", **{"data.fold": 2, "train.max_steps": 50})

Overrides are dotted keys ``section.field``; a bare field name is accepted when it
is unique across the sections (``fold=2``). Unknown keys and bad values raise
:class:`ConfigError` with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

DatasetName = Literal["synthetic", "pascal", "coco", "fss1000"]
BackboneName = Literal["resnet50", "resnet101", "vgg16_bn", "tiny", "torchvision_resnet50"]


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


@dataclass
class DataConfig:
    dataset: DatasetName = "synthetic"
    root: str = "data"
    """Folder holding the prepared datasets (``<root>/synthetic``, ``<root>/pascal`` ...)."""
    fold: int = 0
    shots: int = 1
    train_size: int = 473
    """Training crops are resized directly to ``train_size`` x ``train_size`` (reference 4.6)."""
    eval_size: int = 473
    """Evaluation queries are resized directly to ``eval_size`` x ``eval_size`` (reference 2)."""
    coco_split: Literal["interleaved", "contiguous"] = "interleaved"
    """COCO-20i fold convention; ``interleaved`` is the official default ("use_split_coco")."""
    filter_intersection: bool = True
    """Drop training images that contain any novel-class pixel (official BAM/HDMNet default)."""
    min_class_area: int = 2 * 32 * 32
    """An (image, class) pair is usable when the class covers at least this many pixels."""
    scale_range: tuple[float, float] = (0.9, 1.1)
    rotate_degrees: float = 10.0
    num_workers: int = 0
    synthetic_images_train: int = 2000
    synthetic_images_val: int = 500
    synthetic_image_size: int = 96
    synthetic_seed: int = 0


@dataclass
class ModelConfig:
    backbone: BackboneName = "resnet50"
    num_stages: int = 3
    """Depth of the decoupled hierarchy (paper Table 4: S1..S4, official 3)."""
    width: int = 64
    matching: Literal["cosine", "dot"] = "cosine"
    matching_temperature: float = 0.1
    """t in Eq. 4: cosine scores are divided by t before the query-axis softmax."""
    distill_temperature: float = 1.0
    """T in Eq. 8: teacher and student maps are divided by T before the softmax."""
    distillation: bool = True
    ensemble: bool = True
    fix_bn: bool = True
    """Official: every BatchNorm stays in eval mode during meta-training (reference 4.6)."""
    kshot_weighting: Literal["official", "fixed"] = "official"
    """Official quirk (reference 4.4): shot weights follow the sorted order and the MLP is
    never trained. ``fixed`` un-sorts the weights and trains the MLP."""
    pretrained: str | None = None
    """Path of a converted checkpoint to start from (see ``convert-checkpoint``)."""
    exact_speedups: bool = True
    """Re-arrangements of the official computation with the same outputs up to float
    rounding (``hdmnet.DEFAULT_SPEEDUPS``: support work skipped where the official code
    multiplies it by a zero mask, the classifier conv over the pyramid branches at their
    pooled size, one hierarchy call). False runs the official dataflow step by step,
    for timing and for checking."""


@dataclass
class TrainConfig:
    seed: int = 321
    device: str = "auto"
    """``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda`` or ``mps``; nothing assumes CUDA."""
    epochs: int = 200
    max_steps: int | None = None
    """If set, stop after this many optimizer steps (CPU profiles count steps, not epochs)."""
    batch_size: int = 16
    """GLOBAL batch: episodes per optimizer step over all processes and accumulation steps.
    Official PASCAL: the shipped ``train.sh`` runs 4 processes x ``batch_size: 4`` = 16
    (COCO 4 x 6 = 24); each process gets ``batch_size / (world_size * grad_accum)``."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step (the same global batch on fewer devices)."""
    lr: float = 1e-4
    new_layer_lr_multiplier: float = 10.0
    """``down_*`` and ``*_merge`` layers train at ``lr`` times this (official: 10)."""
    weight_decay: float = 0.01
    poly_power: float = 0.9
    early_stop_patience: int = 80
    """Stop after this many validations without a new best (official: 80 epochs PASCAL)."""
    selection_split: Literal["novel-val", "base-val", "none"] = "novel-val"
    """Which split selects the best checkpoint. Official ``novel-val``: 1,000 episodes of the
    fold's NOVEL (test) classes on the val list, i.e. model selection on the test classes,
    which the BAM authors concede. ``base-val``: episodes of the base classes on the val
    images (no test class is seen before the final evaluation). ``none``: keep the last."""
    val_every: int | None = None
    """Validate every this many optimizer steps; ``None`` = after every epoch (official)."""
    val_episodes: int = 1000
    """Validation episodes (official 1,000 for PASCAL and COCO, reseeded every time)."""
    val_seed: int = 321
    """Validation episodes are drawn with this seed every time (official ``manual_seed``)."""
    checkpoint_every: int = 200
    """Also write ``last.pt`` every this many steps (0 = only at validations and the end),
    so that an interrupted run loses at most this many steps."""
    log_every: int = 10
    """Write the CSV / TensorBoard row of the loss terms every this many steps."""
    base_learner_epochs: int = 100
    """Stage 1 length in epochs over the train list (BAM: PASCAL 100, COCO 20)."""
    base_learner_steps: int = 0
    """If > 0, stage 1 runs this many steps instead of ``base_learner_epochs`` (CPU profiles)."""
    base_learner_lr: float = 2.5e-4
    """BAM ``train_base``: SGD lr 2.5e-4 for the backbone, 10x for the pyramid and classifier."""
    base_learner_head_lr_multiplier: float = 10.0
    base_learner_momentum: float = 0.9
    base_learner_weight_decay: float = 1e-4
    base_learner_batch_size: int = 12
    """Global stage-1 batch (BAM: 3 per GPU x 4 GPUs)."""
    base_learner_crop: int = 417
    """Stage-1 random crop size (BAM 417; the crop pads images with the mean, labels with 255)."""
    base_learner_scale_range: tuple[float, float] = (0.5, 2.0)
    base_learner_val_every: int | None = None
    """Stage-1 validation (base-class mIoU on the val split) every this many steps; None = per epoch."""
    base_learner_val_images: int | None = None
    """Score at most this many val images in stage-1 validation (None = all)."""
    amp: Literal["off", "bf16", "fp16"] = "off"
    """Autocast precision of the trainable part (fp16 uses a GradScaler)."""
    channels_last: bool = False
    compile: bool = False
    """``torch.compile`` the meta learner (speed only; results equal up to rounding)."""


@dataclass
class EvalConfig:
    episodes: int = 1000
    seeds: int = 10
    seed_generator: int = 123
    """numpy seed from which the per-run seeds are drawn with randint(0, 1000, seeds)."""
    batch_size: int = 1
    report: Literal["mean", "best"] = "mean"
    cache: Literal["auto", "on", "off"] = "auto"
    """Feature-cached evaluation (``engine/feature_cache.py``): the frozen features of every
    query image and (support image, class) pair are computed once and reused by every
    episode and seed. ``auto``: used when it fits ``cache_budget_gb`` (else the uncached
    path, with a message); ``on``: an error when it does not fit; ``off``: never."""
    cache_budget_gb: float = 16.0
    """The most memory (GPU, RAM or disk) the feature cache may take, in GB (1e9 bytes)."""
    cache_storage: Literal["auto", "device", "disk"] = "auto"
    """Where the cache lives: ``device`` (GPU memory, or RAM when evaluating on the CPU),
    ``disk`` (memory-mapped files under ``cache_dir``); ``auto``: the device when it fits."""
    cache_dir: str | None = None
    """Folder for a disk cache (default: ``feature_cache/`` inside the output folder)."""


@dataclass
class Config:
    profile: str = "pascal-r50"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_profile(cls, name: str, **overrides: Any) -> Config:
        if name not in PROFILES:
            raise ConfigError(
                f"unknown profile {name!r}{did_you_mean(name, sorted(PROFILES))}; choose "
                f"one of {sorted(PROFILES)}"
            )
        cfg = cls(profile=name)
        cfg = cfg.with_overrides(**PROFILES[name])
        return cfg.with_overrides(**overrides)

    def with_overrides(self, **overrides: Any) -> Config:
        """Return a copy with ``section.field`` (or unique ``field``) keys replaced."""
        new = dataclasses.replace(
            self,
            data=dataclasses.replace(self.data),
            model=dataclasses.replace(self.model),
            train=dataclasses.replace(self.train),
            eval=dataclasses.replace(self.eval),
        )
        for key, value in overrides.items():
            section_name, field_name = _resolve_key(key)
            section = getattr(new, section_name)
            hint = get_type_hints(type(section))[field_name]
            setattr(section, field_name, _coerce(f"{section_name}.{field_name}", value, hint))
        new.validate()
        return new

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Inverse of :meth:`to_dict` (used to restore the config stored in a checkpoint)."""
        profile = values.get("profile", "pascal-r50")
        flat: dict[str, Any] = {}
        for section in _SECTIONS:
            for key, value in values.get(section, {}).items():
                flat[f"{section}.{key}"] = value
        unknown = set(values) - set(_SECTIONS) - {"profile"}
        if unknown:
            raise ConfigError(f"unknown configuration section(s) {sorted(unknown)}")
        cfg = cls(profile=profile)
        return cfg.with_overrides(**flat)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        d, m, t, e = self.data, self.model, self.train, self.eval
        folds = 1 if d.dataset == "fss1000" else 4
        _check(
            0 <= d.fold < folds, "data.fold", d.fold, f"must be in 0..{folds - 1} for {d.dataset}"
        )
        _check(d.shots >= 1, "data.shots", d.shots, "must be at least 1")
        _check(d.train_size >= 32, "data.train_size", d.train_size, "must be at least 32")
        _check(d.eval_size >= 32, "data.eval_size", d.eval_size, "must be at least 32")
        _check(d.min_class_area >= 0, "data.min_class_area", d.min_class_area, "must be >= 0")
        lo, hi = d.scale_range
        _check(0 < lo <= hi, "data.scale_range", d.scale_range, "needs 0 < min <= max")
        _check(
            0 <= d.rotate_degrees <= 180,
            "data.rotate_degrees",
            d.rotate_degrees,
            "must be in [0, 180]",
        )
        _check(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
        _check(
            d.synthetic_images_train >= 20,
            "data.synthetic_images_train",
            d.synthetic_images_train,
            "must be >= 20",
        )
        _check(
            d.synthetic_images_val >= 20,
            "data.synthetic_images_val",
            d.synthetic_images_val,
            "must be >= 20",
        )
        _check(
            d.synthetic_image_size >= 32,
            "data.synthetic_image_size",
            d.synthetic_image_size,
            "must be >= 32",
        )
        _check(
            1 <= m.num_stages <= 4,
            "model.num_stages",
            m.num_stages,
            "must be in 1..4 (paper Table 4)",
        )
        _check(
            m.width >= 8 and m.width % 8 == 0,
            "model.width",
            m.width,
            "must be a positive multiple of 8",
        )
        _check(
            m.matching_temperature > 0,
            "model.matching_temperature",
            m.matching_temperature,
            "must be > 0",
        )
        _check(
            m.distill_temperature > 0,
            "model.distill_temperature",
            m.distill_temperature,
            "must be > 0",
        )
        _check(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
        _check(
            t.max_steps is None or t.max_steps >= 1,
            "train.max_steps",
            t.max_steps,
            "must be >= 1 or None",
        )
        _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
        _check(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "must be >= 1")
        _check(
            t.val_every is None or t.val_every >= 1,
            "train.val_every",
            t.val_every,
            "must be >= 1 or None",
        )
        _check(t.val_episodes >= 1, "train.val_episodes", t.val_episodes, "must be >= 1")
        _check(
            t.checkpoint_every >= 0, "train.checkpoint_every", t.checkpoint_every, "must be >= 0"
        )
        _check(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
        _check(
            t.device in ("auto", "cpu", "cuda", "mps"),
            "train.device",
            t.device,
            "must be one of auto, cpu, cuda, mps",
        )
        _check(t.base_learner_lr > 0, "train.base_learner_lr", t.base_learner_lr, "must be > 0")
        _check(
            t.base_learner_batch_size >= 1,
            "train.base_learner_batch_size",
            t.base_learner_batch_size,
            "must be >= 1",
        )
        _check(
            t.base_learner_crop >= 32,
            "train.base_learner_crop",
            t.base_learner_crop,
            "must be >= 32",
        )
        _check(
            t.base_learner_epochs >= 1,
            "train.base_learner_epochs",
            t.base_learner_epochs,
            "must be >= 1",
        )
        _check(t.lr > 0, "train.lr", t.lr, "must be > 0")
        _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
        _check(
            t.base_learner_steps >= 0,
            "train.base_learner_steps",
            t.base_learner_steps,
            "must be >= 0",
        )
        _check(e.episodes >= 1, "eval.episodes", e.episodes, "must be >= 1")
        _check(e.seeds >= 1, "eval.seeds", e.seeds, "must be >= 1")
        _check(e.batch_size >= 1, "eval.batch_size", e.batch_size, "must be >= 1")
        _check(e.seed_generator >= 0, "eval.seed_generator", e.seed_generator, "must be >= 0")
        _check(e.cache_budget_gb > 0, "eval.cache_budget_gb", e.cache_budget_gb, "must be > 0")
        _check(
            e.cache_dir is None or e.cache_dir.strip() != "",
            "eval.cache_dir",
            e.cache_dir,
            "must be a folder path or None",
        )


_SECTIONS = ("data", "model", "train", "eval")
_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}


def parse_assignments(
    pairs: Sequence[str], flag: str, placeholder: str, example: str
) -> dict[str, Any]:
    """``["a=1", "b=x"]`` given to ``flag`` -> ``{"a": 1, "b": "x"}``; values are parsed as
    JSON when they can be (numbers, booleans, null, lists), else kept as strings. A pair
    without ``=`` or without a name is a :class:`ConfigError` showing ``example``."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"{flag} {pair!r}: expected {placeholder}=VALUE, e.g. {example}")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["data.fold=2", "train.lr=5e-4"]`` (the CLI's ``--set KEY=VALUE``) -> dict."""
    return parse_assignments(pairs, "--set", "KEY", "data.fold=2")


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def all_keys() -> list[str]:
    """Every ``section.field`` configuration key."""
    return [f"{s}.{f.name}" for s, typ in _SECTION_TYPES.items() for f in dataclasses.fields(typ)]


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` naming the close matches of a mistyped ``name``
    (difflib), else ``""``."""
    found = difflib.get_close_matches(name, list(dict.fromkeys(choices)), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(map(repr, found))}?)" if found else ""


def profile_argument(name: str) -> str:
    """argparse ``type=`` of ``--profile``: a known profile, else an error naming the close
    matches (argparse's own ``choices`` message lists them without a suggestion)."""
    if name not in PROFILES:
        import argparse

        raise argparse.ArgumentTypeError(
            f"unknown profile {name!r}{did_you_mean(name, sorted(PROFILES))}; choose one of "
            f"{', '.join(sorted(PROFILES))}"
        )
    return name


def _unknown_key(key: str, why: str = "") -> ConfigError:
    keys = all_keys()
    bare = [k.partition(".")[2] for k in keys]
    hint = did_you_mean(key, keys if "." in key else bare)
    return ConfigError(
        f"unknown configuration key {key!r}{why}{hint}; the keys are the fields of the "
        "sections in hdmnet_core/config.py (Config.from_profile(name).to_dict() lists them)"
    )


def _resolve_key(key: str) -> tuple[str, str]:
    if "." in key:
        section, _, name = key.partition(".")
        if section not in _SECTION_TYPES:
            raise _unknown_key(key, f": no section {section!r} (sections {list(_SECTION_TYPES)})")
        if name not in {f.name for f in dataclasses.fields(_SECTION_TYPES[section])}:
            raise _unknown_key(key)
        return section, name
    owners = [
        s for s, typ in _SECTION_TYPES.items() if key in {f.name for f in dataclasses.fields(typ)}
    ]
    if not owners:
        raise _unknown_key(key)
    if len(owners) > 1:
        raise ConfigError(
            f"ambiguous configuration key {key!r}: write one of {[f'{s}.{key}' for s in owners]}"
        )
    return owners[0], key


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type hint, converting the lossless cases."""
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: invalid value")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r}: must be one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(
                f"{key}={value!r}: must be a pair like {tuple(a.__name__ for a in args)}"
            )
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}={value!r}: must be true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: must be an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: must be an integer")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: must be a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: must be a number")
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: must be a string")
        return value
    return value


PROFILES: dict[str, dict[str, Any]] = {
    # This machine kind: 2 CPU cores, minutes per stage, synthetic benchmark at 128 x 128
    # (16 x 16 maps at output stride 8: 96 px capped mIoU at 80.5 and the course at +2 points
    # over the training-free baselines, docs/benchmarks.md "Does the CPU default learn?").
    "cpu-tiny": {
        "data.dataset": "synthetic",
        "data.train_size": 128,
        "data.eval_size": 128,
        "data.synthetic_image_size": 128,
        "data.min_class_area": 150,  # synthetic.scaled_min_area(128): 2*32*32 as a share of 473^2
        "model.backbone": "tiny",
        "model.width": 32,
        "train.batch_size": 8,  # twice the updates of batch 16 for the same episodes: +3 points
        "train.max_steps": 2000,
        "train.val_every": 500,
        "train.val_episodes": 300,
        "train.checkpoint_every": 200,
        "train.base_learner_steps": 1000,
        "train.base_learner_lr": 0.05,
        "train.base_learner_batch_size": 16,
        "train.base_learner_crop": 128,
        "train.base_learner_scale_range": (0.75, 1.5),
        "train.base_learner_val_every": 500,
        "train.base_learner_val_images": 200,
        "train.lr": 1e-3,
        "train.early_stop_patience": 1000,
        "eval.episodes": 500,
        "eval.seeds": 5,
    },
    # Full size, GPU: PASCAL-5i with the deep-stem ResNet-50 (official recipe).
    "pascal-r50": {
        "data.dataset": "pascal",
        "data.train_size": 473,
        "data.eval_size": 473,
        "model.backbone": "resnet50",
        "train.epochs": 200,
        "train.batch_size": 16,
        "eval.episodes": 1000,
        "eval.seeds": 10,
    },
    "pascal-r101": {
        "data.dataset": "pascal",
        "data.train_size": 473,
        "data.eval_size": 473,
        "model.backbone": "resnet101",
        "train.epochs": 200,
        "train.batch_size": 16,
    },
    "pascal-vgg": {
        "data.dataset": "pascal",
        "data.train_size": 473,
        "data.eval_size": 473,
        "model.backbone": "vgg16_bn",
        "train.epochs": 200,
        "train.batch_size": 16,
    },
    # Full size, GPU: COCO-20i (interleaved folds), 633 x 633, batch 6 per GPU, 50 epochs.
    "coco-r50": {
        "data.dataset": "coco",
        "data.train_size": 633,
        "data.eval_size": 633,
        "data.scale_range": (0.8, 1.25),
        "model.backbone": "resnet50",
        "train.epochs": 50,
        "train.batch_size": 24,
        "train.early_stop_patience": 75,
        "train.base_learner_epochs": 20,
        "eval.episodes": 10000,
        "eval.seeds": 10,
    },
    "coco-vgg": {
        "data.dataset": "coco",
        "data.train_size": 633,
        "data.eval_size": 633,
        "data.scale_range": (0.8, 1.25),
        "model.backbone": "vgg16_bn",
        "train.epochs": 50,
        "train.batch_size": 24,
        "train.early_stop_patience": 75,
        "train.base_learner_epochs": 20,
        "eval.episodes": 10000,
    },
}
