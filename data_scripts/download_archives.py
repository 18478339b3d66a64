"""Download official dataset archives (resumable, checksum-verified) into a folder.

    python data_scripts/download_archives.py --list
    python data_scripts/download_archives.py voc2012 sbd sbd_train_noval --dest data/pascal/downloads
    python data_scripts/download_archives.py coco2014_annotations coco2014_train coco2014_val \
        --dest data/coco/downloads

Run the same command again after an interruption: it resumes ``NAME.part`` with an
HTTP Range request. The table of URLs, sizes and checksums is
``hdmnet_core.data.download.ARCHIVES``; ``prepare --download`` uses the same code.
"""

from __future__ import annotations

import argparse

import _bootstrap  # noqa: F401

from hdmnet_core.data.download import ARCHIVES, fetch_archive


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", help=f"archives to fetch: {', '.join(ARCHIVES)}")
    parser.add_argument("--dest", default="data/downloads", help="folder (default data/downloads)")
    parser.add_argument("--list", action="store_true", help="print the archive table and exit")
    args = parser.parse_args()
    if args.list or not args.keys:
        for archive in ARCHIVES.values():
            size = f"{archive.size / 1e9:.2f} GB" if archive.size else "size unknown"
            print(
                f"{archive.key:<22} {archive.filename:<32} {size:>13}  {archive.url or '(manual)'}"
            )
            print(f"{'':<22} checksum source: {archive.source}")
        return 0
    unknown = [key for key in args.keys if key not in ARCHIVES]
    if unknown:
        parser.error(f"unknown archive(s) {unknown}; choose from {list(ARCHIVES)}")
    for key in args.keys:
        path = fetch_archive(key, args.dest)
        print(f"{key}: {path} (verified)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
