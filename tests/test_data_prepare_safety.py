"""Issue 12: prepare never keeps stale data, never deletes a user's file, names every bad
input, gives ``--root`` one meaning, and writes lists that the official format can read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from data_formats import rect_mask, write_sbd_mat
from test_data_pascal import SBD_MASKS, S, make_inputs

import hdmnet_core.data.pascal as pascal
from hdmnet_core.cli import main
from hdmnet_core.data.pascal import PascalSource, prepare_pascal
from hdmnet_core.data.prepared import verify_prepared
from hdmnet_core.data.source import DataError

# 2008_000010 (SBD .mat): class 11 (2400 px) and class 3 (200 px). The corrected
# annotation removes class 3: 200 pixels change.
CORRECTED = rect_mask(S, S, [(11, 0, 40, 0, 60)])


def _prepare(tmp_path: Path, voc: Path, sbd: Path, **options: object) -> dict[str, object]:
    return prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False, **options)


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    """Make the ``writes + 1``-th mask write raise KeyboardInterrupt (Ctrl-C)."""
    real_write = pascal.write_png
    calls = {"n": 0}

    def write(path: Path, mask: np.ndarray, digest: str | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == writes + 1:
            raise KeyboardInterrupt
        real_write(path, mask, digest)

    monkeypatch.setattr(pascal, "write_png", write)


# ----------------------------------------------------------------------------- problem 1
def test_a_corrected_source_is_converted_again_after_an_interrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _interrupt_after(monkeypatch, writes=2)  # 2008_000010 (first train image) is staged
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, voc, sbd)
    staged = tmp_path / "data" / "pascal" / ".staging" / "masks" / "2008_000010.png"
    assert staged.is_file()
    monkeypatch.undo()

    write_sbd_mat(sbd / "cls" / "2008_000010.mat", CORRECTED)  # the user fixes the annotation
    _prepare(tmp_path, voc, sbd)  # same options: the staging folder is kept
    train = PascalSource(tmp_path / "data", "train")
    assert train.image_name(0) == "2008_000010"
    np.testing.assert_array_equal(train.load_mask(0), CORRECTED)
    assert train.class_areas(0) == {11: 2400}
    assert verify_prepared(tmp_path / "data", "pascal") == []


def test_unchanged_sources_are_still_reused_after_an_interrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _interrupt_after(monkeypatch, writes=2)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, voc, sbd)
    written: list[str] = []
    real_write = pascal.write_png
    monkeypatch.setattr(
        pascal, "write_png", lambda p, m, d=None: (written.append(p.name), real_write(p, m, d))
    )
    _prepare(tmp_path, voc, sbd)
    assert sorted(written) == ["2007_000001.png", "2007_000003.png", "2007_000004.png"]


def test_verify_names_a_source_annotation_changed_after_prepare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    mat = sbd / "cls" / "2008_000010.mat"
    write_sbd_mat(mat, CORRECTED)
    problems = verify_prepared(tmp_path / "data", "pascal")
    assert len(problems) == 1, problems
    assert f"{mat.resolve()}: source annotation changed since prepare" in problems[0]
    assert "masks/2008_000010.png may be stale" in problems[0]

    root = str(tmp_path / "data")
    assert main(["prepare", "pascal", "--root", root, "--verify", "--deep"]) == 1
    out = capsys.readouterr().out
    assert "2008_000010.png: 200 pixel(s) differ from its source annotation" in out
    assert f"run: python -m hdmnet_core prepare pascal --root {root} --voc {voc}" in out


def test_deep_verify_catches_an_edit_that_kept_size_and_mtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    mat = sbd / "cls" / "2008_000010.mat"
    before = mat.stat()
    write_sbd_mat(mat, CORRECTED)  # uncompressed .mat: same size
    os.utime(mat, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert mat.stat().st_size == before.st_size
    assert verify_prepared(tmp_path / "data", "pascal") == []  # the fast check trusts stat
    assert main(["prepare", "pascal", "--root", str(tmp_path / "data"), "--verify"]) == 0
    assert main(["prepare", "pascal", "--root", str(tmp_path / "data"), "--verify", "--deep"]) == 1
    assert "200 pixel(s) differ" in capsys.readouterr().out


def test_deep_verify_of_a_correct_tree_is_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    assert main(["prepare", "pascal", "--root", str(tmp_path / "data"), "--verify", "--deep"]) == 0
    assert "every mask matches its source annotation" in capsys.readouterr().out


# ----------------------------------------------------------------------------- problem 2
@pytest.mark.parametrize("damage", ["empty", "truncated", "garbled", "compressed"])
def test_a_bad_sbd_mat_is_one_named_error_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    from scipy.io import savemat

    voc, sbd = make_inputs(tmp_path)
    mat = sbd / "cls" / "2008_000010.mat"
    good = mat.read_bytes()
    if damage == "empty":
        mat.write_bytes(b"")
    elif damage == "truncated":
        mat.write_bytes(good[:100])
    elif damage == "garbled":
        mat.write_bytes(good[:128] + bytes(range(256)) * 4 + good[128 + 1024 :])
    else:  # a compressed .mat whose zlib stream is damaged (zlib.error)
        savemat(
            str(mat), {"GTcls": {"Segmentation": SBD_MASKS["2008_000010"]}}, do_compression=True
        )
        data = mat.read_bytes()
        mat.write_bytes(data[:200] + b"x" * 50 + data[250:])
    code = main(
        ["prepare", "pascal", "--root", str(tmp_path / "data"), "--voc", str(voc)]
        + ["--sbd", str(sbd), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {mat}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "pascal" / "prepared.json").exists()


def test_a_root_that_cannot_be_written_is_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = ["--voc", str(voc), "--sbd", str(sbd), "--quiet"]
    assert main(["prepare", "pascal", "--root", str(blocker / "data"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {blocker / 'data' / 'pascal'}: Not a directory"), err
    assert "Traceback" not in err


def test_an_immutable_or_read_only_root_is_a_named_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    root = tmp_path / "data"
    root.mkdir()
    args = ["--voc", str(voc), "--sbd", str(sbd), "--quiet"]
    if os.geteuid() == 0:  # root ignores permission bits: make the folder immutable
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a folder unwritable")
        if subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode != 0:
            pytest.skip("this file system does not support the immutable attribute")
        undo = ["chattr", "-i", str(root)]
    else:
        root.chmod(0o555)
        undo = ["chmod", "755", str(root)]
    try:
        code = main(["prepare", "pascal", "--root", str(root), *args])
    finally:
        subprocess.run(undo, check=True)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {root / 'pascal'}: "), err
    assert "is it writable, not read-only or immutable?" in err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- problem 3
def test_rerunning_prepare_keeps_the_users_files(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    folder = tmp_path / "data" / "pascal"
    mine = {
        folder / "lists" / "my_custom_list.txt": "2007_000001\n",
        folder / "masks" / "my_notes" / "edited.png": "not ours",
        folder / "index" / "README": "my index notes",
    }
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _prepare(tmp_path, voc, sbd, train_set="trainaug")  # a different run: new staging
    for path, text in mine.items():
        assert path.read_text() == text
    assert len(PascalSource(tmp_path / "data", "train")) == 4
    assert verify_prepared(tmp_path / "data", "pascal") == []

    # A mask this project wrote but no longer needs is removed; the user's stay.
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000003\n")
    _prepare(tmp_path, voc, sbd, train_set="trainaug")
    assert not (folder / "masks" / "2007_000004.png").exists()
    assert all(path.is_file() for path in mine)


def test_a_users_file_where_prepare_must_write_stops_the_run_unchanged(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    folder = tmp_path / "data" / "pascal"
    (folder / "masks").mkdir(parents=True)
    theirs = folder / "masks" / "2007_000001.png"
    theirs.write_bytes(b"the user's own mask")
    with pytest.raises(DataError, match="did not write are where it must write") as caught:
        _prepare(tmp_path, voc, sbd)
    assert str(theirs) in str(caught.value)
    assert theirs.read_bytes() == b"the user's own mask"
    assert not (folder / "prepared.json").exists()


def test_a_tree_prepared_before_the_record_existed_is_recognised(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    folder = tmp_path / "data" / "pascal"
    (folder / "prepared_files.txt").unlink()  # as an older version left it
    (folder / "lists" / "my_custom_list.txt").write_text("mine\n")
    _prepare(tmp_path, voc, sbd, train_set="trainaug")
    assert (folder / "lists" / "my_custom_list.txt").read_text() == "mine\n"
    assert verify_prepared(tmp_path / "data", "pascal") == []


# ----------------------------------------------------------------------------- problem 4
def test_root_at_the_dataset_folder_means_that_folder_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    folder = tmp_path / "data" / "pascal"
    before = json.loads((folder / "prepared.json").read_text())
    args = ["--voc", str(voc), "--sbd", str(sbd), "--quiet", "--train-set", "trainaug"]
    assert main(["prepare", "pascal", "--root", str(folder), *args]) == 0
    assert f"prepared {folder} in" in capsys.readouterr().out
    assert not (folder / "pascal").exists()  # no nested tree
    after = json.loads((folder / "prepared.json").read_text())
    assert before["counts"]["train"] == 3 and after["counts"]["train"] == 4
    assert len(PascalSource(folder, "train")) == len(PascalSource(folder.parent, "train")) == 4
    assert main(["prepare", "pascal", "--root", str(folder), "--verify"]) == 0


def test_a_nested_tree_is_an_ambiguous_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    folder = tmp_path / "data" / "pascal"
    shutil.copytree(folder, folder / "pascal")  # what an older version wrote
    assert main(["prepare", "pascal", "--root", str(folder), "--verify"]) == 2
    assert f"{folder}: ambiguous --root" in capsys.readouterr().err
    with pytest.raises(DataError, match="ambiguous --root"):
        PascalSource(folder, "train")
    assert len(PascalSource(tmp_path / "data", "train")) == 3  # the data root is fine


# ----------------------------------------------------------------------------- problem 7
def test_list_files_use_relative_paths_and_refuse_what_they_cannot_express(
    tmp_path: Path,
) -> None:
    spaced = tmp_path / "my data"
    voc, sbd = make_inputs(spaced)
    root = spaced / "data"  # the data root itself has a space: relative lines do not
    prepare_pascal(root, voc=str(voc), sbd=str(sbd), progress=False)
    for line in (root / "pascal" / "lists" / "train.txt").read_text().splitlines():
        image, mask = line.split(" ")
        assert (root / "pascal" / image).is_file() and (root / "pascal" / mask).is_file()
        assert not Path(image).is_absolute()

    with pytest.raises(DataError, match="white space") as caught:
        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    assert "my data/in/VOCdevkit" in str(caught.value) and "--copy-images" in str(caught.value)
    assert not (tmp_path / "data" / "pascal" / "prepared.json").exists()


def test_copy_images_makes_a_tree_that_survives_moving_the_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, sbd = make_inputs(tmp_path)
    root = tmp_path / "data"
    args = ["--root", str(root), "--voc", str(voc), "--sbd", str(sbd), "--quiet"]
    assert main(["prepare", "pascal", *args]) == 0
    out = capsys.readouterr().out
    assert f"images: read in place from {voc.resolve() / 'JPEGImages'}" in out
    assert "moving or deleting them breaks this tree" in out

    assert main(["prepare", "pascal", *args, "--copy-images"]) == 0
    assert "images: copied into the tree (5 hard links, 0 copies)" in capsys.readouterr().out
    expected = PascalSource(root, "train").load_image(0)
    shutil.move(tmp_path / "in", tmp_path / "moved")
    assert main(["prepare", "pascal", "--root", str(root), "--verify"]) == 0
    np.testing.assert_array_equal(PascalSource(root, "train").load_image(0), expected)
    lines = (root / "pascal" / "lists" / "train.txt").read_text().splitlines()
    assert lines[0] == "images/2008_000010.jpg masks/2008_000010.png"


def test_place_image_copies_when_links_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hdmnet_core.data import staging

    source = tmp_path / "a.jpg"
    source.write_bytes(b"jpeg bytes")

    def refuse(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(staging.os, "link", refuse)
    assert staging.place_image(source, tmp_path / "images" / "a.jpg") == "copy"
    assert (tmp_path / "images" / "a.jpg").read_bytes() == b"jpeg bytes"
    assert staging.place_image(source, tmp_path / "images" / "a.jpg") == "copy"  # kept


def test_every_class_skipped_gives_the_reason_per_class(tmp_path: Path) -> None:
    from hdmnet_core.data.episodes import EpisodeDataset
    from hdmnet_core.data.transforms import EvalTransform

    voc, sbd = make_inputs(tmp_path)
    _prepare(tmp_path, voc, sbd)
    val = PascalSource(tmp_path / "data", "val")
    with pytest.raises(DataError) as caught:
        EpisodeDataset(val, [1, 2, 3, 4, 5], 1, "val", EvalTransform(16), small_classes="skip")
    message = str(caught.value)
    assert "every class of [1, 2, 3, 4, 5] was skipped" in message
    assert "class 1: 1 usable image(s)" in message and "class 2: 0 usable image(s)" in message
    assert "needs 2 usable images" in message


def test_coco_staged_masks_follow_their_annotations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_data_coco import make_coco

    import hdmnet_core.data.coco as coco

    base = make_coco(tmp_path)
    real_write = coco.write_png
    calls = {"n": 0}

    def write(path: Path, mask: np.ndarray, digest: str | None = None) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_write(path, mask, digest)

    monkeypatch.setattr(coco, "write_png", write)
    with pytest.raises(KeyboardInterrupt):
        coco.prepare_coco(tmp_path / "data", coco=str(base), progress=False)
    monkeypatch.undo()
    annotations = base / "annotations" / "instances_train2014.json"
    content = json.loads(annotations.read_text())
    content["annotations"] = [a for a in content["annotations"] if a["image_id"] != 1 or a["category_id"] == 1]  # fmt: skip
    annotations.write_text(json.dumps(content))  # image 1 keeps only its person
    coco.prepare_coco(tmp_path / "data", coco=str(base), progress=False)
    train = coco.CocoSource(tmp_path / "data", "train")
    assert train.image_name(0) == "COCO_train2014_000000000001"
    assert set(np.unique(train.load_mask(0)).tolist()) == {0, 1}
    assert train.class_areas(0) == {1: 40 * 60}


def test_fss_copy_images_copies_masks_too(tmp_path: Path) -> None:
    from data_formats import make_fss_tree
    from test_data_fss1000 import LISTS

    from hdmnet_core.data.fss1000 import Fss1000Source, prepare_fss1000

    make_fss_tree(tmp_path / "in", [n for names in LISTS.values() for n in names], shots=2)
    marker = prepare_fss1000(
        tmp_path / "data", fss=str(tmp_path / "in"), lists=LISTS, progress=False, copy_images=True
    )
    assert marker["images"] == {"mode": "copied", "hard links": 12, "copies": 0}
    expected = Fss1000Source(tmp_path / "data", "test").load_mask(1)
    shutil.rmtree(tmp_path / "in")
    assert verify_prepared(tmp_path / "data", "fss1000") == []
    np.testing.assert_array_equal(Fss1000Source(tmp_path / "data", "test").load_mask(1), expected)
