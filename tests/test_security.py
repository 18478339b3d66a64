"""Untrusted input: hostile archives, list files, manifests and pickled checkpoints.

Every hostile file is made here, in ``tmp_path``: archives whose members escape the
target folder, checkpoints whose pickle would run code, and list files or manifests whose
names point outside the dataset root.
"""

from __future__ import annotations

import io
import json
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_coco import make_coco
from test_data_pascal import make_inputs

from hdmnet_core import cli
from hdmnet_core.data.coco import prepare_coco
from hdmnet_core.data.download import extract_archive
from hdmnet_core.data.pascal import PascalSource, prepare_pascal
from hdmnet_core.data.source import DataError, safe_join
from hdmnet_core.engine import checkpoint as ckpt
from hdmnet_core.errors import UserError
from hdmnet_core.model import convert


# ------------------------------------------------------------------------ archives
def add_tar_file(bundle: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    bundle.addfile(info, io.BytesIO(content))


def add_tar_link(bundle: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    bundle.addfile(info)


def hostile_tar(path: Path, mode: str, escape: str, outside: Path) -> Path:
    """A good member first, then one that tries to leave the target folder."""
    with tarfile.open(path, mode) as bundle:
        add_tar_file(bundle, "top/good.txt", b"good")
        if escape == "absolute":
            add_tar_file(bundle, str(outside), b"pwned")
        elif escape == "dotdot":
            add_tar_file(bundle, f"top/../../{outside.name}", b"pwned")
        elif escape == "symlink":
            add_tar_link(bundle, "top/out", str(outside.parent), tarfile.SYMTYPE)
            add_tar_file(bundle, f"top/out/{outside.name}", b"pwned")
        elif escape == "relative-symlink":
            add_tar_link(bundle, "top/out", "../..", tarfile.SYMTYPE)
            add_tar_file(bundle, f"top/out/{outside.name}", b"pwned")
        elif escape == "hardlink":
            add_tar_link(bundle, "top/passwd", "/etc/passwd", tarfile.LNKTYPE)
        elif escape == "device":
            add_tar_link(bundle, "top/null", "", tarfile.CHRTYPE)
    return path


@pytest.mark.parametrize("mode", ["w", "w:gz"])
@pytest.mark.parametrize(
    "escape", ["absolute", "dotdot", "symlink", "relative-symlink", "hardlink", "device"]
)
def test_tar_members_escaping_the_target_are_refused(
    tmp_path: Path, mode: str, escape: str
) -> None:
    outside = tmp_path / "outside" / "marker.txt"
    outside.parent.mkdir()
    suffix = ".tar.gz" if mode == "w:gz" else ".tar"
    archive = hostile_tar(tmp_path / f"hostile{suffix}", mode, escape, outside)
    work = tmp_path / "work" / "deep"  # ``top/../..`` from the target lands in tmp_path
    work.mkdir(parents=True)
    target = work / "raw"
    with pytest.raises(
        DataError, match=rf"hostile{re.escape(suffix)}: refused to extract member '(top/|/)"
    ):
        extract_archive(archive, target)
    assert not outside.exists()
    assert not (tmp_path / outside.name).exists() and not (work / outside.name).exists()
    assert not target.exists() and not (work / ".raw.partial").exists()


def test_tar_error_names_the_member_and_reason(tmp_path: Path) -> None:
    outside = tmp_path / "marker.txt"
    archive = hostile_tar(tmp_path / "a.tar", "w", "absolute", outside)
    with pytest.raises(
        DataError, match=rf"a\.tar: refused to extract member '{outside}': absolute"
    ):
        extract_archive(archive, tmp_path / "raw")
    archive = hostile_tar(tmp_path / "b.tar", "w", "symlink", outside)
    with pytest.raises(DataError, match=r"b\.tar: refused to extract member 'top/out'"):
        extract_archive(archive, tmp_path / "raw")


def test_tar_links_inside_the_tree_still_extract(tmp_path: Path) -> None:
    archive = tmp_path / "fine.tar"
    with tarfile.open(archive, "w") as bundle:
        add_tar_file(bundle, "top/a/data.txt", b"data")
        add_tar_link(bundle, "top/b", "a", tarfile.SYMTYPE)
        add_tar_link(bundle, "top/copy.txt", "top/a/data.txt", tarfile.LNKTYPE)
    out = extract_archive(archive, tmp_path / "raw")
    assert (out / "top" / "b" / "data.txt").read_bytes() == b"data"
    assert (out / "top" / "copy.txt").read_bytes() == b"data"


def hostile_zip(path: Path, escape: str, outside: Path) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("top/good.txt", "good")
        if escape == "absolute":
            bundle.writestr(str(outside), "pwned")
        elif escape == "dotdot":
            bundle.writestr(f"top/../../{outside.name}", "pwned")
        elif escape == "symlink":
            link = zipfile.ZipInfo("top/out")
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(link, str(outside.parent))
    return path


@pytest.mark.parametrize(
    ("escape", "reason"),
    [("absolute", "absolute path"), ("dotdot", "'..' part"), ("symlink", "symbolic link")],
)
def test_zip_members_escaping_the_target_are_refused(
    tmp_path: Path, escape: str, reason: str
) -> None:
    outside = tmp_path / "outside" / "marker.txt"
    outside.parent.mkdir()
    archive = hostile_zip(tmp_path / "hostile.zip", escape, outside)
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    target = work / "raw"
    with pytest.raises(DataError, match=rf"hostile\.zip: refused to extract member .*{reason}"):
        extract_archive(archive, target)
    assert not outside.exists() and not (tmp_path / outside.name).exists()
    assert not target.exists() and not (work / ".raw.partial").exists()


# ------------------------------------------------------------------ pickled code
class RunsCodeWhenUnpickled:
    """Unpickling this calls ``open(marker, "w")``: the file appears if code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def hostile_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A ``.pt`` shaped like a workspace checkpoint whose pickle would create ``marker``."""
    marker = tmp_path / "code-ran.txt"
    path = tmp_path / "hostile.pt"
    payload = {
        "format": ckpt.CHECKPOINT_FORMAT,
        "version": ckpt.CHECKPOINT_VERSION,
        "model": {"weight": torch.zeros(2)},
        "hook": RunsCodeWhenUnpickled(marker),
    }
    torch.save(payload, path)
    assert not marker.exists()
    return path, marker


def test_package_loads_every_checkpoint_weights_only() -> None:
    package = Path(__file__).resolve().parents[1] / "hdmnet_core"
    calls = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "torch.load(" in line and "weights_only=True" not in line and "``" not in line
    ]
    assert not calls, f"torch.load without weights_only=True: {calls}"
    assert "pickle.load" not in "".join(p.read_text() for p in package.rglob("*.py"))


def test_checkpoint_reading_refuses_pickled_code(hostile_checkpoint: tuple[Path, Path]) -> None:
    path, marker = hostile_checkpoint
    with pytest.raises(UserError, match=r"hostile\.pt: not a readable checkpoint .*weights-only"):
        ckpt.read_checkpoint(path)
    with pytest.raises(UserError, match=r"hostile\.pt: not a readable checkpoint"):
        ckpt.load_trained_model(path)
    assert not marker.exists()


def test_converter_refuses_pickled_code(hostile_checkpoint: tuple[Path, Path]) -> None:
    path, marker = hostile_checkpoint
    with pytest.raises(UserError, match=r"hostile\.pt: not a readable PyTorch checkpoint"):
        convert.load_file(path)
    with pytest.raises(UserError, match=r"hostile\.pt: not a readable PyTorch checkpoint"):
        convert.read_weights_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("command", ["predict", "convert-checkpoint"])
def test_cli_refuses_pickled_code_with_exit_2(
    hostile_checkpoint: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    path, marker = hostile_checkpoint
    picture = tmp_path / "image.png"
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(picture)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(mask)
    out = tmp_path / "out.png"
    if command == "predict":
        argv = ["predict", "--ckpt", str(path), "--support", str(picture), "--support-mask",
                str(mask), "--query", str(picture), "--out", str(out), "--device", "cpu"]  # fmt: skip
    else:
        argv = ["convert-checkpoint", str(path), str(out), "--kind", "hdmnet"]
    assert cli.main(argv) == 2
    assert "hostile.pt: not a readable" in capsys.readouterr().err
    assert not marker.exists() and not out.exists()


# ------------------------------------------------------------ names read from files
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/passwd", "'..' part"),
        ("masks/../../../etc/passwd", "'..' part"),
        ("/etc/passwd", "absolute path"),
        ("", "empty name"),
    ],
)
def test_safe_join_refuses_names_leaving_the_root(tmp_path: Path, name: str, reason: str) -> None:
    with pytest.raises(DataError, match=rf"list\.txt:3: name .* outside .*{re.escape(reason)}"):
        safe_join(tmp_path, name, "list.txt:3")
    assert safe_join(tmp_path, "masks/a.png", "list.txt:3") == tmp_path / "masks" / "a.png"


def test_safe_join_refuses_a_symlink_in_the_tree_pointing_out(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "masks").mkdir(parents=True)
    outside.mkdir()
    (root / "masks" / "out").symlink_to(outside, target_is_directory=True)
    (root / "masks" / "in").symlink_to(root / "masks", target_is_directory=True)
    with pytest.raises(DataError, match=r"index\.json: name 'masks/out/a\.png' .*symbolic link"):
        safe_join(root, "masks/out/a.png", "index.json")
    assert safe_join(root, "masks/in/a.png", "index.json") == root / "masks" / "in" / "a.png"


def prepared_pascal(tmp_path: Path) -> Path:
    voc, sbd = make_inputs(tmp_path)
    prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    return tmp_path / "data" / "pascal"


def test_a_hostile_voc_list_line_is_refused_naming_file_and_line(tmp_path: Path) -> None:
    voc, sbd = make_inputs(tmp_path)
    listing = voc / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text(listing.read_text() + "../../../../etc/passwd\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(listing))}:3: image name"):
        prepare_pascal(tmp_path / "data", voc=str(voc), sbd=str(sbd), progress=False)
    assert not (tmp_path / "data" / "pascal" / "prepared.json").exists()


@pytest.mark.parametrize("column", ["images", "masks"])
def test_a_prepared_index_pointing_outside_the_dataset_is_refused(
    tmp_path: Path, column: str
) -> None:
    folder = prepared_pascal(tmp_path)
    index_path = folder / "index" / "val.json"
    index = json.loads(index_path.read_text())
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((folder / index["masks"][0]).read_bytes())
    for hostile in ("../../outside.jpg", str(outside), "/etc/passwd"):
        index[column][0] = hostile
        index_path.write_text(json.dumps(index))
        source = PascalSource(tmp_path / "data", "val")
        load = source.load_image if column == "images" else source.load_mask
        with pytest.raises(DataError, match=rf"val\.json: .*{re.escape(hostile)}.* outside"):
            load(0)


def test_a_symlinked_mask_pointing_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    folder = prepared_pascal(tmp_path)
    source = PascalSource(tmp_path / "data", "val")
    mask = source.mask_path(0)
    outside = tmp_path / "outside.png"
    outside.write_bytes(mask.read_bytes())
    mask.unlink()
    mask.symlink_to(outside)
    with pytest.raises(DataError, match=r"val\.json: name 'masks/.*symbolic link"):
        source.load_mask(0)
    assert folder.is_dir()


def test_a_hostile_prepared_files_record_never_deletes_outside_the_tree(tmp_path: Path) -> None:
    folder = prepared_pascal(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    record = folder / "prepared_files.txt"
    lines = record.read_text().splitlines()
    record.write_text("\n".join([*lines, "../../victim.txt"]) + "\n")
    voc, sbd = tmp_path / "in" / "VOCdevkit" / "VOC2012", tmp_path / "in" / "benchmark_RELEASE"
    with pytest.raises(DataError, match=rf"prepared_files\.txt:{len(lines) + 1}: name '\.\./"):
        prepare_pascal(
            tmp_path / "data", voc=str(voc), sbd=str(sbd), train_set="trainaug", progress=False
        )
    assert victim.read_text() == "the user's file"
    assert (folder / "prepared.json").is_file()  # refused before anything moved
    record.write_text("\n".join([*lines, "raw/victim.txt"]) + "\n")
    with pytest.raises(DataError, match=r"prepared_files\.txt:\d+: 'raw/victim\.txt' is not under"):
        prepare_pascal(
            tmp_path / "data", voc=str(voc), sbd=str(sbd), train_set="trainaug", progress=False
        )


def test_a_hostile_coco_file_name_is_refused_naming_the_annotation_file(tmp_path: Path) -> None:
    base = make_coco(tmp_path)
    annotations = base / "annotations" / "instances_val2014.json"
    content = json.loads(annotations.read_text())
    content["images"][0]["file_name"] = "../../../outside.jpg"
    annotations.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"instances_val2014\.json image 7: name '\.\./"):
        prepare_coco(tmp_path / "data", coco=str(base), progress=False)


def test_a_synthetic_tree_with_a_pickled_array_is_regenerated_without_running_it(
    tmp_path: Path,
) -> None:
    """``images.npy`` is read with numpy's ``allow_pickle=False``: an object array whose
    pickle would run code is treated as a broken file of our tree and regenerated."""
    import numpy as np

    from hdmnet_core.config import DataConfig
    from hdmnet_core.data.synthetic import ensure_synthetic

    data = DataConfig(synthetic_image_size=32, synthetic_images_train=4, synthetic_images_val=2)
    tree = ensure_synthetic(tmp_path, data)
    marker = tmp_path / "code-ran.txt"
    hostile = np.empty(1, dtype=object)
    hostile[0] = RunsCodeWhenUnpickled(marker)
    np.save(tree / "train" / "images.npy", hostile, allow_pickle=True)
    assert not marker.exists()
    again = ensure_synthetic(tmp_path, data)
    assert not marker.exists()
    images = np.load(again / "train" / "images.npy", allow_pickle=False)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
