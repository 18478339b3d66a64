"""Resumable, verified downloads against a loopback HTTP server; safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hdmnet_core.data.download import ARCHIVES, download, extract_archive, verify_file
from hdmnet_core.data.source import DataError

PAYLOAD = bytes(range(256)) * 600  # 153,600 bytes


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; ``cut_after`` drops the connection mid-body."""

    cut_after: int | None = None
    range_headers: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        header = self.headers.get("Range")
        type(self).range_headers.append(header)
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        body = PAYLOAD[start:]
        self.send_response(206 if header else 200)
        self.send_header("Content-Length", str(len(body)))
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        limit = type(self).cut_after
        self.wfile.write(body if limit is None else body[:limit])
        self.wfile.flush()
        if limit is not None:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"cut_after": None, "range_headers": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/file.bin", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_interrupted_download_resumes_with_range(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    url, handler = server
    destination = tmp_path / "file.bin"
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    handler.cut_after = 50_000
    with pytest.raises(DataError, match="run the same command again to resume"):
        download(url, destination, size=len(PAYLOAD), sha256=sha, progress=False, timeout=5)
    part = tmp_path / "file.bin.part"
    assert part.stat().st_size == 50_000 and not destination.exists()

    handler.cut_after = None
    download(url, destination, size=len(PAYLOAD), sha256=sha, progress=False, timeout=5)
    assert handler.range_headers == [None, "bytes=50000-"]
    assert destination.read_bytes() == PAYLOAD
    assert not part.exists()
    # A second call finds the verified file and does not fetch again.
    download(url, destination, size=len(PAYLOAD), sha256=sha, progress=False, timeout=5)
    assert len(handler.range_headers) == 2


def test_checksum_mismatch_deletes_the_part_file(
    tmp_path: Path, server: tuple[str, type[_Handler]]
) -> None:
    url, _ = server
    destination = tmp_path / "file.bin"
    with pytest.raises(DataError, match="md5 .* does not match expected 0+"):
        download(url, destination, md5="0" * 32, progress=False, timeout=5)
    assert not destination.exists() and not (tmp_path / "file.bin.part").exists()


def test_file_url_and_size_check(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    got = download(
        source.as_uri(),
        tmp_path / "out" / "copy.bin",
        md5=hashlib.md5(PAYLOAD).hexdigest(),
        progress=False,
    )
    assert got.read_bytes() == PAYLOAD
    with pytest.raises(DataError, match="size 153600 bytes, expected 5"):
        verify_file(got, size=5)


def test_archive_table_is_consistent() -> None:
    for key, archive in ARCHIVES.items():
        assert archive.key == key and archive.source
        for digest, length in ((archive.md5, 32), (archive.sha256, 64)):
            assert digest is None or (len(digest) == length and int(digest, 16) >= 0)
    assert ARCHIVES["voc2012"].md5 == "6cd6e144f989b92b3379bac3b3de84fd"  # torchvision voc.py
    assert ARCHIVES["sbd"].md5 == "82b4d87ceb2ed10f6038a1cba92111cb"  # torchvision sbd.py
    assert ARCHIVES["fss1000"].url is None and ARCHIVES["fss1000"].md5 is None


def test_extraction_is_all_or_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as bundle:
        bundle.writestr("top/a.txt", "a")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(good.read_bytes()[:30])
    with pytest.raises(DataError, match="bad.zip: not a tar or zip archive"):
        extract_archive(bad, tmp_path / "out_bad")
    assert not (tmp_path / "out_bad").exists() and not (tmp_path / ".out_bad.partial").exists()
    out = extract_archive(good, tmp_path / "out")
    assert (out / "top" / "a.txt").read_text() == "a"
