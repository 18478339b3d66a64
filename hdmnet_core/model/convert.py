"""Import official checkpoints (and ImageNet backbones) into this workspace, and export back.

``python -m hdmnet_core convert-checkpoint SRC DST`` reads a PyTorch file and writes a
*workspace weights file* (a dict, see :func:`make_weights_file`) whose ``state_dict``
has this project's module names. Supported sources (reference §6), ``--kind``:

- ``hdmnet``: an official HDMNet checkpoint (``Pbihao/HDMNet``), whole model;
- ``pspnet``: a BAM base-learner (PSPNet) checkpoint: ``layer0..4``, ``ppm``, ``cls``;
- ``semseg-resnet``: the ImageNet deep-stem ResNet of PSPNet/semseg (``resnet50_v2.pth``,
  ``resnet101_v2.pth``: ``conv1, bn1, conv2, bn2, conv3, bn3, layer1..4, fc``);
- ``torchvision-resnet``: torchvision ImageNet ResNet-50 -> ``torchvision_resnet50``;
- ``torchvision-vgg``: torchvision ImageNet VGG16-bn -> ``vgg16_bn``.

``--kind auto`` (default) recognises them by their keys. Checkpoints may be wrapped in a
``state_dict`` entry and prefixed ``module.`` (DataParallel). Every key is renamed by a
readable table of :class:`NameRule` (official prefix -> our module path); the result is
checked against a freshly built model of the detected architecture, and missing keys,
unexpected keys and shape mismatches are reported by name. Partial results are refused
unless ``--allow-partial``. Keys that are dropped on purpose (ImageNet ``fc`` and VGG
``classifier``) are listed as dropped, never silently.

``--to-official`` reverses the renaming for a workspace file of an HDMNet or PSPNet,
so that ``official -> ours -> official`` gives back identical tensors.

Files are read with ``torch.load(weights_only=True)`` (no code runs) and written
atomically. Nothing is ever downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from hdmnet_core.atomic import atomic_write
from hdmnet_core.config import BackboneName, ModelConfig
from hdmnet_core.errors import UserError
from hdmnet_core.model.backbone import VGG16_SPLITS, build_backbone
from hdmnet_core.model.hdmnet import HDMNet
from hdmnet_core.model.pspnet import PSPNet

WEIGHTS_FORMAT = "hdmnet-workspace-weights"
WEIGHTS_VERSION = 1

SourceKind = Literal["hdmnet", "pspnet", "semseg-resnet", "torchvision-resnet", "torchvision-vgg"]
SOURCE_KINDS: tuple[str, ...] = (
    "hdmnet",
    "pspnet",
    "semseg-resnet",
    "torchvision-resnet",
    "torchvision-vgg",
)
Target = Literal["hdmnet", "pspnet", "backbone"]
TARGET_OF_KIND: dict[str, Target] = {
    "hdmnet": "hdmnet",
    "pspnet": "pspnet",
    "semseg-resnet": "backbone",
    "torchvision-resnet": "backbone",
    "torchvision-vgg": "backbone",
}


class ConversionError(UserError, ValueError):
    """A checkpoint cannot be read, recognised or converted; the message names the file."""


# ----------------------------------------------------------------------------- name rules
@dataclass(frozen=True)
class NameRule:
    """Rename keys starting with ``official`` to start with ``ours`` (and back).

    Templates may hold integer fields such as ``{i}``: ``"layer{n}."`` matches
    ``"layer3."`` and ``ours="backbone.layer{n}."`` then gives ``"backbone.layer3."``.
    The rest of the key after the matched prefix is kept unchanged.
    """

    official: str
    ours: str

    def to_ours(self, key: str) -> str | None:
        return _apply_template(self.official, self.ours, key)

    def to_official(self, key: str) -> str | None:
        return _apply_template(self.ours, self.official, key)


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>\\d+)" for i, part in enumerate(parts)
    )
    return re.compile(pattern)


def _apply_template(source: str, target: str, key: str) -> str | None:
    match = _template_regex(source).match(key)
    if match is None:
        return None
    return target.format(**match.groupdict()) + key[match.end() :]


def prefixed(rules: Iterable[NameRule], official: str, ours: str) -> list[NameRule]:
    """The same rules under an extra prefix on each side."""
    return [NameRule(official + r.official, ours + r.ours) for r in rules]


PSPNET_RULES: list[NameRule] = [
    NameRule("layer{n}.", "backbone.layer{n}."),
    NameRule("ppm.features.{i}.", "ppm.branches.{i}."),
    NameRule("cls.", "classifier."),
]
"""BAM PSPNet checkpoint -> :class:`PSPNet`."""

SEMSEG_RESNET_RULES: list[NameRule] = [
    NameRule("conv1.", "layer0.0."),
    NameRule("bn1.", "layer0.1."),
    NameRule("conv2.", "layer0.3."),
    NameRule("bn2.", "layer0.4."),
    NameRule("conv3.", "layer0.6."),
    NameRule("bn3.", "layer0.7."),
    NameRule("layer{n}.", "layer{n}."),
]
"""semseg ImageNet deep-stem ResNet (``resnet50_v2.pth``) -> :class:`Backbone`."""

TORCHVISION_RESNET_RULES: list[NameRule] = [
    NameRule("conv1.", "layer0.0."),
    NameRule("bn1.", "layer0.1."),
    NameRule("layer{n}.", "layer{n}."),
]
"""torchvision ResNet-50 -> ``torchvision_resnet50`` :class:`Backbone`."""

TORCHVISION_VGG_RULES: list[NameRule] = [
    NameRule(f"features.{index}.", f"layer{stage}.{index - start}.")
    for stage, (start, stop) in enumerate(VGG16_SPLITS)
    for index in range(start, stop)
]
"""torchvision VGG16-bn ``features.N`` -> ``layerS.(N - start of S)`` (official split)."""

DROPPED_PREFIXES: dict[str, tuple[str, ...]] = {
    "semseg-resnet": ("fc.",),
    "torchvision-resnet": ("fc.",),
    "torchvision-vgg": ("classifier.",),
}
"""ImageNet classification heads: not part of any backbone, dropped and reported."""

# HDMNet: the PSPNet part lives under PSPNET_ATTRIBUTE of our HDMNet. The official model
# splits ``cls`` into ``cls`` (indices 0, 1) and ``base_learnear`` (sic; indices 2..4).
PSPNET_ATTRIBUTE = "pspnet."


def hdmnet_rules() -> list[NameRule]:
    """Official HDMNet -> our ``HDMNet``: frozen PSPNet part, then the meta learner."""
    return [
        *prefixed(PSPNET_RULES[:2], "", PSPNET_ATTRIBUTE),
        NameRule("cls.0.", PSPNET_ATTRIBUTE + "classifier.0."),
        NameRule("cls.1.", PSPNET_ATTRIBUTE + "classifier.1."),
        NameRule("base_learnear.2.", PSPNET_ATTRIBUTE + "classifier.4."),
        *HDMNET_META_RULES,
    ]


ENCODER_LAYER_RULES: list[NameRule] = [
    NameRule("norm1.", "norm1."),
    NameRule("norm2.", "norm2."),
    NameRule("attn.attn.linear_q.", "attention.q_proj."),
    NameRule("attn.attn.linear_k.", "attention.k_proj."),
    NameRule("attn.attn.linear_v.", "attention.v_proj."),
    NameRule("attn.attn.linear_o.", "attention.out_proj."),
    NameRule("attn.sr.", "attention.reduce."),
    NameRule("attn.norm.", "attention.reduce_norm."),
    NameRule("ffn.layers.0.", "ffn.expand."),
    NameRule("ffn.layers.1.", "ffn.depthwise."),
    NameRule("ffn.layers.4.", "ffn.project."),
]
"""Inside one official ``TransformerEncoderLayer`` (hierarchy and matching alike)."""

MIX = "transformer.mix_transformer."
DOWN = MIX + "down_sample_layers.{i}."

HDMNET_META_RULES: list[NameRule] = [
    # decoupled hierarchy: [patch embed, encoder layer, encoder layer, norm] per stage
    NameRule(DOWN + "0.", "hierarchy.stages.{i}.patch_embed."),
    *prefixed(ENCODER_LAYER_RULES, DOWN + "1.", "hierarchy.stages.{i}.encoder_layers.0."),
    *prefixed(ENCODER_LAYER_RULES, DOWN + "2.", "hierarchy.stages.{i}.encoder_layers.1."),
    NameRule(DOWN + "3.", "hierarchy.stages.{i}.norm."),
    # correlation matching: [cross encoder layer, ConvModule(conv, bn)] per stage
    *prefixed(ENCODER_LAYER_RULES, MIX + "match_layers.{i}.0.", "matching.{i}.cross_layer."),
    NameRule(MIX + "match_layers.{i}.1.conv.", "matching.{i}.fuse.0."),
    NameRule(MIX + "match_layers.{i}.1.bn.", "matching.{i}.fuse.1."),
    # decoder
    NameRule(MIX + "parse_layers.{i}.", "decoder.stage_blocks.{i}."),
    NameRule(MIX + "cls.", "decoder.classifier."),
    # feature reduction and merging
    NameRule("down_query.", "query_reduce."),
    NameRule("down_supp.", "support_reduce."),
    NameRule("query_merge.", "query_merge."),
    NameRule("supp_merge.", "support_merge."),
    # BAM ensemble
    NameRule("gram_merge.", "ensemble.scene_merge."),
    NameRule("cls_merge.", "ensemble.base_merge."),
    NameRule("kshot_rw.", "ensemble.shot_weighting."),
]
"""Official HDMNet meta learner -> our :class:`~hdmnet_core.model.hdmnet.HDMNet`
(the table of ``hdmnet.py``'s docstring)."""


def rules_for(kind: str) -> list[NameRule]:
    if kind == "hdmnet":
        return hdmnet_rules()
    if kind == "pspnet":
        return PSPNET_RULES
    if kind == "semseg-resnet":
        return SEMSEG_RESNET_RULES
    if kind == "torchvision-resnet":
        return TORCHVISION_RESNET_RULES
    if kind == "torchvision-vgg":
        return TORCHVISION_VGG_RULES
    raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {list(SOURCE_KINDS)}")


def rename_to_ours(
    state: Mapping[str, torch.Tensor], rules: list[NameRule], dropped: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Apply the first matching rule to each key. Returns (renamed, dropped, unmatched)."""
    renamed: dict[str, torch.Tensor] = {}
    dropped_keys: list[str] = []
    unmatched: list[str] = []
    for key, value in state.items():
        if key.startswith(dropped):
            dropped_keys.append(key)
            continue
        new_key = next((k for r in rules if (k := r.to_ours(key)) is not None), None)
        if new_key is None:
            unmatched.append(key)
        else:
            renamed[new_key] = value
    return renamed, dropped_keys, unmatched


def rename_to_official(
    state: Mapping[str, torch.Tensor], rules: list[NameRule]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Inverse of :func:`rename_to_ours`. Returns (renamed, unmatched)."""
    renamed: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        new_key = next((k for r in rules if (k := r.to_official(key)) is not None), None)
        if new_key is None:
            unmatched.append(key)
        else:
            renamed[new_key] = value
    return renamed, unmatched


# ------------------------------------------------------------------------------- reading
def load_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` on CPU with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: the unpickler raises many kinds
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, truncated, or not saved "
            f"with torch.save; weights_only loading said: {first_line})"
        ) from exc


def unwrap_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """Take ``obj["state_dict"]`` if present, strip a ``module.`` prefix, check the values."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{where}: does not hold a state dict (a dict of named tensors)")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(
            f"{where}: entries {not_tensors[:5]} are not tensors; this is not a state dict"
        )
    keys = list(obj)
    if all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def detect_kind(state: Mapping[str, torch.Tensor], where: str) -> str:
    """Recognise a source checkpoint by its keys (see the module docstring)."""
    keys = set(state)
    if any(k.startswith("transformer.mix_transformer.") for k in keys):
        return "hdmnet"
    if any(k.startswith("ppm.features.") for k in keys) and "cls.0.weight" in keys:
        return "pspnet"
    if "features.0.weight" in keys:
        return "torchvision-vgg"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        kernel = tuple(state["conv1.weight"].shape[-2:])
        if kernel == (7, 7):
            return "torchvision-resnet"
        if kernel == (3, 3) and "conv3.weight" in keys:
            return "semseg-resnet"
    if any(k.startswith(("backbone.", "pspnet.")) for k in keys):
        raise ConversionError(
            f"{where}: looks like this workspace's own layout already; nothing to convert"
        )
    raise ConversionError(
        f"{where}: cannot recognise the checkpoint (first keys: {sorted(keys)[:5]}); "
        f"pass --kind, one of {list(SOURCE_KINDS)}"
    )


# ------------------------------------------------------------- architecture from weights
@dataclass
class Architecture:
    """What to build to hold a converted state dict."""

    target: Target
    backbone: str
    num_classes: int | None = None
    shots: int = 1
    num_stages: int = 3
    width: int = 64


def detect_backbone(state: Mapping[str, torch.Tensor], prefix: str, where: str) -> str:
    """Backbone name from our-layout keys ``{prefix}layer0.0.weight`` etc."""
    stem = state.get(f"{prefix}layer0.0.weight")
    if stem is None:
        raise ConversionError(f"{where}: no '{prefix}layer0.0.weight'; cannot tell the backbone")
    if f"{prefix}layer0.0.bias" in state:
        return "vgg16_bn"
    if tuple(stem.shape[-2:]) == (7, 7):
        return "torchvision_resnet50"
    if stem.shape[0] != 64:
        return "tiny"
    layer3_blocks = _count_indices(state, f"{prefix}layer3.")
    return "resnet101" if layer3_blocks > 6 else "resnet50"


def _count_indices(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pattern.match(k))})


def detect_architecture(
    state: Mapping[str, torch.Tensor], target: Target, where: str, shots: int | None = None
) -> Architecture:
    """Read backbone, classes, shots, stages and width off a state dict in OUR layout."""
    if target == "backbone":
        return Architecture("backbone", detect_backbone(state, "", where))
    if target == "pspnet":
        last = state.get("classifier.4.weight")
        if last is None:
            raise ConversionError(f"{where}: no 'classifier.4.weight' (cls.4); not a PSPNet")
        return Architecture(
            "pspnet", detect_backbone(state, "backbone.", where), int(last.shape[0])
        )
    psp = PSPNET_ATTRIBUTE
    last = state.get(psp + "classifier.4.weight")
    if last is None:
        raise ConversionError(f"{where}: no 'base_learnear.2.weight'; not an HDMNet checkpoint")
    backbone = detect_backbone(state, psp + "backbone.", where)
    arch = Architecture("hdmnet", backbone, int(last.shape[0]))
    arch.num_stages, arch.width, found_shots = hdmnet_meta_shape(state)
    if shots is not None and found_shots is not None and shots != found_shots:
        raise ConversionError(
            f"{where}: --shots {shots} but the checkpoint's k-shot weighting is for {found_shots}"
        )
    arch.shots = shots if shots is not None else (found_shots or 1)
    return arch


def hdmnet_meta_shape(state: Mapping[str, torch.Tensor]) -> tuple[int, int, int | None]:
    """(number of hierarchy stages, width, shots or None when 1-shot) of our layout."""
    num_stages = _count_indices(state, "hierarchy.stages.")
    projection = state.get("hierarchy.stages.0.patch_embed.projection.weight")
    width = int(projection.shape[0]) if projection is not None else 64
    shot_layer = state.get("ensemble.shot_weighting.0.weight")
    shots = int(shot_layer.shape[1]) if shot_layer is not None else None
    return num_stages, width, shots


def build_target(arch: Architecture) -> nn.Module:
    """The module a converted state dict must fit, built on the meta device (no memory)."""
    with torch.device("meta"):
        if arch.target == "backbone":
            return build_backbone(arch.backbone)
        assert arch.num_classes is not None
        if arch.target == "pspnet":
            return PSPNet(arch.backbone, arch.num_classes)
        return build_hdmnet(arch)


def build_hdmnet(arch: Architecture) -> nn.Module:
    """An ``HDMNet`` of the official design (ensemble on) with ``arch``'s sizes."""
    if not 1 <= arch.num_stages <= 4:
        raise ConversionError(f"checkpoint has {arch.num_stages} hierarchy stages; expected 1..4")
    assert arch.num_classes is not None
    backbone = cast(BackboneName, arch.backbone)
    config = ModelConfig(backbone=backbone, num_stages=arch.num_stages, width=arch.width)
    return HDMNet(config, num_base_classes=arch.num_classes - 1, shots=arch.shots)


# -------------------------------------------------------------------------------- checks
@dataclass
class KeyReport:
    """Differences between a state dict and a module, by name."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    """``"key: checkpoint (a, b) vs model (c, d)"``."""
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def lines(self, limit: int = 20) -> list[str]:
        out = []
        for title, names in (
            ("missing (in the model, not in the checkpoint)", self.missing),
            ("unexpected (in the checkpoint, not in the model)", self.unexpected),
            ("shape mismatch", self.mismatched),
            ("dropped on purpose (classification head)", self.dropped),
        ):
            if names:
                out.append(f"{title}: {len(names)}")
                out += [f"  {n}" for n in names[:limit]]
                if len(names) > limit:
                    out.append(f"  ... and {len(names) - limit} more")
        return out


def compare_state(state: Mapping[str, torch.Tensor], module: nn.Module) -> KeyReport:
    expected = module.state_dict()
    report = KeyReport()
    report.missing = [k for k in expected if k not in state]
    report.unexpected = [k for k in state if k not in expected]
    for key, value in state.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            report.mismatched.append(
                f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
            )
    return report


# ----------------------------------------------------------------------------- convert
@dataclass
class Conversion:
    weights: dict[str, Any]
    report: KeyReport
    kind: str
    arch: Architecture


def convert_state_dict(
    source: Any,
    kind: str = "auto",
    *,
    shots: int | None = None,
    allow_partial: bool = False,
    where: str = "checkpoint",
) -> Conversion:
    """Convert a loaded source object (raw file content) into a workspace weights dict."""
    state = unwrap_state_dict(source, where)
    if kind == "auto":
        kind = detect_kind(state, where)
    rules = rules_for(kind)
    renamed, dropped, unmatched = rename_to_ours(state, rules, DROPPED_PREFIXES.get(kind, ()))
    arch = detect_architecture(renamed, TARGET_OF_KIND[kind], where, shots)
    report = compare_state(renamed, build_target(arch))
    report.unexpected = unmatched + report.unexpected
    report.dropped = dropped
    if not report.ok and not allow_partial:
        raise ConversionError(
            "\n".join(
                [f"{where}: does not fit a {arch.target} ({arch.backbone}) exactly:"]
                + report.lines()
                + ["pass --allow-partial to write the matching part anyway"]
            )
        )
    if allow_partial:
        renamed = {k: v for k, v in renamed.items() if k not in set(report.unexpected)}
        bad_shapes = {m.split(":")[0] for m in report.mismatched}
        renamed = {k: v for k, v in renamed.items() if k not in bad_shapes}
    weights = make_weights_file(renamed, arch, source=where, source_kind=kind)
    return Conversion(weights, report, kind, arch)


def make_weights_file(
    state: dict[str, torch.Tensor], arch: Architecture, source: str, source_kind: str
) -> dict[str, Any]:
    """The workspace weights file: the state dict plus what is needed to rebuild the model."""
    return {
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "target": arch.target,
        "backbone": arch.backbone,
        "num_classes": arch.num_classes,
        "shots": arch.shots,
        "num_stages": arch.num_stages,
        "width": arch.width,
        "source": source,
        "source_kind": source_kind,
        "state_dict": {k: v.detach().clone().contiguous() for k, v in state.items()},
    }


def read_weights_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a workspace weights file written by ``convert-checkpoint``; checks its format."""
    obj = load_file(path)
    if not isinstance(obj, dict) or obj.get("format") != WEIGHTS_FORMAT:
        raise ConversionError(
            f"{path}: not a workspace weights file (run `python -m hdmnet_core "
            f"convert-checkpoint` on it first)"
        )
    if obj.get("version") != WEIGHTS_VERSION:
        raise ConversionError(f"{path}: weights file version {obj.get('version')!r} unsupported")
    return obj


def load_weights_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    allow_partial: bool = False,
    where: str = "weights",
) -> KeyReport:
    """Copy ``state`` into ``module``; refuse (naming keys) unless it fits or ``allow_partial``."""
    report = compare_state(state, module)
    if not report.ok and not allow_partial:
        raise ConversionError("\n".join([f"{where}: does not fit the model:"] + report.lines()))
    bad = set(report.unexpected) | {m.split(":")[0] for m in report.mismatched}
    module.load_state_dict({k: v for k, v in state.items() if k not in bad}, strict=False)
    return report


def export_official(weights: Mapping[str, Any], where: str = "weights") -> dict[str, Any]:
    """Workspace weights (HDMNet or PSPNet) -> ``{"epoch": 0, "state_dict": official}``."""
    target = weights.get("target")
    if target == "hdmnet":
        rules = hdmnet_rules()
    elif target == "pspnet":
        rules = PSPNET_RULES
    else:
        raise ConversionError(
            f"{where}: --to-official needs an HDMNet or PSPNet weights file, got {target!r}"
        )
    official, unmatched = rename_to_official(weights["state_dict"], rules)
    if unmatched:
        raise ConversionError(f"{where}: keys without an official name: {unmatched[:10]}")
    return {"epoch": 0, "state_dict": official}


def save_file(obj: Any, path: str | os.PathLike[str]) -> Path:
    return atomic_write(path, lambda handle: torch.save(obj, handle))


# ----------------------------------------------------------------------------------- CLI
def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert-checkpoint",
        help="import official HDMNet/BAM/ImageNet weights (or export back)",
        description=(
            "Rename the keys of an official checkpoint to this workspace's modules, check "
            "them against the model and write a weights file. With --to-official, do the "
            "reverse for a workspace HDMNet or PSPNet weights file."
        ),
    )
    parser.add_argument("src", help="source checkpoint (.pth)")
    parser.add_argument("dst", help="file to write (atomically)")
    parser.add_argument(
        "--kind", default="auto", choices=["auto", *SOURCE_KINDS], help="source kind"
    )
    parser.add_argument("--shots", type=int, default=None, help="K of an HDMNet checkpoint")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="write the matching keys even if some are missing, unexpected or mismatched",
    )
    parser.add_argument(
        "--to-official", action="store_true", help="export a workspace file to the official layout"
    )
    parser.set_defaults(func=run_convert_cli)


def run_convert_cli(args: argparse.Namespace) -> int:
    try:
        if args.to_official:
            weights = read_weights_file(args.src)
            save_file(export_official(weights, str(args.src)), args.dst)
            print(f"wrote official-layout {weights['target']} checkpoint {args.dst}")
            return 0
        conversion = convert_state_dict(
            load_file(args.src),
            args.kind,
            shots=args.shots,
            allow_partial=args.allow_partial,
            where=str(args.src),
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_file(conversion.weights, args.dst)
    arch = conversion.arch
    print(
        f"{args.src}: {conversion.kind} -> {arch.target} (backbone {arch.backbone}, "
        f"classes {arch.num_classes}, shots {arch.shots}); "
        f"{len(conversion.weights['state_dict'])} tensors written to {args.dst}"
    )
    for line in conversion.report.lines():
        print(line)
    return 0
