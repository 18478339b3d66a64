"""Open the source of a configured dataset split: one entry point for engine and notebooks.

``open_source(config, "train")`` returns the :class:`SegmentationSource` that the
episode sampler reads, whatever the dataset:

| dataset | train source | val source |
|---|---|---|
| synthetic | generated once under ``<root>/synthetic`` (reused when it matches) | same tree |
| pascal | ``<root>/pascal`` prepared by ``prepare pascal`` | VOC2012 val |
| coco | ``<root>/coco`` prepared by ``prepare coco`` | COCO 2014 val |
| fss1000 | HSNet's 520 training classes | ``test`` (240 classes, HSNet's test split) |

FSS-1000 evaluation uses HSNet's *test* classes; pass ``split="fss-val"`` to get
HSNet's validation classes instead.

``data.root = "hf:<folder>"`` reads a folder written by ``export-hf`` (a Hugging Face
``save_to_disk`` copy of the prepared splits, :mod:`hdmnet_core.data.hf`) instead of a
prepared tree: same splits, same episodes.
"""

from __future__ import annotations

from typing import Literal

from hdmnet_core.config import Config
from hdmnet_core.data.source import SegmentationSource

SplitName = Literal["train", "val", "fss-val"]


def open_source(config: Config, split: SplitName) -> SegmentationSource:
    """The prepared (or, for synthetic data, generated) source of ``config.data`` and ``split``."""
    data = config.data
    if split not in ("train", "val", "fss-val"):
        raise ValueError(f"split={split!r}: use 'train' or 'val'")
    if split == "fss-val" and data.dataset != "fss1000":
        raise ValueError("split='fss-val' exists for FSS-1000 only")
    fss_split = {"train": "train", "val": "test", "fss-val": "val"}[split]
    if data.root.startswith("hf:"):
        from hdmnet_core.data.hf import HFSource, hf_folder

        folder = hf_folder(data.root)
        assert folder is not None
        return HFSource(folder, fss_split if data.dataset == "fss1000" else split, data.dataset)
    if data.dataset == "synthetic":
        from hdmnet_core.data.synthetic import SyntheticSource, ensure_synthetic

        tree = ensure_synthetic(data.root, data)
        return SyntheticSource(tree, "val" if split == "val" else "train")
    if data.dataset == "pascal":
        from hdmnet_core.data.pascal import PascalSource

        return PascalSource(data.root, split)
    if data.dataset == "coco":
        from hdmnet_core.data.coco import CocoSource

        return CocoSource(data.root, split)
    from hdmnet_core.data.fss1000 import Fss1000Source

    return Fss1000Source(data.root, fss_split)
