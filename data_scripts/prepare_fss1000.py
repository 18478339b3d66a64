"""Prepare fss1000 under ROOT/fss1000: the same code as ``python -m hdmnet_core prepare fss1000``.

    python data_scripts/prepare_fss1000.py --root data [options]     (see --help)
    python data_scripts/prepare_fss1000.py --root data --verify      (checks, changes nothing)

Steps (hdmnet_core/data/fss1000.py): fetch or locate the official archives, extract
them, check every image, convert every mask to a class-index PNG (FSS-1000: masks are kept and checked), write the per-image
class areas (index/<split>.json) and the lists, then the completion marker
prepared.json. docs/data.md describes the result.
"""

from __future__ import annotations

import sys

import _bootstrap  # noqa: F401

from hdmnet_core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["prepare", "fss1000", *sys.argv[1:]]))
