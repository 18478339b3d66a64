"""What a training run writes while it runs: a CSV of every logged step, TensorBoard events
and a progress bar.

- ``metrics.csv`` (one row per ``train.log_every`` steps and per validation): step, epoch,
  every loss term, every param group's learning rate, episodes/s, peak memory (MB).
  On resume, rows after the resumed step (written after the last checkpoint, before the
  crash) are dropped first, so the file reads as one uninterrupted run.
- ``tensorboard/``: the same scalars as TensorBoard events (``tensorboard --logdir RUN``).
- a ``tqdm.auto`` bar (a widget in notebooks, text in terminals), off in CI (``CI`` set),
  when not a TTY, and on every rank but 0.

Only rank 0 writes (``TrainingLog(enabled=False)`` elsewhere).
"""

from __future__ import annotations

import csv
import io
import os
import resource
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hdmnet_core.atomic import atomic_write_text


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocator peak, else the resident set peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def progress_wanted(requested: bool | None) -> bool:
    """``None`` = automatic: a bar in terminals and notebooks, none in CI or in a pipe."""
    if requested is not None:
        return requested
    if os.environ.get("CI"):
        return False
    return sys.stderr.isatty() or in_notebook()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


class TrainingLog:
    """CSV + TensorBoard scalars of one run folder."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.csv_path = run_dir / "metrics.csv"
        self._columns: list[str] | None = None
        self._writer: Any = None
        self._last_time = time.perf_counter()
        self._last_step = resume_step or 0
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.csv_path.unlink(missing_ok=True)
        else:
            self._truncate_after(resume_step)
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

        self._writer = SummaryWriter(
            str(run_dir / "tensorboard"), purge_step=resume_step if resume_step else None
        )

    def _truncate_after(self, step: int) -> None:
        """Keep the CSV rows up to ``step`` (those after it were never checkpointed)."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return
        kept = [r for r in rows if int(float(r["step"])) <= step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(self.csv_path, buffer.getvalue())
        self._columns = list(rows[0])

    def rate(self, step: int, items_per_step: int) -> float:
        """Items (episodes or images) per second since the previous call."""
        now = time.perf_counter()
        seconds = max(now - self._last_time, 1e-9)
        done = max(step - self._last_step, 0) * items_per_step
        self._last_time, self._last_step = now, step
        return done / seconds

    def write(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        """One row of scalars (also to TensorBoard as ``prefix/name``)."""
        if not self.enabled:
            return
        row = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}
        if self._columns is None and self.csv_path.exists():
            with self.csv_path.open(newline="") as handle:
                header = next(csv.reader(handle), None)
            self._columns = header
        new_columns = [k for k in row if self._columns is None or k not in self._columns]
        if new_columns:
            self._rewrite_with_columns((self._columns or []) + new_columns)
        assert self._columns is not None
        with self.csv_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self._columns).writerow(row)
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", float(value), step)

    def _rewrite_with_columns(self, columns: list[str]) -> None:
        rows: list[dict[str, str]] = []
        if self.csv_path.exists():
            with self.csv_path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, buffer.getvalue())
        self._columns = columns

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
