"""Prepare pascal under ROOT/pascal: the same code as ``python -m hdmnet_core prepare pascal``.

    python data_scripts/prepare_pascal.py --root data [options]     (see --help)
    python data_scripts/prepare_pascal.py --root data --verify      (checks, changes nothing)

Steps (hdmnet_core/data/pascal.py): fetch or locate the official archives, extract
them, check every image, convert every mask to a class-index PNG, write the per-image
class areas (index/<split>.json) and the lists, then the completion marker
prepared.json. docs/data.md describes the result.
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401

from hdmnet_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prepare", "pascal", *sys.argv[1:]]))
