"""The prepared GPU run (``benchmarks/gpu_check.sh``), rehearsed on CPU at tiny sizes.

It must run end to end here, so that a session lent a GPU spends its minutes measuring,
not debugging the script; and it must stop with a message saying so when the
device it is told to use is not there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"

REHEARSAL = {
    "DEVICE": "cpu",
    "PROFILE": "cpu-tiny",
    "SIZE": "64",
    "STEPS": "3",
    "BASE_STEPS": "2",
    "DDP_STEPS": "2",
    "AMP": "off",
    "COMPILE": "off",
    "WORKERS": "0",
    "SYNTHETIC_TRAIN": "200",
    "SYNTHETIC_VAL": "60",
    "EXTRA_SET": "data.min_class_area=40",
    "EVAL_ARGS": "--backbone tiny --width 32 --episodes 1 --seeds 2 --protocol-episodes 4 "
    "--shots 1 --threads 1 --synthetic-images 60",
}


def run_check(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **REHEARSAL,
        **settings,
        "PYTHON": sys.executable,
        "RESULTS": str(tmp_path / "results"),
        "TMPDIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "CI": "1",
    }
    return subprocess.run(
        ["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_gpu_check_rehearses_every_measurement_on_cpu(tmp_path: Path) -> None:
    done = run_check(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "results"
    assert sorted(p.name for p in results.iterdir()) == [
        "ddp_metrics.csv",
        "evaluation_speed.json",
        "gpu_check.log",
        "training_speed.json",
    ]
    training = json.loads((results / "training_speed.json").read_text())
    assert (training["base_steps"], training["steps"]) == (2, 3)
    (row,) = training["rows"]
    assert row["compile"] is False and row["meta_loss_first_window"] > 0
    log = (results / "gpu_check.log").read_text()
    assert "1 process(es) x 1 accumulation x 8; device cpu; amp off; DDP over gloo" in log
    ddp_rows = (results / "ddp_metrics.csv").read_text().splitlines()
    assert ddp_rows[0].startswith("step,") and len(ddp_rows) == 3  # header + 2 steps
    evaluation = json.loads((results / "evaluation_speed.json").read_text())
    assert [r["same_counts"] for r in evaluation["results"]] == [True]
    assert not list(tmp_path.glob("gpu-check-*")), "the work folder is removed"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_stops_with_a_clear_message_without_the_device(tmp_path: Path) -> None:
    done = run_check(tmp_path, DEVICE="cuda")
    assert done.returncode == 2
    assert "DEVICE=cuda, but torch sees no CUDA device here" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "results" / "training_speed.json").exists()
