"""Feature-cached evaluation: the frozen part of HDMNet computed once per image, reused by
every episode and every seed (issue 9, item 7).

In evaluation the frozen PSPNet (backbone, pyramid pooling, ``feat5``) gives the same
result for a query image in every episode (the evaluation transform is a deterministic
resize), and the same result for a (support image, class) pair (the support is multiplied
by its class mask before the backbone). It is about 95 % of an evaluation forward at
473 x 473. The cache stores, for the images that the planned episodes use, what the rest
of the model reads of them, in the form it reads it:

| entry | stored | where the model reads it |
|---|---|---|
| query image | ``mid`` = ``cat(layer3, layer2)`` (C, h, w) | ``query_reduce`` |
| | ``layer2_gram``: Gram matrix of ``layer2`` (C, C) | scene difference |
| | ``layer4``, ``feat5`` (C, h, w) | prior masks; base learner (``feat5``) |
| (support image, class) | ``mid``, ``layer2_gram`` as for the query | ``support_reduce``; scene difference |
| | ``layer4``, ``feat5`` at the mask's foreground positions only (C, n_fg) | prior masks |

The priors multiply the support ``layer4`` / ``feat5`` by the nearest-resized mask before
anything else (official ``get_similarity``), so only the foreground positions are kept.
With the ``foreground_prior`` speed-up the priors read exactly these columns
(:class:`~hdmnet_core.model.priors.ForegroundColumns`, the tensor they would gather from
the full maps); without it they are scattered back into zero maps, which gives the
official-order priors what they compute from the full maps. ``layer0`` / ``layer1`` are
never read after the backbone and are not stored. Per episode,
:meth:`HDMNet.forward_from_features` then runs exactly the functions of the uncached
forward: priors, base learner, meta learner, ensemble.

Exactness: each image's features are computed alone (a batch of one). The uncached
forward computes the K supports of an episode as one batch, and a batched conv can round
differently (measured up to 5e-6 on the tiny backbone's plain path); with
``inference_copy`` on the CPU (one image per backbone call) the 1-shot, batch-1 path is
bit-identical. The tests check identical intersection and union sums on a small set.

Keys: the cache is keyed by query image (source position), by (support image, class),
and as a whole by :func:`frozen_fingerprint` (a hash of the frozen weights of the model
that computes them, the exact speed-ups that change them, the precision and the device
kind) and by the source and evaluation size. During meta-training the frozen part does
not change, so a cache built once serves every validation run;
:meth:`FeatureCache.check_serves` refuses a model with other frozen weights.

Memory (:meth:`CachePlan.describe` prints it before anything is built): at 473 x 473 with
ResNet-50 a query image takes 60 MB in fp32 and a support pair 23 MB plus 10 KB per
foreground position (the Gram matrix is 1 MB of each). Storage: the GPU (or RAM when evaluating on the CPU) when it fits,
else memory-mapped files on disk; when the plan exceeds ``eval.cache_budget_gb`` the
evaluation falls back to the uncached path with a message (``eval.cache="on"`` makes
that an error).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from hdmnet_core.config import ConfigError
from hdmnet_core.data.episodes import EpisodeDataset, binary_mask
from hdmnet_core.data.transforms import EvalTransform
from hdmnet_core.model.ensemble import gram_matrix
from hdmnet_core.model.hdmnet import HDMNet, mid_features
from hdmnet_core.model.inference import inference_copy
from hdmnet_core.model.priors import ForegroundColumns

FULL_ENTRIES: tuple[str, ...] = ("mid", "layer2_gram")
"""Stored whole for queries and supports: the mid features and the scene difference's
Gram matrix."""

PRIOR_LAYERS: tuple[str, ...] = ("layer4", "feat5")
"""Full maps for queries; foreground positions only for supports (read by the priors)."""

CACHED_ENTRIES: tuple[str, ...] = FULL_ENTRIES + PRIOR_LAYERS

FROZEN_SPEEDUPS: tuple[str, ...] = ("support_feat5_in_box", "pooled_branch_conv")
"""Exact speed-ups that change how the frozen features are computed (float rounding)."""

Storage = Literal["device", "disk"]
SupportKey = tuple[int, int]
"""(source position of the support image, episode class id)."""

GB = 1e9


# ------------------------------------------------------------------------ helpers
def cached_entries(features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the cache stores of frozen features (each (N, ...)): :data:`CACHED_ENTRIES`."""
    return {
        "mid": mid_features(features),  # (N, C2 + C3, h, w)
        "layer2_gram": gram_matrix(features["layer2"]),  # (N, C2, C2)
        "layer4": features["layer4"],
        "feat5": features["feat5"],
    }


def foreground_positions(support_fg: torch.Tensor, size: tuple[int, int]) -> list[torch.Tensor]:
    """(N, H, W) masks -> per mask the flat positions (ascending) on an ``h x w`` grid that
    are foreground after nearest resizing, exactly as :func:`~hdmnet_core.model.priors.prior_mask`
    resizes them."""
    grid = F.interpolate(support_fg[:, None].float(), size=size, mode="nearest")  # (N,1,h,w)
    flat = grid.flatten(1) != 0  # (N, h*w)
    return [row.nonzero().flatten() for row in flat]


def resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """(H, W) uint8 -> (size, size) int64 with the evaluation transform's nearest resize."""
    resized = TF.resize(
        tv_tensors.Mask(torch.from_numpy(mask.copy())),
        [size, size],
        interpolation=TF.InterpolationMode.NEAREST,
    )
    return resized.as_subclass(torch.Tensor).to(torch.int64)


def frozen_fingerprint(model: HDMNet, amp: str, device: torch.device) -> str:
    """Hash of what determines the cached features: the frozen weights (PSPNet state dict
    of the model that computes them), the frozen speed-ups, precision and device kind."""
    digest = hashlib.sha256()
    used = sorted(set(FROZEN_SPEEDUPS) & model.speedups)
    digest.update(repr((model.pspnet.backbone_name, used, amp, device.type)).encode())
    digest.update(type(model.pspnet.backbone).__name__.encode())
    for name, tensor in sorted(model.pspnet.state_dict().items()):
        if tensor.layout != torch.strided:  # oneDNN blocked weights of inference_copy
            tensor = tensor.to_dense()
        value = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(value.dtype).encode())
        digest.update(repr(tuple(value.shape)).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluation_model(model: HDMNet, device: torch.device, fast: bool = True) -> HDMNet:
    """The model that evaluates: ``inference_copy(model)`` on ``device`` (``fast``), or
    ``model`` itself moved to ``device``. An inference copy is used as it is."""
    if model.inference_only:
        return model
    model = model.to(device)
    return inference_copy(model) if fast else model


def autocast(device: torch.device, amp: str) -> torch.autocast:
    """``torch.autocast`` for ``amp`` in off|bf16|fp16 (disabled for ``off``)."""
    if amp not in ("off", "bf16", "fp16"):
        raise ConfigError(f"amp={amp!r}: choose one of off, bf16, fp16")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "off")


def _eval_size(dataset: EpisodeDataset) -> int:
    if not isinstance(dataset.transform, EvalTransform):
        raise ValueError(
            "feature cache: the episodes must use the deterministic EvalTransform (got "
            f"{type(dataset.transform).__name__}); augmented episodes cannot be cached"
        )
    return dataset.transform.size


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class CachePlan:
    """Which entries a set of episodes needs and how many bytes they take."""

    source_name: str
    eval_size: int
    queries: tuple[int, ...]
    supports: tuple[SupportKey, ...]
    layer_shapes: dict[str, tuple[int, ...]]
    """Shape of each cached entry for one image at ``eval_size``: (C, h, w), or (C, C) for
    ``layer2_gram``."""
    support_foreground: dict[SupportKey, dict[str, int]]
    """Foreground positions of each support pair on each prior layer's grid."""
    dtypes: dict[str, torch.dtype]
    """dtype of each cached layer (as computed: e.g. fp32 backbone maps and a bf16
    ``feat5`` under CPU autocast with the oneDNN backbone)."""

    def buffer_dtypes(self) -> dict[str, torch.dtype]:
        """dtype of each stored buffer (``query/mid`` ... ``support/feat5``)."""
        return {f"{kind}/{layer}": self.dtypes[layer]
                for kind in ("query", "support") for layer in CACHED_ENTRIES}  # fmt: skip

    def buffer_bytes(self) -> dict[str, int]:
        sizes = self.buffer_dtypes()
        return {
            name: n * torch.empty((), dtype=sizes[name]).element_size()
            for name, n in self.elements().items()
        }

    def elements(self) -> dict[str, int]:
        """Elements of each stored buffer (``query/mid`` ... ``support/feat5``)."""
        sizes: dict[str, int] = {}
        for layer in CACHED_ENTRIES:
            shape = self.layer_shapes[layer]
            sizes[f"query/{layer}"] = len(self.queries) * math.prod(shape)
            if layer in FULL_ENTRIES:
                sizes[f"support/{layer}"] = len(self.supports) * math.prod(shape)
            else:
                positions = sum(counts[layer] for counts in self.support_foreground.values())
                sizes[f"support/{layer}"] = positions * shape[0]
        return sizes

    @property
    def nbytes(self) -> int:
        return sum(self.buffer_bytes().values())

    def describe(self) -> str:
        sizes = self.buffer_bytes()
        queries = sum(v for k, v in sizes.items() if k.startswith("query/"))
        supports = sum(v for k, v in sizes.items() if k.startswith("support/"))
        dtypes = sorted({str(d).removeprefix("torch.") for d in self.dtypes.values()})
        return (
            f"feature cache: {len(self.queries)} query images ({queries / GB:.2f} GB) + "
            f"{len(self.supports)} (support image, class) pairs ({supports / GB:.2f} GB) "
            f"= {self.nbytes / GB:.2f} GB in {'/'.join(dtypes)} "
            f"at {self.eval_size} x {self.eval_size}"
        )


def plan_feature_cache(
    model: HDMNet,
    datasets: Sequence[EpisodeDataset],
    *,
    device: torch.device,
    amp: str = "off",
    episode_indices: Sequence[int] | None = None,
) -> CachePlan:
    """Entries needed by ``datasets`` (e.g. one per seed, same source and size) and their
    size. Reads only masks; ``episode_indices``: this process's shard (default: all)."""
    if not datasets:
        raise ValueError("plan_feature_cache: no episode datasets given")
    first = datasets[0]
    size = _eval_size(first)
    for dataset in datasets[1:]:
        if dataset.source is not first.source or _eval_size(dataset) != size:
            raise ValueError("plan_feature_cache: every dataset must share one source and size")
    queries: dict[int, None] = {}
    supports: dict[SupportKey, None] = {}
    for dataset in datasets:
        indices = range(len(dataset)) if episode_indices is None else episode_indices
        for i in indices:
            spec = dataset.episode_spec(i)
            queries.setdefault(spec.query)
            for s in spec.supports:
                supports.setdefault((s, spec.class_id))
    layer_shapes, dtypes = _probe_shapes(model, size, device, amp)
    source = first.source
    foreground: dict[SupportKey, dict[str, int]] = {}
    for image, class_id in supports:
        mask = resize_mask(binary_mask(source.load_mask(image), class_id), size)
        fg = (mask == 1).float()[None]
        grids = {layer: (layer_shapes[layer][1], layer_shapes[layer][2]) for layer in PRIOR_LAYERS}
        foreground[(image, class_id)] = {
            layer: int(foreground_positions(fg, grid)[0].numel()) for layer, grid in grids.items()
        }
    return CachePlan(
        source.name, size, tuple(queries), tuple(supports), layer_shapes, foreground, dtypes
    )


def _probe_shapes(
    model: HDMNet, size: int, device: torch.device, amp: str
) -> tuple[dict[str, tuple[int, ...]], dict[str, torch.dtype]]:
    """Shapes and dtypes of the cached entries, from one zero image through the frozen part."""
    with torch.no_grad(), autocast(device, amp):
        image = torch.zeros(1, 3, size, size, device=device)
        entries = cached_entries(model.pspnet.frozen_features(image))
    shapes = {name: tuple(entries[name].shape[1:]) for name in CACHED_ENTRIES}
    dtypes = {name: entries[name].dtype for name in CACHED_ENTRIES}
    return shapes, dtypes


# ------------------------------------------------------------------------ storage
def choose_storage(
    nbytes: int, device: torch.device, budget_gb: float, preferred: str, folder: Path
) -> tuple[Storage | None, str]:
    """Where ``nbytes`` of features can live: ``(storage or None, the reason)``."""
    if nbytes > budget_gb * GB:
        return None, f"{nbytes / GB:.2f} GB exceeds eval.cache_budget_gb={budget_gb:g}"
    device_free = _device_free_bytes(device)
    if preferred in ("auto", "device") and device_free is not None and nbytes <= device_free:
        return "device", f"on {device.type} ({device_free / GB:.1f} GB usable)"
    if preferred == "device":
        have = "unknown" if device_free is None else f"{device_free / GB:.1f} GB"
        return None, f"{nbytes / GB:.2f} GB does not fit the {device.type} memory ({have} usable)"
    existing = folder
    while not existing.exists():
        existing = existing.parent
    disk_free = shutil.disk_usage(existing).free * 0.9
    if nbytes <= disk_free:
        return "disk", f"memory-mapped under {folder} ({disk_free / GB:.1f} GB free)"
    return None, f"{nbytes / GB:.2f} GB does not fit on disk under {folder}"


def _device_free_bytes(device: torch.device) -> float | None:
    """Memory the cache may use on ``device``: free GPU memory less headroom for the
    model's activations, or half the available RAM for the CPU; None if unknown (MPS)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return float(free - max(4 * GB, 0.2 * total))
    if device.type == "cpu":
        try:
            return 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


class _Buffers:
    """One flat 1-D tensor per stored layer: on the device, or a memory-mapped file."""

    def __init__(
        self,
        elements: dict[str, int],
        dtypes: dict[str, torch.dtype],
        storage: Storage,
        device: torch.device,
        folder: Path,
    ) -> None:
        self.storage = storage
        self.folder: Path | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        if storage == "device":
            for name, n in elements.items():
                self.tensors[name] = torch.empty(n, dtype=dtypes[name], device=device)
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="features-", dir=folder))
        weakref.finalize(self, shutil.rmtree, self.folder, True)
        for name, n in elements.items():
            dtype = dtypes[name]
            numpy_dtype = {torch.float32: np.float32, torch.float16: np.float16}.get(
                dtype, np.uint16
            )  # bf16 is stored as its 16 bits
            path = self.folder / (name.replace("/", "-") + ".bin")
            array = np.memmap(path, dtype=numpy_dtype, mode="w+", shape=(max(n, 1),))
            tensor = torch.from_numpy(array)
            self.tensors[name] = tensor.view(dtype) if numpy_dtype is np.uint16 else tensor

    def close(self) -> None:
        """Release the buffers; a disk cache removes its own temporary folder."""
        self.tensors.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


# -------------------------------------------------------------------------- cache
class FeatureCache:
    """Frozen features of the planned query images and support pairs (see module doc).

    Build it with :func:`build_feature_cache`; read it with :meth:`query_features` and
    :meth:`support_features`, which return exactly what :meth:`HDMNet.frozen_features`
    would (for the layers the rest of the model reads).
    """

    def __init__(
        self, plan: CachePlan, fingerprint: str, buffers: _Buffers, device: torch.device
    ) -> None:
        self.plan = plan
        self.fingerprint = fingerprint
        self.buffers = buffers
        self.device = device
        self.query_rows = {q: row for row, q in enumerate(plan.queries)}
        self.support_rows = {key: row for row, key in enumerate(plan.supports)}
        self.foreground_offsets: dict[str, dict[SupportKey, int]] = {}
        for layer in PRIOR_LAYERS:
            offset, offsets = 0, {}
            channels = plan.layer_shapes[layer][0]
            for key in plan.supports:
                offsets[key] = offset
                offset += plan.support_foreground[key][layer] * channels
            self.foreground_offsets[layer] = offsets

    @property
    def storage(self) -> Storage:
        return self.buffers.storage

    @property
    def nbytes(self) -> int:
        return self.plan.nbytes

    def close(self) -> None:
        self.buffers.close()

    # ---------------------------------------------------------------- checks
    def check_serves(
        self, model: HDMNet, dataset: EpisodeDataset, amp: str, device: torch.device
    ) -> None:
        """Raise ``ValueError`` unless this cache holds ``model``'s frozen features for
        ``dataset``'s source and size (entries are checked when read)."""
        if (
            dataset.source.name != self.plan.source_name
            or _eval_size(dataset) != self.plan.eval_size
        ):
            raise ValueError(
                f"feature cache was built for {self.plan.source_name} at {self.plan.eval_size}, "
                f"not {dataset.source.name} at {_eval_size(dataset)}"
            )
        if frozen_fingerprint(model, amp, device) != self.fingerprint:
            raise ValueError(
                "feature cache was built for other frozen weights, precision or device; "
                "build a new one for this model"
            )

    # ---------------------------------------------------------------- writing
    def store_query(self, image: int, features: dict[str, torch.Tensor]) -> None:
        """Store one query image's frozen features (each (1, C, h, w))."""
        row = self.query_rows[image]
        entries = cached_entries(features)
        for name in CACHED_ENTRIES:
            self._write(f"query/{name}", row, entries[name][0])

    def store_support(
        self, key: SupportKey, features: dict[str, torch.Tensor], support_fg: torch.Tensor
    ) -> None:
        """Store one support pair's frozen features (each (1, C, h, w)); ``support_fg``
        (1, H, W)."""
        row = self.support_rows[key]
        entries = cached_entries(features)
        for name in FULL_ENTRIES:
            self._write(f"support/{name}", row, entries[name][0])
        for layer in PRIOR_LAYERS:
            flat = features[layer][0].flatten(1)  # (C, h*w)
            grid = (features[layer].shape[-2], features[layer].shape[-1])
            positions = foreground_positions(support_fg, grid)[0]
            planned = self.plan.support_foreground[key][layer]
            if positions.numel() != planned:
                raise RuntimeError(
                    f"feature cache: support {key} has {positions.numel()} foreground positions "
                    f"on the {layer} grid, the plan counted {planned}"
                )
            values = flat[:, positions.to(flat.device)]  # (C, n_fg)
            offset = self.foreground_offsets[layer][key]
            target = self.buffers.tensors[f"support/{layer}"]
            target[offset : offset + values.numel()].copy_(values.flatten())

    def _write(self, name: str, row: int, value: torch.Tensor) -> None:
        n = value.numel()
        self.buffers.tensors[name][row * n : (row + 1) * n].copy_(value.flatten())

    # ---------------------------------------------------------------- reading
    def query_features(self, images: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stored entries of query images: per entry (B, ...) on ``self.device``."""
        missing = [q for q in images if q not in self.query_rows]
        if missing:
            raise KeyError(f"feature cache has no query image(s) {missing}; plan with them")
        out = {}
        for layer in CACHED_ENTRIES:
            shape = self.plan.layer_shapes[layer]
            out[layer] = torch.stack(
                [self._read(f"query/{layer}", self.query_rows[q], shape) for q in images]
            )
        return out

    def support_features(
        self, keys: Sequence[SupportKey], support_fg: torch.Tensor, prior_maps: bool = True
    ) -> dict[str, torch.Tensor]:
        """Stored entries of support pairs, per entry (N, ...); ``support_fg`` (N, H, W)
        are the episode's support masks (1 = foreground). With ``prior_maps``, ``layer4`` /
        ``feat5`` as (N, C, h, w) maps: the stored values at the foreground positions and 0
        elsewhere (for the official-order priors; else read :meth:`support_columns`)."""
        missing = [k for k in keys if k not in self.support_rows]
        if missing:
            raise KeyError(f"feature cache has no support pair(s) {missing}; plan with them")
        out = {}
        for layer in FULL_ENTRIES:
            shape = self.plan.layer_shapes[layer]
            out[layer] = torch.stack(
                [self._read(f"support/{layer}", self.support_rows[k], shape) for k in keys]
            )
        if not prior_maps:
            return out
        for layer in PRIOR_LAYERS:
            c, h, w = self.plan.layer_shapes[layer]
            positions = foreground_positions(support_fg, (h, w))
            dtype = self.plan.dtypes[layer]
            maps = torch.zeros(len(keys), c, h * w, dtype=dtype, device=self.device)
            for n, (key, where) in enumerate(zip(keys, positions, strict=True)):
                values = self._foreground(layer, key, where.numel())  # (C, n_fg)
                maps[n].index_copy_(1, where.to(self.device), values)
            out[layer] = maps.view(len(keys), c, h, w)
        return out

    def support_columns(
        self, keys: Sequence[SupportKey], support_fg: torch.Tensor
    ) -> dict[str, ForegroundColumns]:
        """The supports' ``layer4`` / ``feat5`` foreground columns, as the ``foreground_prior``
        path gathers them from the full maps; ``keys`` in episode order (B*K), ``support_fg``
        (B, K, H, W)."""
        b, k = support_fg.shape[:2]
        out = {}
        for layer in PRIOR_LAYERS:
            c, h, w = self.plan.layer_shapes[layer]
            positions = foreground_positions(support_fg.flatten(0, 1), (h, w))
            counts = [where.numel() for where in positions]
            values = torch.zeros(
                b * k, c, max(max(counts), 1), dtype=self.plan.dtypes[layer], device=self.device
            )
            for n, (key, count) in enumerate(zip(keys, counts, strict=True)):
                values[n, :, :count] = self._foreground(layer, key, count)
            counts_tensor = torch.tensor(counts, device=self.device).reshape(b, k, 1)
            out[layer] = ForegroundColumns(values.unflatten(0, (b, k)), counts_tensor, h * w)
        return out

    def _foreground(self, layer: str, key: SupportKey, count: int) -> torch.Tensor:
        """(C, n_fg) stored foreground columns of a support pair; ``count``: the episode
        mask's foreground positions, which must be the stored ones."""
        stored = self.plan.support_foreground[key][layer]
        if count != stored:
            raise ValueError(
                f"feature cache: support {key}'s mask has {count} foreground positions on "
                f"the {layer} grid, the cache stored {stored}"
            )
        c = self.plan.layer_shapes[layer][0]
        offset = self.foreground_offsets[layer][key]
        buffer = self.buffers.tensors[f"support/{layer}"]
        return buffer[offset : offset + c * count].view(c, count).to(self.device)

    def _read(self, name: str, row: int, shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        value = self.buffers.tensors[name][row * n : (row + 1) * n].view(shape)
        return value.to(self.device, non_blocking=True)


# -------------------------------------------------------------------------- build
def build_feature_cache(
    model: HDMNet,
    datasets: Sequence[EpisodeDataset],
    *,
    device: torch.device,
    amp: str = "off",
    mode: str = "auto",
    budget_gb: float = 16.0,
    storage: str = "auto",
    folder: str | os.PathLike[str] = "feature_cache",
    episode_indices: Sequence[int] | None = None,
    progress: bool = False,
    fast: bool = True,
    log: Callable[[str], None] = print,
) -> FeatureCache | None:
    """Plan, size, place and fill the cache for ``datasets`` with ``model``'s frozen part.

    ``model``: the trained model (or its inference copy); ``fast`` as in
    ``evaluate_episodes``, so that its evaluations accept the cache. Prints the plan's size
    before building. Returns None (the caller evaluates uncached) when ``mode`` is ``off``,
    or ``auto`` and the plan does not fit; ``on`` raises :class:`ConfigError` then.

    Validation during meta-training: build it once for the validation episodes, then pass
    it to every ``evaluate_episodes(model, dataset, feature_cache=cache)``; the frozen part
    does not change, and a model whose frozen weights did is refused.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"eval.cache={mode!r}: choose one of auto, on, off")
    if mode == "off":
        return None
    model = evaluation_model(model, device, fast).eval()
    plan = plan_feature_cache(
        model, datasets, device=device, amp=amp, episode_indices=episode_indices
    )
    log(plan.describe())
    where, reason = choose_storage(plan.nbytes, device, budget_gb, storage, Path(folder))
    if where is None:
        if mode == "on":
            raise ConfigError(f"eval.cache='on' but the feature cache does not fit: {reason}")
        log(f"feature cache: not used ({reason}); evaluating without it")
        return None
    log(f"feature cache: storing {reason}")
    buffers = _Buffers(plan.elements(), plan.buffer_dtypes(), where, device, Path(folder))
    cache = FeatureCache(plan, frozen_fingerprint(model, amp, device), buffers, device)
    fill_feature_cache(cache, model, datasets[0], amp=amp, progress=progress)
    return cache


def fill_feature_cache(
    cache: FeatureCache,
    model: HDMNet,
    dataset: EpisodeDataset,
    *,
    amp: str = "off",
    progress: bool = False,
) -> None:
    """Compute every planned entry: one image at a time through ``model``'s frozen part,
    with the same input (the dataset's evaluation transform, the masked support) and the
    same ``feat5`` region rule as :meth:`HDMNet.frozen_features`."""
    source, device = dataset.source, cache.device
    transform = dataset.transform
    if not isinstance(transform, EvalTransform):
        raise ValueError("fill_feature_cache: the episodes must use the EvalTransform")
    with_region = "support_feat5_in_box" in model.speedups
    entries: list[tuple[str, int, int]] = [("query", q, -1) for q in cache.plan.queries]
    entries += [("support", s, c) for s, c in cache.plan.supports]
    bar: Iterable[tuple[str, int, int]] = tqdm(
        entries, desc="feature cache", unit="image", disable=not progress
    )
    with torch.no_grad(), autocast(device, amp):
        for kind, image, class_id in bar:
            if kind == "query":
                query, _ = transform(source.load_image(image), [], None)
                features = model.pspnet.frozen_features(query[None].to(device))
                cache.store_query(image, features)
                continue
            mask = binary_mask(source.load_mask(image), class_id)
            support, (support_mask,) = transform(source.load_image(image), [mask], None)
            support_fg = (support_mask == 1).to(support.dtype)[None].to(device)  # (1, H, W)
            masked = support[None].to(device) * support_fg[:, None]  # (1, 3, H, W)
            region = (
                support_fg if with_region and not model.pspnet.uses_batch_statistics() else None
            )
            features = model.pspnet.frozen_features(masked, feat5_region=region)
            cache.store_support((image, class_id), features, support_fg)


__all__ = [
    "CACHED_ENTRIES",
    "CachePlan",
    "FeatureCache",
    "autocast",
    "build_feature_cache",
    "choose_storage",
    "evaluation_model",
    "fill_feature_cache",
    "foreground_positions",
    "frozen_fingerprint",
    "plan_feature_cache",
    "resize_mask",
]
