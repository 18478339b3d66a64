"""Lets ``python data_scripts/<script>.py`` import ``hdmnet_core`` from a source checkout."""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))
