"""Untrusted input: hostile archives, list files, manifests and pickled checkpoints.

Every hostile file is made here, in ``tmp_path``: archives whose members escape the
target folder, checkpoints whose pickle would run code, and list files or manifests whose
names point outside the dataset root.
"""

from __future__ import annotations

import io
import re
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from hdmnet_core.data.download import extract_archive
from hdmnet_core.data.source import DataError


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
