"""The speed benchmark runs end to end at a tiny size and its fp32 settings agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_model_speed_benchmark_runs_and_fp32_settings_match_faithful(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "model_speed.py"), "--backbone", "tiny"]
    command += ["--size", "48", "--shots", "2", "--repeats", "1", "--threads", "1"]
    command += ["--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "faithful" in result.stdout
    payload = json.loads(out.read_text())
    settings = payload["results"][0]["settings"]
    assert {"faithful", "pooled_branch_conv", "fold_bn", "channels_last"} <= settings.keys()
    for name, entry in settings.items():
        if not name.startswith("bf16"):
            assert entry["vs_faithful"]["final_logits_allclose"], name
            assert entry["vs_faithful"]["meta_logits_allclose"], name
