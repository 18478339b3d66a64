"""Prepared splits as Hugging Face datasets: export-hf, then HFSource reads the same data
and the episode sampler draws the same episodes (issue 12)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from data_formats import make_fss_tree, make_voc_tree, rect_mask
from test_data_coco import make_coco
from test_data_fss1000 import LISTS
from test_data_pascal import make_inputs

from hdmnet_core.cli import main
from hdmnet_core.config import Config
from hdmnet_core.data.datasets import open_source
from hdmnet_core.data.episodes import EpisodeDataset
from hdmnet_core.data.hf import HFSource, export_hf
from hdmnet_core.data.source import DataError, SegmentationSource
from hdmnet_core.data.transforms import EvalTransform


def assert_same_source(original: SegmentationSource, exported: SegmentationSource) -> None:
    assert len(original) == len(exported)
    assert exported.name == original.name and exported.dataset == original.dataset
    for i in range(len(original)):
        assert exported.image_name(i) == original.image_name(i)
        assert exported.class_areas(i) == original.class_areas(i)
        mask, exported_mask = original.load_mask(i), exported.load_mask(i)
        assert exported_mask.dtype == mask.dtype
        np.testing.assert_array_equal(exported_mask, mask)
        np.testing.assert_array_equal(exported.load_image(i), original.load_image(i))


def assert_same_episodes(
    original: SegmentationSource, exported: SegmentationSource, classes: list[int], **kw: object
) -> None:
    """Fold-0 evaluation episodes, 1- and 5-shot: identical specs, masks and images."""
    for shots in (1, 5):
        episodes = [
            EpisodeDataset(
                source, classes, shots, "val", EvalTransform(24), episodes=12, seed=3, **kw
            )
            for source in (original, exported)
        ]
        for i in range(12):
            assert episodes[0].episode_spec(i) == episodes[1].episode_spec(i)
            first, second = episodes[0][i], episodes[1][i]
            for key in ("query_mask", "support_masks", "query_image", "support_images"):
                assert bool((first[key] == second[key]).all()), (shots, i, key)
            assert first["query_original_mask"].equal(second["query_original_mask"])


def test_synthetic_export_reads_back_with_the_same_episodes(tmp_path: Path) -> None:
    from hdmnet_core.data.synthetic import SyntheticSource, scaled_min_area, write_synthetic

    write_synthetic(
        tmp_path / "data", image_size=32, train_images=24, val_images=60, progress=False
    )
    out = export_hf("synthetic", tmp_path / "data", tmp_path / "synthetic-hf", progress=False)
    for split in ("train", "val"):
        assert_same_source(SyntheticSource(tmp_path / "data", split), HFSource(out, split))
    assert_same_episodes(
        SyntheticSource(tmp_path / "data", "val"),
        HFSource(out, "val", "synthetic"),
        [1, 2, 3, 4, 5],
        min_class_area=scaled_min_area(32),
        small_classes="skip",
    )


def make_pascal_for_episodes(tmp_path: Path) -> tuple[Path, Path]:
    """A VOC + SBD tree whose val split has 8 images each of classes 1 and 2 (5-shot)."""
    side = 64
    masks = {
        f"2009_{i:06d}": rect_mask(side, side, [(1 + i % 2, 0, 50, 0, 50), (3, 55, 60, 0, 10)])
        for i in range(16)
    }
    masks |= {"2008_000001": rect_mask(side, side, [(7, 0, 64, 0, 40)])}
    voc = make_voc_tree(tmp_path / "in", masks, ["2008_000001"], sorted(masks)[1:])
    from data_formats import make_sbd_tree

    (tmp_path / "in" / "benchmark_RELEASE" / "dataset" / "cls").mkdir(parents=True)
    sbd = make_sbd_tree(tmp_path / "in", {}, [], [], train_noval=["2008_000001"])
    return voc, sbd


def test_pascal_export_reads_back_with_the_same_episodes(tmp_path: Path) -> None:
    from hdmnet_core.data.pascal import PascalSource, prepare_pascal

    voc, sbd = make_pascal_for_episodes(tmp_path)
    prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    root = tmp_path / "data"
    assert main(["export-hf", "--dataset", "pascal", "--root", str(root), "--out", str(tmp_path / "hf"), "--quiet"]) == 0  # fmt: skip
    for split in ("train", "val"):
        assert_same_source(PascalSource(root, split), HFSource(tmp_path / "hf", split))
    assert_same_episodes(
        PascalSource(root, "val"),
        HFSource(tmp_path / "hf", "val"),
        [1, 2, 3, 4, 5],
        small_classes="skip",  # class 3 is in every image but never covers 2048 pixels
    )

    config = Config.from_profile("cpu-tiny", **{"data.dataset": "pascal", "data.root": f"hf:{tmp_path / 'hf'}"})  # fmt: skip
    source = open_source(config, "val")
    assert isinstance(source, HFSource) and len(source) == 16
    copy = pickle.loads(pickle.dumps(source))  # what a DataLoader worker receives
    np.testing.assert_array_equal(copy.load_mask(3), source.load_mask(3))


def test_pascal_fold_lists_are_columns(tmp_path: Path) -> None:
    import datasets

    voc, sbd = make_inputs(tmp_path)
    from hdmnet_core.data.pascal import prepare_pascal

    prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    out = export_hf("pascal", tmp_path / "data", tmp_path / "hf", progress=False)
    train = datasets.load_from_disk(str(out / "train"))
    assert (
        train.features["image"] == datasets.Image() and train.features["mask"] == datasets.Image()
    )
    folds = dict(zip(train["name"], train["folds"], strict=True))
    # tests/test_data_pascal.py: fold 0's training list holds only 2007_000002 (class 7,
    # novel in fold 1); fold 2's holds 2007_000001 (class 1 >= 2048 px); 2008_000010
    # holds class 3, novel in fold 0.
    assert folds["2007_000002"] == [0, 2, 3]
    assert 0 not in folds["2008_000010"] and 2 in folds["2007_000001"]
    val = datasets.load_from_disk(str(out / "val"))
    assert dict(zip(val["name"], val["folds"], strict=True)) == {
        "2007_000003": [0],
        "2007_000004": [3],
    }


def test_coco_and_fss_exports_read_back(tmp_path: Path) -> None:
    from hdmnet_core.data.coco import CocoSource, prepare_coco
    from hdmnet_core.data.fss1000 import Fss1000Source, prepare_fss1000

    prepare_coco(tmp_path / "data", coco=str(make_coco(tmp_path)), progress=False)
    out = export_hf("coco", tmp_path / "data", tmp_path / "coco-hf", progress=False)
    for split in ("train", "val"):
        assert_same_source(CocoSource(tmp_path / "data", split), HFSource(out, split, "coco"))

    make_fss_tree(tmp_path / "in", [n for names in LISTS.values() for n in names], shots=3)
    prepare_fss1000(tmp_path / "data", fss=str(tmp_path / "in"), lists=LISTS, progress=False)
    out = export_hf("fss1000", tmp_path / "data", tmp_path / "fss-hf", progress=False)
    for split in ("train", "val", "test"):
        assert_same_source(Fss1000Source(tmp_path / "data", split), HFSource(out, split))
    config = Config.from_profile("cpu-tiny", **{"data.dataset": "fss1000", "data.root": f"hf:{out}"})  # fmt: skip
    assert open_source(config, "val").name == "fss1000/test"


def test_export_errors_are_named_and_nothing_is_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["export-hf", "--dataset", "pascal", "--root", str(tmp_path), "--out", str(out)]
    assert main(argv) == 2
    assert f"error: {out}: already exists" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"
    argv[-1] = str(tmp_path / "new")
    assert main(argv) == 2
    assert "prepared.json missing" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    with pytest.raises(DataError, match="no exported split 'val'"):
        HFSource(tmp_path / "nothing", "val")
    with pytest.raises(DataError, match="not 'coco'"):
        voc, sbd = make_inputs(tmp_path)
        from hdmnet_core.data.pascal import prepare_pascal

        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
        HFSource(
            export_hf("pascal", tmp_path / "data", tmp_path / "p", progress=False), "val", "coco"
        )


def test_a_hub_style_parquet_copy_without_the_description_reads_back(tmp_path: Path) -> None:
    """What ``push_to_hub`` keeps: parquet shards with the features in their schema (no
    ``info.description``); ``load_dataset(...).save_to_disk`` of them is read when the
    dataset is named."""
    import datasets

    from hdmnet_core.data.coco import CocoSource, prepare_coco

    prepare_coco(tmp_path / "data", coco=str(make_coco(tmp_path)), progress=False)
    out = export_hf("coco", tmp_path / "data", tmp_path / "hf", progress=False)
    files = {}
    for split in ("train", "val"):
        files[split] = str(tmp_path / f"{split}.parquet")
        datasets.load_from_disk(str(out / split)).to_parquet(files[split])
    hub = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    hub.save_to_disk(str(tmp_path / "from-hub"))
    with pytest.raises(DataError, match="name its dataset"):
        HFSource(tmp_path / "from-hub", "val")
    for split in ("train", "val"):
        assert_same_source(CocoSource(tmp_path / "data", split), HFSource(tmp_path / "from-hub", split, "coco"))  # fmt: skip
