"""The speed benchmark runs end to end at a tiny size and its fp32 settings agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hdmnet_core.benchmark_report import (
    render_evaluation_speed,
    render_model_speed,
    render_training_speed,
)
from tests.train_helpers import TINY_SETTINGS

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
    assert render_model_speed(payload) in result.stdout  # printed = documented
    settings = payload["results"][0]["settings"]
    assert {"faithful", "pooled_branch_conv", "fold_bn", "channels_last"} <= settings.keys()
    for name, entry in settings.items():
        if not name.startswith("bf16"):
            assert entry["vs_faithful"]["final_logits_allclose"], name
            assert entry["vs_faithful"]["meta_logits_allclose"], name


def test_official_side_by_side_names_what_the_official_tree_lacks(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "HDMNet.py").write_text("")
    command = [sys.executable, str(ROOT / "benchmarks" / "official_side_by_side.py")]
    command += ["--official-root", str(tmp_path), "--out", str(tmp_path / "out.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert "missing model/Transformer.py" in result.stderr
    assert "chunbolang/BAM" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_official_stand_ins_provide_what_the_official_code_imports() -> None:
    code = (
        "import sys; sys.path.insert(0, 'benchmarks/official_stand_ins');"
        "import torch;"
        "from mmcv.cnn import ConvModule;"
        "from mmcv.cnn.bricks.drop import build_dropout;"
        "from mmcv.cnn.bricks.transformer import MultiheadAttention;"
        "from mmcv.cnn.utils.weight_init import constant_init, normal_init, trunc_normal_init;"
        "from mmcv.runner import BaseModule, ModuleList, Sequential;"
        "from mmseg.models.utils import PatchEmbed, nchw_to_nlc, nlc_to_nchw;"
        "from mmseg.ops import resize;"
        "m = ConvModule(3, 4, 3, padding=1, norm_cfg=dict(type='SyncBN')).eval();"
        "assert sorted(m.state_dict())[0].startswith('bn.') and m.conv.bias is None;"
        "assert (m(torch.randn(1, 3, 5, 5)) >= 0).all();"
        "assert ConvModule(3, 4, 1, act_cfg=None).activate is None;"
        "p = PatchEmbed(4, 8, kernel_size=3, stride=2, padding=1, norm_cfg=dict(type='LN', eps=1e-6));"
        "tokens, size = p(torch.randn(2, 4, 9, 9)); assert size == (5, 5) and tokens.shape == (2, 25, 8);"
        "assert nlc_to_nchw(nchw_to_nlc(torch.ones(1, 8, 5, 5)), (5, 5)).shape == (1, 8, 5, 5)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_evaluation_speed_benchmark_runs_and_cached_counts_match(tmp_path: Path) -> None:
    out = tmp_path / "evaluation_speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "evaluation_speed.py")]
    command += ["--backbone", "tiny", "--size", "48", "--width", "16", "--shots", "1", "2"]
    command += ["--episodes", "2", "--seeds", "2", "--protocol-episodes", "10"]
    command += ["--threads", "1", "--data-root", str(tmp_path / "data"), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "protocol x" in result.stdout and "PASCAL-5i h uncached / cached" in result.stdout
    record = json.loads(out.read_text())
    assert render_evaluation_speed(record) in result.stdout  # printed = documented
    rows = record["results"]
    assert [r["shots"] for r in rows] == [1, 2]
    for row in rows:
        assert row["same_counts"]  # cached = uncached intersection/union sums
        assert row["uncached_s"] > 0 and row["cached_s"] > 0 and row["build_s_per_image"] > 0
        assert row["check_s"] > 0  # the cache's weight check, timed apart from the episodes
        assert all(t > 0 for t in row["end_to_end_s"].values())
        assert row["protocol"]["query_images"] > 0 and row["protocol"]["support_pairs"] > 0
        assert {"pascal", "coco"} == row["projected"].keys()


def test_cpu_tiny_course_runs_the_chain_and_the_baselines_on_the_same_episodes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "course.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "cpu_tiny_course.py")]
    command += ["--folds", "0", "--shots", "1", "--threads", "1", "--json", str(out)]
    command += ["--out-dir", str(tmp_path / "chain")]
    settings = {
        **TINY_SETTINGS,
        "data.root": str(tmp_path / "data"),
        "train.max_steps": 2,
        "train.val_every": 2,
        "train.val_episodes": 8,
        "train.selection_split": "novel-val",
        "train.base_learner_steps": 2,
        "eval.episodes": 10,
        "eval.seeds": 2,
    }
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    env = {"OMP_NUM_THREADS": "1", "CI": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| fold | shots | prior | prototype |" in result.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert (row["fold"], row["shots"]) == (0, 1)
    assert set(row["baselines"]) == {"prior", "prototype"}
    assert len(row["baselines"]["prior"]["values"]) == len(row["final_miou"]["values"]) == 2
    assert row["base_train_seconds"] > 0 and row["meta_train_seconds"] > 0


def test_training_speed_benchmark_times_both_stages(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "training_speed.py"), "--steps", "3"]
    command += ["--base-steps", "2", "--workers", "0", "--json", str(out)]
    for key, value in {**TINY_SETTINGS, "data.root": str(tmp_path / "data")}.items():
        command += ["--set", f"{key}={value}"]
    env = {"OMP_NUM_THREADS": "1", "CI": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| amp | compile | workers | stage 1 s/step |" in result.stdout
    record = json.loads(out.read_text())
    assert render_training_speed(record) in result.stdout
    assert (record["base_steps"], record["steps"]) == (2, 3)
    row = record["rows"][0]
    assert row["base_seconds_per_step"] > 0 and row["meta_seconds_per_step"] > 0
    assert row["meta_peak_memory_mb"] > 0 and row["compile"] is False
    assert row["meta_loss_first_window"] > 0 and row["meta_loss_last_window"] > 0
    assert row["projected_course_minutes"] > 0  # cpu-tiny sets its stages in steps


def test_benchmark_cli_quick_subset_writes_json_with_machine_facts(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "hdmnet_core", "benchmark", "--quick"]
    command += ["--only", "model_size", "data_loading", "--out", str(tmp_path)]
    env = {"OMP_NUM_THREADS": "1", "CI": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "| model_size | ok |" in result.stdout and "| data_loading | ok |" in result.stdout
    for name in ("model_size", "data_loading"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["benchmark"] == name
        machine = record["machine"]
        assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["cpu"]
        assert machine["torch"] and machine["date"] and len(machine["load_average"]) == 3
        assert machine["cpu_instructions"]["capability"] in {
            "DEFAULT",
            "VSX",
            "Z VECTOR",
            "NO AVX",
            "AVX2",
            "AVX512",
            "SVE256",
        }
    rows = json.loads((tmp_path / "model_size.json").read_text())["rows"]
    assert [r["num_stages"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        assert row["latency"]["cpu_fp32"]["median_ms"] > 0
        assert row["flops"]["96"]["matching"] > 0  # the ModuleList's children are counted
    metas = [r["params"]["meta"] for r in rows]
    assert metas == sorted(metas) and rows[2]["params"]["meta"] == 3_309_634


def test_benchmark_cli_refuses_an_unavailable_device_and_unknown_names(tmp_path: Path) -> None:
    import torch

    base = [sys.executable, "-m", "hdmnet_core", "benchmark", "--out", str(tmp_path)]
    unknown = subprocess.run(
        [*base, "--only", "no_such_benchmark"], capture_output=True, text=True, cwd=ROOT
    )
    assert unknown.returncode == 2
    assert "unknown benchmark 'no_such_benchmark'" in unknown.stderr
    if not torch.cuda.is_available():
        cuda = subprocess.run(
            [*base, "--device", "cuda", "--quick"], capture_output=True, text=True, cwd=ROOT
        )
        assert cuda.returncode == 2
        assert "no CUDA device" in cuda.stderr and "Traceback" not in cuda.stderr
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
