"""Official dataset archives: where they live, how big they are, and their checksums.

Every archive the ``prepare`` command can fetch is one row of :data:`ARCHIVES`. Sizes
and checksums come from a public source named in the row; where no public checksum
exists the row says so (``None``) and only the size is checked. Nothing here is
invented: an unknown value is ``None``.

Downloads (:func:`download`) go to ``NAME.part`` beside the destination and resume
with an HTTP ``Range`` request when a ``.part`` file is already there; the file is
verified (size, then checksum) and only then moved to ``NAME`` with :func:`os.replace`.
So a file without ``.part`` is always complete and verified.

Extraction (:func:`extract_archive`) unpacks into a hidden ``.NAME.partial`` folder and
renames it when done: an interrupted extraction never looks finished. Archives are
untrusted: members escaping the target (absolute paths, ``..``, links pointing out) are
refused (``tarfile``'s ``data`` filter plus a name check; the same checks for zip).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdmnet_core.data.source import DataError, name_problem

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One official archive. ``md5``/``sha256``/``size`` are ``None`` where unpublished."""

    key: str
    filename: str
    url: str | None
    size: int | None
    md5: str | None
    sha256: str | None
    source: str
    """Where the checksum / size were read (a public file), or why there is none."""


ARCHIVES: dict[str, Archive] = {
    archive.key: archive
    for archive in (
        Archive(
            key="voc2012",
            filename="VOCtrainval_11-May-2012.tar",
            url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            size=1999639040,
            md5="6cd6e144f989b92b3379bac3b3de84fd",
            sha256="e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
            source="md5: torchvision datasets/voc.py; size + sha256: "
            "tensorflow/datasets url_checksums/voc.txt",
        ),
        Archive(
            key="sbd",
            filename="benchmark.tgz",
            url="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
            "semantic_contours/benchmark.tgz",
            size=None,  # not published next to the md5; the md5 alone is checked
            md5="82b4d87ceb2ed10f6038a1cba92111cb",
            sha256=None,
            source="md5: torchvision datasets/sbd.py (no published size)",
        ),
        Archive(
            key="sbd_train_noval",
            filename="train_noval.txt",
            url="https://www.cs.cornell.edu/~bharathh/train_noval.txt",
            size=None,
            md5="79bff800c5f0b1ec6b21080a3c066722",
            sha256=None,
            source="md5: torchvision datasets/sbd.py (SBD training images not in VOC2012 val)",
        ),
        Archive(
            key="coco2014_train",
            filename="train2014.zip",
            url="http://images.cocodataset.org/zips/train2014.zip",
            size=13510573713,
            md5=None,
            sha256="ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775",
            source="size + sha256: tensorflow/datasets url_checksums/coco.txt "
            "(cocodataset.org publishes none)",
        ),
        Archive(
            key="coco2014_val",
            filename="val2014.zip",
            url="http://images.cocodataset.org/zips/val2014.zip",
            size=6645013297,
            md5=None,
            sha256="fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0",
            source="size + sha256: tensorflow/datasets url_checksums/coco.txt",
        ),
        Archive(
            key="coco2014_annotations",
            filename="annotations_trainval2014.zip",
            url="http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
            size=252872794,
            md5=None,
            sha256="031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009",
            source="size + sha256: tensorflow/datasets url_checksums/coco.txt",
        ),
        Archive(
            key="fss1000",
            filename="FSS-1000.zip",
            url=None,  # a Google Drive link (HSNet README) that plain HTTP cannot fetch
            size=None,
            md5=None,
            sha256=None,
            source="no published checksum or size; download by hand from the HSNet README "
            "link (Google Drive file 1i9WlwCEqK4XOdBRh0nShtxxEdWe-1q_r)",
        ),
    )
}


def file_digest(path: str | os.PathLike[str], algorithm: str) -> str:
    """Hex digest of a file (``"md5"`` or ``"sha256"``), read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(
    path: str | os.PathLike[str],
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
) -> None:
    """Raise :class:`DataError` naming ``path`` if its size or checksum is not the expected one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file is missing")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise DataError(f"{path}: size {actual_size} bytes, expected {size} (truncated download?)")
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is not None:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise DataError(f"{path}: {algorithm} {actual} does not match expected {expected}")


def _progress_bar(total: int | None, initial: int, name: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not enabled,
    )


def download(
    url: str,
    destination: str | os.PathLike[str],
    size: int | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``destination``, resuming ``destination.part`` with HTTP Range.

    Works for ``http(s)://`` and ``file://`` URLs. Returns the verified destination. A
    destination that already exists is verified and kept (never fetched again). A
    ``.part`` whose checksum fails after completion is deleted, so the next run starts
    clean; a ``.part`` cut short by a network error is kept for the next run to resume.
    """
    destination = Path(destination)
    if destination.exists():
        verify_file(destination, size, md5, sha256)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is None or have < size:
        _fetch_into(url, part, have, size, progress, timeout)
    try:
        verify_file(part, size, md5, sha256)
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, destination)
    return destination


def _fetch_into(
    url: str, part: Path, have: int, size: int | None, progress: bool, timeout: float
) -> None:
    """Append the bytes of ``url`` from offset ``have`` to ``part`` (restart if no Range)."""
    request = urllib.request.Request(url, headers={"User-Agent": "hdmnet-core"})
    if have > 0 and not url.startswith("file:"):
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have > 0:  # nothing left to send: the .part is complete
            return
        raise DataError(f"{url}: HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise DataError(f"{url}: cannot connect ({error.reason})") from error
    with response:
        resumed = getattr(response, "status", 200) == 206
        if not resumed:
            have = 0  # the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        expected_total = (
            size if size is not None else (have + int(length) if length is not None else None)
        )
        written = 0
        with (
            open(part, "ab" if resumed else "wb") as handle,
            _progress_bar(expected_total, have, part.name[: -len(".part")], progress) as bar,
        ):
            try:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except OSError as error:  # includes http.client.IncompleteRead
                raise DataError(
                    f"{url}: connection lost after {have + written} bytes; "
                    f"run the same command again to resume from {part}"
                ) from error
        if length is not None and written < int(length):
            raise DataError(
                f"{url}: connection closed after {have + written} bytes; "
                f"run the same command again to resume from {part}"
            )


def fetch_archive(key: str, folder: str | os.PathLike[str], progress: bool = True) -> Path:
    """Download official archive ``key`` of :data:`ARCHIVES` into ``folder`` (verified)."""
    archive = ARCHIVES[key]
    if archive.url is None:
        raise DataError(
            f"{archive.filename}: cannot be downloaded automatically ({archive.source}); "
            f"put it in {folder} or pass its path"
        )
    return download(
        archive.url,
        Path(folder) / archive.filename,
        size=archive.size,
        md5=archive.md5,
        sha256=archive.sha256,
        progress=progress,
    )


def extract_archive(archive: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Unpack a ``.tar``/``.tgz``/``.tar.gz``/``.zip`` into ``destination`` (created whole).

    If ``destination`` exists it is taken as complete (it only ever appears by rename).
    An archive is untrusted input: a member that would land outside ``destination``
    (absolute path, a ``..`` part, a link pointing out of the tree, a device file; zip: any
    symlink entry) is a :class:`DataError` naming the archive and the member, nothing is
    written outside, and the half-extracted folder is removed.
    """
    archive, destination = Path(archive), Path(destination)
    if destination.is_dir():
        return destination
    if not archive.is_file():
        raise DataError(f"{archive}: archive is missing")
    partial = destination.with_name(f".{destination.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted run: never trusted
    partial.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                _extract_zip(bundle, archive, partial)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                bundle.extractall(partial, filter=_tar_member_filter(archive))
        else:
            raise DataError(f"{archive}: not a tar or zip archive (truncated or wrong file?)")
    except tarfile.FilterError as error:  # the "data" filter: links out, special files
        shutil.rmtree(partial, ignore_errors=True)
        raise _refused(archive, error.tarinfo.name, str(error)) from error
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{archive}: cannot be extracted ({error})") from error
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, destination)
    return destination


def _refused(archive: Path, member: str, reason: str) -> DataError:
    return DataError(
        f"{archive}: refused to extract member {member!r}: {reason}; the archive is not "
        "trusted (nothing was kept from it): download it again from the official source"
    )


def _tar_member_filter(archive: Path) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    """``tarfile``'s ``data`` filter, refusing absolute and ``..`` names first (the data
    filter itself would silently strip a leading ``/``)."""

    def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        reason = name_problem(member.name)
        if reason is not None:
            raise _refused(archive, member.name, reason)
        return tarfile.data_filter(member, path)

    return check


def _extract_zip(bundle: zipfile.ZipFile, archive: Path, target: Path) -> None:
    """Check every member of ``bundle`` (name, normalised path, symlink flag), then extract."""
    root = target.resolve()
    for info in bundle.infolist():
        reason = name_problem(info.filename)
        if reason is None and stat.S_ISLNK(info.external_attr >> 16):
            reason = "a symbolic link (zip links are refused)"
        if reason is None and not (root / info.filename).resolve().is_relative_to(root):
            reason = "its path leaves the target folder"
        if reason is not None:
            raise _refused(archive, info.filename, reason)
    bundle.extractall(target)
