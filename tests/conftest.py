"""Test configuration: non-interactive plots and every cache inside the project.

The Agg backend is set here only, so notebooks opened by a person still plot inline.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CACHE = PROJECT_ROOT / ".cache"

for variable, sub in {
    "MPLCONFIGDIR": "matplotlib",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "IPYTHONDIR": "ipython",
    "HF_HOME": "huggingface",
    "TORCH_HOME": "torch",
    "XDG_CACHE_HOME": "xdg",
}.items():
    os.environ.setdefault(variable, str(CACHE / sub))
os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import torch  # noqa: E402

# One intra-op thread per test process: `make test` runs two pytest workers on two
# cores, and oversubscribed threads made tests up to 100x slower on a busy machine.
torch.set_num_threads(1)
