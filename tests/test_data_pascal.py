"""PASCAL-5i preparation on a tiny VOC2012 + SBD tree in the real formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_formats import (
    make_sbd_tree,
    make_tar,
    make_voc_tree,
    rect_mask,
    write_voc_png,
)
from PIL import Image

from hdmnet_core.data import prepared as prepare_module
from hdmnet_core.data.pascal import PascalSource, build_lists, prepare_pascal
from hdmnet_core.data.prepared import verify_prepared
from hdmnet_core.data.source import DataError, SegmentationSource

S = 64  # image side: 4096 pixels, so a 48 x 48 object passes the 2048-pixel rule

VOC_MASKS = {
    # VOC train: class 1 (fold-0 novel) big with a 255 border, class 6 small.
    "2007_000001": rect_mask(S, S, [(1, 0, 48, 0, 48), (6, 50, 60, 50, 60)], border=True),
    # VOC train AND SBD: VOC says class 7, SBD says class 8 -> VOC must win.
    "2007_000002": rect_mask(S, S, [(7, 0, 50, 0, 50)], border=True),
    # VOC val.
    "2007_000003": rect_mask(S, S, [(1, 4, 60, 4, 60)], border=True),
    "2007_000004": rect_mask(S, S, [(16, 0, 64, 0, 40), (2, 0, 10, 50, 60)]),
}
SBD_MASKS = {
    "2007_000002": rect_mask(S, S, [(8, 0, 50, 0, 50)]),
    "2007_000003": rect_mask(S, S, [(1, 0, 64, 0, 64)]),  # a VOC val image: never in train
    "2008_000010": rect_mask(S, S, [(11, 0, 40, 0, 60), (3, 50, 60, 0, 20)]),
    "2008_000011": rect_mask(S, S, [(12, 0, 64, 0, 64)]),
}


def make_inputs(tmp_path: Path) -> tuple[Path, Path]:
    voc = make_voc_tree(
        tmp_path / "in",
        VOC_MASKS,
        train=["2007_000001", "2007_000002"],
        val=["2007_000003", "2007_000004"],
        extra_images={"2008_000010": (S, S), "2008_000011": (S, S)},
    )
    sbd = make_sbd_tree(
        tmp_path / "in",
        SBD_MASKS,
        train=["2008_000010", "2007_000002", "2007_000003"],
        val=["2008_000011"],
        train_noval=["2008_000010", "2007_000002", "2007_000003"],
    )
    return voc, sbd


def test_build_lists_merges_without_duplicates_or_val_images() -> None:
    lists = build_lists(voc_train=["a", "b"], voc_val=["v"], sbd_names=["s1", "b", "v", "s2", "s1"])
    assert lists.train == ["s1", "b", "s2", "a"]
    assert lists.val == ["v"]
    assert lists.duplicates_removed == 2  # second "s1" and VOC's "b"
    assert lists.val_images_removed == 1


def test_prepare_official_lists_masks_and_index(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    marker = prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    train = PascalSource(tmp_path / "data", "train")
    val = PascalSource(tmp_path / "data", "val")
    assert isinstance(train, SegmentationSource)
    # SBD train_noval first, then VOC train; 2007_000003 (VOC val) dropped.
    assert [train.image_name(i) for i in range(len(train))] == [
        "2008_000010",
        "2007_000002",
        "2007_000001",
    ]
    assert [val.image_name(i) for i in range(len(val))] == ["2007_000003", "2007_000004"]
    assert marker["counts"] == {"train": 3, "val": 2}
    assert marker["stats"]["VOC val images removed from train"] == 1
    assert marker["stats"]["duplicates removed from the merged train list"] == 1
    assert marker["stats"]["train masks from SBD .mat"] == 1

    expected = {
        "2008_000010": SBD_MASKS["2008_000010"],
        "2007_000002": VOC_MASKS["2007_000002"],  # VOC annotation wins over SBD's class 8
        "2007_000001": VOC_MASKS["2007_000001"],
    }
    for i in range(len(train)):
        mask = train.load_mask(i)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected[train.image_name(i)])
        image = train.load_image(i)
        assert image.shape == (S, S, 3) and image.dtype == np.uint8
    assert train.class_areas(0) == {11: 2400, 3: 200}
    assert train.class_areas(2) == {1: 46 * 46, 6: 8 * 8}
    assert val.class_areas(1) == {16: 64 * 40, 2: 100}

    # Pairs per class per fold: fold 0 training drops every image holding classes 1..5.
    pairs = marker["pairs"]["PASCAL-5i"]
    assert pairs["fold 0"]["train 7"] == 1
    assert pairs["fold 0"]["train 11"] == 0  # 2008_000010 also holds class 3 (novel)
    assert pairs["fold 0"]["val 1"] == 1
    assert pairs["fold 0"]["val 2"] == 0  # 100 pixels < 2048
    assert pairs["fold 2"]["train 1"] == 1  # 46*46 = 2116 >= 2048
    assert "train 11" not in pairs["fold 2"]  # novel in fold 2 -> not a training class
    assert pairs["fold 3"]["val 16"] == 1
    assert pairs["fold 3"]["train images"] == 3 and pairs["fold 0"]["train images"] == 1
    assert pairs["fold 0"]["val images"] == 1 and pairs["fold 1"]["val images"] == 0

    # BAM-style fold lists for inspection, consistent with the pair counts.
    folder = tmp_path / "data" / "pascal" / "lists"
    # Official "image mask" lines, relative to the dataset folder (even outside it).
    assert (folder / "fold0_train.txt").read_text() == (
        "../../in/VOCdevkit/VOC2012/JPEGImages/2007_000002.jpg masks/2007_000002.png\n"
    )
    fold0_classes = json.loads((folder / "fold0_train_classes.json").read_text())
    assert fold0_classes["7"] == ["2007_000002"] and fold0_classes["11"] == []
    assert json.loads((folder / "fold2_train_classes.json").read_text())["1"] == ["2007_000001"]
    assert (folder / "fold0_val.txt").read_text().count("\n") == 1
    lists = (tmp_path / "data" / "pascal" / "lists" / "train.txt").read_text().splitlines()
    assert lists[1].endswith("JPEGImages/2007_000002.jpg masks/2007_000002.png")
    assert json.loads((tmp_path / "data" / "pascal" / "prepared.json").read_text())["format"] == 1
    assert verify_prepared(tmp_path / "data", "pascal") == []


def test_prepare_trainaug_from_archives(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    voc_tar = make_tar(voc.parent, tmp_path / "VOCtrainval.tar", "VOCdevkit")
    sbd_tgz = make_tar(sbd.parent, tmp_path / "benchmark.tgz", "benchmark_RELEASE")
    prepare_pascal(
        tmp_path / "data",
        voc=str(voc_tar),
        sbd=str(sbd_tgz),
        train_set="trainaug",
        progress=False,
    )
    train = PascalSource(tmp_path / "data" / "pascal", "train")
    names = [train.image_name(i) for i in range(len(train))]
    assert names == ["2008_000010", "2007_000002", "2008_000011", "2007_000001"]
    assert (tmp_path / "data" / "pascal" / "raw" / "VOCtrainval").is_dir()
    np.testing.assert_array_equal(train.load_mask(2), SBD_MASKS["2008_000011"])


def test_reader_refuses_an_unprepared_tree(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="prepare pascal"):
        PascalSource(tmp_path, "train")


def test_official_list_missing_is_a_named_error(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    (sbd / "train_noval.txt").unlink()
    with pytest.raises(DataError, match="train_noval.txt"):
        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)


def _tree_snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".staging" not in p.parts
    }


@pytest.mark.parametrize("problem", ["palette", "jpeg", "size", "missing", "empty"])
def test_bad_inputs_raise_named_errors_and_keep_the_old_tree(tmp_path: Path, problem: str) -> None:
    voc, sbd = make_inputs(tmp_path)
    prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    before = _tree_snapshot(tmp_path / "data" / "pascal")
    if problem == "palette":
        bad = voc / "SegmentationClass" / "2007_000004.png"
        write_voc_png(bad, rect_mask(S, S, [(21, 0, 5, 0, 5)]))
        expected = r"2007_000004\.png: mask has values \[21\]"
    elif problem == "jpeg":
        bad = voc / "JPEGImages" / "2007_000001.jpg"
        bad.write_bytes(bad.read_bytes()[:300])
        expected = r"2007_000001\.jpg: corrupt or truncated"
    elif problem == "size":
        write_voc_png(voc / "SegmentationClass" / "2007_000003.png", np.zeros((S, S - 1), np.uint8))
        expected = r"2007_000003\.png: mask is 64x63 but image .* is 64x64"
    elif problem == "missing":
        (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000003\nnope\n")
        expected = r"nope\.jpg: image of list entry 'nope' is missing"
    else:
        (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
        expected = r"val\.txt: list file is empty"
    with pytest.raises(DataError, match=expected):
        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    assert _tree_snapshot(tmp_path / "data" / "pascal") == before


def test_missing_entries_are_all_listed(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    (voc / "JPEGImages" / "2007_000004.jpg").unlink()
    (sbd / "cls" / "2008_000010.mat").unlink()
    with pytest.raises(DataError) as caught:
        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    message = str(caught.value)
    assert "2 problem(s)" in message
    assert "2007_000004.jpg: image of list entry" in message
    assert "2008_000010.mat: mask of list entry" in message
    assert not (tmp_path / "data" / "pascal" / ".staging").exists()  # nothing written


def test_interrupted_conversion_is_not_trusted_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voc, sbd = make_inputs(tmp_path)
    import hdmnet_core.data.pascal as pascal

    real_write = prepare_module.write_png
    calls = {"n": 0}

    def failing_write(path: Path, mask: np.ndarray, digest: str | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the conversion
        real_write(path, mask, digest)

    monkeypatch.setattr(pascal, "write_png", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    folder = tmp_path / "data" / "pascal"
    assert not (folder / "prepared.json").exists()
    with pytest.raises(DataError, match="prepared.json missing"):
        PascalSource(tmp_path / "data", "train")
    staged = sorted(p.name for p in (folder / ".staging" / "masks").glob("*.png"))
    assert staged == ["2007_000002.png", "2008_000010.png"]  # only complete files

    calls["n"] = -100
    prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    assert calls["n"] == -100 + 3  # the two staged masks were reused, 3 others written
    assert len(PascalSource(tmp_path / "data", "val")) == 2
    assert not (folder / ".staging").exists()


def test_verify_lists_every_problem_and_changes_nothing(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    folder = tmp_path / "data" / "pascal"
    truncated = voc / "JPEGImages" / "2007_000001.jpg"
    truncated.write_bytes(truncated.read_bytes()[:400])
    (folder / "masks" / "2007_000002.png").unlink()
    Image.fromarray(np.zeros((S, S + 2), np.uint8)).save(folder / "masks" / "2007_000004.png")
    Image.fromarray(np.zeros((S, S), np.uint8)).save(folder / "masks" / "2007_000003.png")
    before = _tree_snapshot(folder)
    problems = verify_prepared(tmp_path / "data", "pascal")
    assert len(problems) == 4, problems
    assert any("2007_000001.jpg: corrupt or truncated" in p for p in problems)
    assert any("2007_000002.png: missing" in p for p in problems)
    assert any("2007_000004.png: mask is 64x66 but its image is 64x64" in p for p in problems)
    assert any("2007_000003.png: class areas {} differ" in p for p in problems)
    assert _tree_snapshot(folder) == before
