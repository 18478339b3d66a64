"""Prepare coco under ROOT/coco: the same code as ``python -m hdmnet_core prepare coco``.

    python data_scripts/prepare_coco.py --root data [options]     (see --help)
    python data_scripts/prepare_coco.py --root data --verify      (checks, changes nothing)

Steps (hdmnet_core/data/coco.py): locate (or fetch) the official archives, extract them,
check every image and mask, write the per-image class areas (index/<split>.json) and
the lists, then the completion marker prepared.json. docs/data.md describes the result.
"""

from __future__ import annotations

import _bootstrap  # noqa: F401

from hdmnet_core.data.prepare import main_for_script

if __name__ == "__main__":
    raise SystemExit(main_for_script("coco", "python data_scripts/prepare_coco.py"))
